"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# UC Merced: $ALFT_UCM, else ../shared/data/ucmerced-ml, else the copy a GPU lease carries.
_SHARED_UCM = REPO.parent / "shared" / "data" / "ucmerced-ml"
UCM = Path(os.environ.get("ALFT_UCM") or (
    _SHARED_UCM if _SHARED_UCM.is_dir() else REPO / ".gpu-carry" / "ucmerced-ml"))
sys.path.insert(0, str(REPO))


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), load average {load:.1f} at start")


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
