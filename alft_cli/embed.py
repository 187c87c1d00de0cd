"""One inference pass over images: penultimate features h and sigmoid probabilities p.

Query strategies, evaluation and frozen-backbone training all read these. Under torchrun each
rank scores a strided shard of the ids and rank 0 gathers them, in the input order.

On a GPU the pass never waits for the device batch by batch: results stay on the device and
come back to the host in blocks of about ``FLUSH_BYTES`` (one wait per block), and the model
runs in channels_last like the training loops. The head gives float32 logits even under bf16
autocast (:meth:`alft_cli.models.Classifier.logits`), so probabilities agree with a CPU run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from alft_cli import distributed
from alft_cli.data import CachedImages, iterate_batches
from alft_cli.models import Classifier
from alft_cli.progress import reporter
from alft_cli.training import autocast, model_to_device_layout, to_device_layout

# Results are copied to the host in blocks of about this many bytes.
FLUSH_BYTES = 64 * 2**20


class _DeviceBlocks:
    """Per-batch result tensors kept on the device until about ``FLUSH_BYTES`` of them."""

    def __init__(self) -> None:
        self.parts: list[list[torch.Tensor]] = []
        self.nbytes = 0

    def add(self, *tensors: torch.Tensor) -> bool:
        """Keep one batch's tensors; True when it is time to :meth:`take` them."""
        self.parts.append(list(tensors))
        self.nbytes += sum(t.numel() * t.element_size() for t in tensors)
        return self.nbytes >= FLUSH_BYTES

    def take(self) -> list[np.ndarray]:
        """Everything kept so far, concatenated per position, as host arrays (one wait)."""
        if not self.parts:
            return []
        out = [torch.cat(column).cpu().numpy() for column in zip(*self.parts)]
        self.parts, self.nbytes = [], 0
        return out


@torch.no_grad()
def infer(model: Classifier, cache: CachedImages, ids: np.ndarray, device: torch.device,
          batch_size: int = 64, features: bool = True, probabilities: bool = True,
          description: str = "scoring") -> tuple[np.ndarray | None, np.ndarray | None]:
    """Return ``(h, p)`` for ``ids`` (rows in the order of ``ids``); either may be skipped.

    Features come back as float32 whatever the compute precision (bf16 on CUDA).
    Under DDP, non-zero ranks return ``(None, None)``.
    """
    ids = np.asarray(ids, dtype=np.int64)
    info = distributed.env_info()
    mine = distributed.shard(len(ids), info) if info.enabled else np.arange(len(ids))
    was_training = model.training
    model.eval()
    model_to_device_layout(model, device)
    h_parts, p_parts = [], []
    blocks = _DeviceBlocks()

    def flush() -> None:
        arrays = blocks.take()
        if arrays:
            if features:
                h_parts.append(arrays.pop(0))
            if probabilities:
                p_parts.append(arrays.pop(0))

    with reporter().task(description, total=len(mine)) as task:
        for _, images in iterate_batches(cache, ids[mine], batch_size, device):
            x = to_device_layout(images.float(), device)
            with autocast(device):
                if probabilities:
                    logits, h = model.forward_with_features(x)
                else:
                    h = model.features(x)
            kept = ([h.float()] if features else []) + (
                [torch.sigmoid(logits)] if probabilities else [])
            if kept and blocks.add(*kept):
                flush()
            task.advance(len(images))
        flush()
    model.train(was_training)
    dim = model.feature_dim
    h = np.concatenate(h_parts) if h_parts else np.zeros((0, dim), np.float32)
    p = (np.concatenate(p_parts) if p_parts
         else np.zeros((0, model.head.out_features), np.float32))
    if info.enabled:
        h = distributed.gather_rows(h, mine) if features else None
        p = distributed.gather_rows(p, mine) if probabilities else None
    return (h if features else None), (p if probabilities else None)


