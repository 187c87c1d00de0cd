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

import torch

from alft_cli.errors import CheckpointError


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
