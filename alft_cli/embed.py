"""One inference pass over images: penultimate features h and sigmoid probabilities p.

Query strategies, evaluation and frozen-backbone training all read these. Under torchrun each
rank scores a strided shard of the ids and rank 0 gathers them, in the input order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from alft_cli import distributed
from alft_cli.data import CachedImages, iterate_batches
from alft_cli.models import Classifier
from alft_cli.progress import reporter
from alft_cli.training import autocast, to_device_layout


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
    h_parts, p_parts = [], []
    with reporter().task(description, total=len(mine)) as task:
        for _, images in iterate_batches(cache, ids[mine], batch_size, device):
            x = to_device_layout(images.float(), device)
            with autocast(device):
                if probabilities:
                    logits, h = model.forward_with_features(x)
                    p_parts.append(torch.sigmoid(logits.float()).cpu().numpy())
                else:
                    h = model.features(x)
            if features:
                h_parts.append(h.float().cpu().numpy())
            task.advance(len(images))
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
    top_rows = np.zeros(0, dtype=np.int64)
    top_h = np.zeros((0, model.feature_dim), dtype=np.float32)
    top_s = np.zeros(0)
    all_scores = np.empty(len(mine))
    all_p = np.empty((len(mine), model.head.out_features), dtype=np.float32)
    done = 0
    with reporter().task(description, total=len(mine)) as task:
        for _, images in iterate_batches(cache, ids[mine], batch_size, device):
            x = to_device_layout(images.float(), device)
            with autocast(device):
                logits, h = model.forward_with_features(x)
            p = torch.sigmoid(logits.float()).cpu().numpy()
            h = h.float().cpu().numpy()
            s = score(h, p)
            rows = mine[done:done + len(s)]
            all_scores[done:done + len(s)] = s
            all_p[done:done + len(s)] = p
            done += len(s)
            top_rows, top_h, top_s = _merge_top(top_rows, top_h, top_s, rows, h, s, keep)
            task.advance(len(images))
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
