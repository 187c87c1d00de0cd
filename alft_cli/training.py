"""Pieces shared by the training loops: precision, graceful stop, step timing."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

import torch


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device_layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """channels_last on CUDA (faster convolutions with tensor cores); unchanged on CPU."""
    if device.type == "cuda" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def model_to_device_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model's weights in channels_last on CUDA, to match :func:`to_device_layout`'s
    inputs (cuDNN picks its NHWC tensor-core kernels only when both are); unchanged on CPU."""
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


_deadline: float | None = None


def set_deadline(monotonic_time: float | None) -> None:
    """Ask every training loop to checkpoint and stop once ``time.monotonic()`` passes this
    (time-boxed sessions, e.g. ``simulate --max-minutes``); ``None`` clears it."""
    global _deadline
    _deadline = monotonic_time


def deadline_passed() -> bool:
    import time

    return _deadline is not None and time.monotonic() >= _deadline


class GracefulStop:
    """Turn the first Ctrl-C / SIGTERM into a request to stop after the current step.

    The loop checks :attr:`requested` between steps, so a checkpoint is always taken at a
    step boundary (optimizer, EMA target and RNG consistent). A second Ctrl-C interrupts at
    once. Under DDP every rank must stop at the same step, so :meth:`should_stop` agrees
    across ranks.
    """

    def __init__(self, unit: str = "step") -> None:
        """``unit``: what the loop finishes before it stops (for the acknowledgement)."""
        self.requested = False
        self.unit = unit
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            # Said at once: a step (an epoch of fine-tuning) can take minutes, and a user who
            # sees nothing presses Ctrl-C again and loses the checkpoint.
            from alft_cli.progress import reporter

            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            again = (" (Ctrl-C again stops at once, without a checkpoint)"
                     if signum == signal.SIGINT else "")
            reporter().warn(f"{name}: stopping after this {self.unit}, then saving a "
                            f"checkpoint{again}")
        self.requested = True

    def __enter__(self) -> GracefulStop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def should_stop(self, device: torch.device) -> bool:
        requested = self.requested or deadline_passed()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if requested else 0.0], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item())
        return requested
