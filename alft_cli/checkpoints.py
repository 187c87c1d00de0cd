"""Saving and loading torch files safely.

Every load uses ``torch.load(weights_only=True)``: a checkpoint or weights file from elsewhere
can carry a pickle that runs code, and weights-only unpickling refuses anything but tensors and
plain containers. Every save goes to a temp file that is renamed into place, so a crash never
leaves half a checkpoint.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alft_cli.atomic import current_umask
from alft_cli.errors import CheckpointError
from alft_cli.progress import reporter


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; models are shared by the team that shares the project.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_safe(path: Path, what: str = "checkpoint") -> Any:
    """Load a torch file with weights-only unpickling; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused to load {what}: it holds more than weights "
                              f"({first[:160]})") from exc
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a readable {what} ({str(exc).splitlines()[0][:160]})"
                              ) from exc


def rng_state() -> dict[str, Any]:
    """Global torch RNG states (CPU and, when present, CUDA) for exact resume."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states; CUDA states only for the GPUs present.

    A checkpoint written on a machine with more GPUs than this one holds more CUDA states
    than there are devices (``torch.cuda.set_rng_state_all`` would fail on the first missing
    one); one written without CUDA holds none and leaves the CUDA RNG as seeded.
    """
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda_states_present(state["cuda"],
                                                                torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_state, index)


def cuda_states_present(states: list[torch.Tensor], devices: int) -> list[torch.Tensor]:
    """The saved per-GPU RNG states that have a GPU here: the first ``devices`` of them."""
    return list(states)[:max(devices, 0)]


# Byte size of a generator state by device type: the CPU's Mersenne Twister is 5056 bytes,
# CUDA's Philox (seed + offset) 16. Checkpoints written before the device was saved with the
# state are told apart by it.
_CUDA_STATE_BYTES = 16


def generator_state(generator: torch.Generator) -> dict[str, Any]:
    """A generator's state with the device type it belongs to (see :func:`restore_generator`)."""
    return {"device": generator.device.type, "state": generator.get_state()}


def saved_generator_device(saved: Any) -> str:
    """Device type of a state saved by :func:`generator_state`, or of a bare state tensor."""
    if isinstance(saved, dict):
        return str(saved["device"])
    return "cuda" if saved.numel() == _CUDA_STATE_BYTES else "cpu"


def derived_seed(values: list[int]) -> int:
    """A seed that is a pure function of ``values`` (any ints), for deterministic reseeding."""
    return int(np.random.SeedSequence([abs(int(v)) for v in values]).generate_state(1)[0])


def restore_generator(generator: torch.Generator, saved: Any, reseed: list[int],
                      what: str) -> bool:
    """Put a saved state back into ``generator``; True when the stream continues exactly.

    A CUDA generator's state cannot go into a CPU generator, nor the reverse (resuming on
    another device type, e.g. a run begun on a GPU machine and continued on a laptop). Then
    the generator is reseeded from ``reseed`` (e.g. seed, rank, epoch, batch: the same
    resume always draws the same stream) and a warning says the augmentations differ from
    an uninterrupted run from here on; everything else (weights, optimizer, schedule) still
    resumes exactly.
    """
    device = saved_generator_device(saved)
    state = saved["state"] if isinstance(saved, dict) else saved
    if device == generator.device.type:
        generator.set_state(state)
        return True
    generator.manual_seed(derived_seed(reseed))
    reporter().warn(f"{what}: the checkpoint's augmentation generator was on {device}, this "
                    f"run is on {generator.device.type}; reseeded it deterministically, so "
                    "augmentations from here on differ from an uninterrupted run")
    return False
