"""Multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=K alft pretrain -p DIR`` starts K copies of the command; each
reads its rank from the environment. Rank 0 owns the project (lock, store, checkpoints, output);
the others compute and exchange gradients/results only.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank and world size from torchrun's environment (single process when absent)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
        # A rank that exits with its process group alive can abort in the backend's thread
        # teardown ("terminate called without an active exception", SIGABRT): close it first.
        atexit.register(shutdown)
    return info


def shutdown() -> None:
    """Leave the process group together: a rank that destroyed its group while another still
    used it aborted now and then (gloo, SIGABRT), so every rank first waits for the others
    (bounded, so a rank that died does not hang the rest)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            from datetime import timedelta

            dist.monitored_barrier(timeout=timedelta(seconds=120))
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 - a peer is gone; leaving is all that is left to do
        pass
    dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_rows(array: np.ndarray, order: np.ndarray) -> np.ndarray | None:
    """Collect per-rank result rows on rank 0 and put them back in global ``order``.

    ``order`` holds the global row index of each local row. Returns the full array on rank 0
    and ``None`` elsewhere; identity when single-process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        out = np.empty_like(array)
        out[order] = array
        return out
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (order, array))
    if dist.get_rank() != 0:
        return None
    total = sum(len(o) for o, _ in parts)
    out = np.empty((total,) + array.shape[1:], dtype=array.dtype)
    for o, a in parts:
        out[o] = a
    return out


def shard(n: int, info: DistInfo) -> np.ndarray:
    """Row indices this rank handles: a strided 1/world_size of ``range(n)``."""
    return np.arange(info.rank, n, info.world_size)


def sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm of ``module`` as a SyncBatchNorm, for DDP on GPUs.

    Without it each GPU normalises with the statistics of its own batch/K images; BYOL's setup
    (Grill et al., NeurIPS 2020, appendix) synchronises them over the global batch, which
    matters for BYOL, whose target relies on batch statistics. The state-dict keys stay
    BatchNorm's, so saved backbones load into plain models. SyncBatchNorm runs on CUDA only
    (DDP refuses it for CPU modules), so on the CPU (gloo) ``module`` comes back unchanged.
    """
    if device.type != "cuda":
        return module
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
