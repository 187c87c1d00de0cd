"""One inference pass over images: penultimate features h and sigmoid probabilities p.

Query strategies, evaluation and frozen-backbone training all read these. Under torchrun each
rank scores a strided shard of the ids and rank 0 gathers them, in the input order.
"""

from __future__ import annotations

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