@torch.no_grad()
def infer_top(model: Classifier, cache: CachedImages, ids: np.ndarray, device: torch.device,
              score: Callable[[np.ndarray, np.ndarray], np.ndarray], keep: int,
              batch_size: int = 64, description: str = "scoring"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One pass that keeps features only for the ``keep`` highest-scoring rows.

    For strategies whose choice depends on the top-m by a per-sample score (mge-clustering,
    mge, entropy), the features of the rest are never needed: memory is O(keep x D + N x C)
    instead of O(N x D), which matters at millions of images (1M x 1024 float32 = 4 GB).

    Returns ``(rows, h_rows, p, scores)``: row indices (into ``ids``) of the kept samples in
    ascending order, their features, and the probabilities and scores of every row. Under
    DDP, non-zero ranks get empty arrays.
    """
    ids = np.asarray(ids, dtype=np.int64)
    info = distributed.env_info()
    mine = distributed.shard(len(ids), info) if info.enabled else np.arange(len(ids))
    was_training = model.training
    model.eval()
    model_to_device_layout(model, device)
    top_rows = np.zeros(0, dtype=np.int64)
    top_h = np.zeros((0, model.feature_dim), dtype=np.float32)
    top_s = np.zeros(0)
    all_scores = np.empty(len(mine))
    all_p = np.empty((len(mine), model.head.out_features), dtype=np.float32)
    done = 0
    blocks = _DeviceBlocks()

    def flush() -> None:
        # Scores are per row and ties go to the lower row, so scoring and merging a block of
        # batches at once keeps exactly the rows that batch-by-batch merging would.
        nonlocal done, top_rows, top_h, top_s
        arrays = blocks.take()
        if not arrays:
            return
        h, p = arrays
        s = score(h, p)
        rows = mine[done:done + len(s)]
        all_scores[done:done + len(s)] = s
        all_p[done:done + len(s)] = p
        done += len(s)
        top_rows, top_h, top_s = _merge_top(top_rows, top_h, top_s, rows, h, s, keep)

    with reporter().task(description, total=len(mine)) as task:
        for _, images in iterate_batches(cache, ids[mine], batch_size, device):
            x = to_device_layout(images.float(), device)
            with autocast(device):
                logits, h = model.forward_with_features(x)
            if blocks.add(h.float(), torch.sigmoid(logits)):
                flush()
            task.advance(len(images))
        flush()
    model.train(was_training)
    if info.enabled:
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(
            parts, (mine, all_scores, all_p, top_rows, top_h, top_s))
        if info.rank != 0:
            return (np.zeros(0, np.int64), np.zeros((0, model.feature_dim), np.float32),
                    np.zeros((0, all_p.shape[1]), np.float32), np.zeros(0))
        top_rows, top_h, top_s = parts[0][3], parts[0][4], parts[0][5]
        for _, _, _, rows, h, s in parts[1:]:
            top_rows, top_h, top_s = _merge_top(top_rows, top_h, top_s, rows, h, s, keep)
    else:
        parts = [(mine, all_scores, all_p)]
    scores = np.empty(len(ids))
    p_full = np.empty((len(ids), all_p.shape[1]), dtype=np.float32)
    for rank_rows, rank_scores, rank_p, *_ in parts:
        scores[rank_rows] = rank_scores
        p_full[rank_rows] = rank_p
    order = np.argsort(top_rows)
    return top_rows[order], top_h[order], p_full, scores


def _merge_top(rows_a: np.ndarray, h_a: np.ndarray, s_a: np.ndarray, rows_b: np.ndarray,
               h_b: np.ndarray, s_b: np.ndarray, keep: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.concatenate([rows_a, rows_b])
    h = np.concatenate([h_a, h_b])
    s = np.concatenate([s_a, s_b])
    if len(s) <= keep:
        return rows, h, s
    # Highest scores first; ties by row index, as a stable sort over the full pool would.
    order = np.lexsort((rows, -s))[:keep]
    return rows[order], h[order], s[order]
