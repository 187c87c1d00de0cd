"""Fine-tuning of backbone + linear head with BCE on the labeled pool, and its evaluation
(Moellenbrok & Demir, IGARSS 2023, section 2.2).

Defaults are the paper's: SGD lr 0.025, batch 10, 100 epochs, lr x0.1 after epoch 80, random
horizontal flip and rotation by multiples of 90 degrees (alft's own: SGD momentum 0.9, which the
paper does not give, and the BatchNorm statistics re-estimated on the labeled set after
training, :func:`recalibrate_batchnorm`; see the deviations in docs/RESULTS.md).
``freeze_backbone`` trains only the head on features computed once (a fast mode for CPU users).
Checkpoints every N epochs make ``--resume`` continue exactly.

A round's labeled set is small (the paper's 40..220 images are 8..43 MB at 256 px), so its
images and targets stay on the device for the whole round (up to ``RESIDENT_BYTES``; larger
sets stream from the cache), and the loss is summed on the device and read once per epoch:
the loop never waits for the device between steps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from alft_cli import faults
from alft_cli.augment import finetune_augment
from alft_cli.checkpoints import (
    generator_state,
    load_safe,
    restore_generator,
    rng_state,
    save_atomic,
    set_rng_state,
)
from alft_cli.config import FinetuneConfig
from alft_cli.data import CachedImages, epoch_order, even_chunks, iterate_chunks
from alft_cli.embed import infer
from alft_cli.errors import CheckpointError
from alft_cli.metrics import multilabel_metrics
from alft_cli.models import Classifier
from alft_cli.progress import reporter
from alft_cli.project import FINETUNE_CHECKPOINT
from alft_cli.training import (
    GracefulStop,
    autocast,
    model_to_device_layout,
    to_device_layout,
)

MODEL_FILE = "model.pt"
# Labeled sets up to this size (uint8 images) are held on the device for the whole round.
RESIDENT_BYTES = 2 * 2**30
# Images per forward pass when the BatchNorm statistics are re-estimated after training:
# batch statistics of a few hundred images are close to the labeled set's own.
PRECISE_BN_BATCH = 128


@dataclass
class FinetuneOutcome:
    """What a fine-tuning run produced."""

    model: Classifier | None
    epochs_done: int
    final_loss: float
    seconds: float
    interrupted: bool
    resumed_from: int | None


def build_classifier(backbone: str, classes: list[str], in_channels: int, mean: list[float],
                     std: list[float]) -> Classifier:
    return Classifier(backbone, len(classes), in_channels=in_channels, mean=mean, std=std)


def train(model: Classifier, cache: CachedImages, ids: np.ndarray, y: np.ndarray,
          cfg: FinetuneConfig, work_dir: Path, device: torch.device) -> FinetuneOutcome:
    """Train ``model`` in place on (ids, y); checkpoint to ``work_dir``."""
    if cfg.freeze_backbone:
        return _train_head_only(model, cache, ids, y, cfg, device)
    rep = reporter()
    torch.manual_seed(cfg.seed)
    model.to(device)
    model_to_device_layout(model, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = _scheduler(optimizer, cfg)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    ids = np.asarray(ids, dtype=np.int64)
    targets = torch.from_numpy(y.astype(np.float32)).to(device)
    resident = None
    if len(ids) * int(np.prod(cache.array.shape[1:])) <= RESIDENT_BYTES:
        resident = torch.from_numpy(cache.read(ids)).to(device)
    position = {int(s): i for i, s in enumerate(ids)}
    loss_fn = nn.BCEWithLogitsLoss()
    ckpt_path = work_dir / FINETUNE_CHECKPOINT
    start_epoch, resumed_from = 0, None
    if cfg.resume and ckpt_path.exists():
        state = load_safe(ckpt_path, "fine-tuning checkpoint")
        if state.get("kind") != "alft-finetune" or state.get("n_labels") != len(ids):
            raise CheckpointError(f"{ckpt_path} belongs to another run (different labels); "
                                  "start over with --restart")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = resumed_from = int(state["epoch"])
        restore_generator(generator, state["generator"], [cfg.seed, start_epoch],
                          f"--resume of {ckpt_path}")
        set_rng_state(state["rng"])
        rep.info(f"resuming fine-tuning at epoch {start_epoch + 1}")

    def save(epoch: int) -> None:
        save_atomic({"kind": "alft-finetune", "format": 1, "epoch": epoch, "n_labels": len(ids),
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "generator": generator_state(generator),
                     "rng": rng_state()}, ckpt_path)

    model.train()
    started = time.perf_counter()
    interrupted, loss_value, epoch = False, float("nan"), start_epoch
    with GracefulStop("epoch") as stopper, rep.task("fine-tuning", total=cfg.epochs) as task:
        task.update(completed=start_epoch)
        for epoch in range(start_epoch, cfg.epochs):
            order = epoch_order(ids, cfg.seed, epoch)
            # Rows of this epoch's batches in (images, targets): one copy to the device.
            rows = _rows(order, position, device)
            total, count = torch.zeros((), device=device), 0
            for rows_b, images in _batches(cache, order, rows, resident, cfg.batch_size,
                                           device):
                x = to_device_layout(finetune_augment(images.float(), generator), device)
                with autocast(device):
                    logits = model(x)
                loss = loss_fn(logits.float(), targets[rows_b])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(rows_b)
                count += len(rows_b)
            scheduler.step()
            loss_value = float(total) / max(count, 1)  # the one read per epoch
            task.advance(1, loss=loss_value)
            if stopper.should_stop(device):
                interrupted = True
                epoch += 1
                break
            if cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0 \
                    and epoch + 1 < cfg.epochs:
                save(epoch + 1)
                faults.point("finetune:checkpointed")
        else:
            epoch = cfg.epochs
    if interrupted:
        save(epoch)
        rep.warn(f"stopped after epoch {epoch}; checkpoint saved - continue with --resume")
    elif cfg.precise_bn:
        recalibrate_batchnorm(model, cache, ids, position, resident, device)
    return FinetuneOutcome(model, epoch, loss_value, time.perf_counter() - started,
                           interrupted, resumed_from)


def recalibrate_batchnorm(model: Classifier, cache: CachedImages, ids: np.ndarray,
                          position: dict[int, int], resident: torch.Tensor | None,
                          device: torch.device) -> None:
    """Re-estimate every BatchNorm layer's running statistics on the labeled images with the
    trained weights ("precise BN", Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

    During training the running averages trail the weights: after a few dozen steps at the
    momentum some backbones use (0.01 in torchvision's MobileNetV3) they still hold much of
    the pretraining's statistics, so the model evaluated and queried differs from the one
    trained, and by how much depends on the shuffle (issue 18: the same random labels
    trained with another seed moved test micro F1 by up to 30 points at 60 labels; see
    docs/RESULTS.md, "Fifteen seeds at 15 epochs, and what the scatter is made of"). One
    forward pass over the labeled set, unaugmented as at inference, in batches of
    :data:`PRECISE_BN_BATCH`, replaces them by the equal-weight average over those batches.
    """
    order = np.sort(np.asarray(ids, dtype=np.int64))
    rows = _rows(order, position, device)
    batches = (to_device_layout(images.float(), device) for _, images in
               _batches(cache, order, rows, resident, PRECISE_BN_BATCH, device))
    with torch.no_grad(), autocast(device):
        update_bn(batches, model)


def _rows(order: np.ndarray, position: dict[int, int], device: torch.device) -> torch.Tensor:
    """Rows of ``order``'s images in the round's (images, targets), on the device."""
    return torch.from_numpy(np.array([position[int(s)] for s in order])).to(device)


def _batches(cache: CachedImages, order: np.ndarray, rows: torch.Tensor,
             resident: torch.Tensor | None, batch_size: int, device: torch.device
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows of the batch, its uint8 images on the device)`` for one epoch in ``order``:
    indexed on the device from the resident labeled set, else streamed from the cache."""
    chunks = even_chunks(order, batch_size)
    bounds = np.cumsum([0] + [len(c) for c in chunks])
    if resident is not None:
        for start, stop in zip(bounds[:-1], bounds[1:]):
            rows_b = rows[int(start):int(stop)]
            yield rows_b, resident[rows_b]
        return
    for (_, images), start, stop in zip(iterate_chunks(cache, chunks, device), bounds[:-1],
                                        bounds[1:]):
        yield rows[int(start):int(stop)], images


def _scheduler(optimizer: torch.optim.Optimizer, cfg: FinetuneConfig
               ) -> torch.optim.lr_scheduler.LRScheduler:
    milestones = [cfg.lr_step] if 0 < cfg.lr_step < cfg.epochs else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def _train_head_only(model: Classifier, cache: CachedImages, ids: np.ndarray, y: np.ndarray,
                     cfg: FinetuneConfig, device: torch.device) -> FinetuneOutcome:
    """Train the linear head on frozen features (computed once, no augmentation)."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model.to(device)
    h, _ = infer(model, cache, ids, device, cfg.eval_batch_size, probabilities=False,
                 description="features for the head")
    feats = torch.from_numpy(h).to(device)
    targets = torch.from_numpy(y.astype(np.float32)).to(device)
    head = model.head
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = _scheduler(optimizer, cfg)
    loss_fn = nn.BCEWithLogitsLoss()
    loss_value = float("nan")
    with reporter().task("fine-tuning head", total=cfg.epochs) as task:
        for epoch in range(cfg.epochs):
            order = torch.from_numpy(np.argsort(epoch_order(np.arange(len(ids)), cfg.seed,
                                                            epoch)))
            order = order.to(device)
            total = torch.zeros((), device=device)
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start:start + cfg.batch_size]
                loss = loss_fn(head(feats[batch]), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(batch)
            scheduler.step()
            loss_value = float(total) / max(len(order), 1)
            task.advance(1, loss=loss_value)
    return FinetuneOutcome(model, cfg.epochs, loss_value, time.perf_counter() - started,
                           False, None)


def evaluate(model: Classifier, cache: CachedImages, sets: dict[str, tuple[np.ndarray,
             np.ndarray]], classes: list[str], device: torch.device, batch_size: int = 64,
             thresholds: np.ndarray | float = 0.5) -> dict[str, Any]:
    """Metrics per split (micro/macro F1, per-class P/R/F1, mAP) at the given thresholds."""
    results: dict[str, Any] = {}
    for split, (ids, y) in sets.items():
        if len(ids) == 0:
            continue
        p = predict(model, cache, ids, device, batch_size, f"evaluating on {split}")
        if p is None:  # non-main DDP rank
            continue
        results[split] = multilabel_metrics(y, p, classes, threshold=thresholds)
    return results


def predict(model: Classifier, cache: CachedImages, ids: np.ndarray, device: torch.device,
            batch_size: int = 64, description: str = "predicting") -> np.ndarray | None:
    """Sigmoid probabilities (N, C) of ``ids``: the evaluation pass (also the stop set's).

    None on a non-main DDP rank.
    """
    _, p = infer(model, cache, ids, device, batch_size, features=False,
                 description=description)
    return p


def save_model(model: Classifier, path: Path, meta: dict[str, Any]) -> None:
    """Write the classifier file a round keeps (weights-only loadable)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_atomic({"kind": "alft-classifier", "format": 1, "config": model.config,
                 "state_dict": state, **meta}, path)


def load_round_model(root: Path, model_file: str, round_: int, fix: str
                     ) -> tuple[Classifier, dict[str, Any]]:
    """:func:`load_model` of a round's recorded model; a deleted file is an error that names
    the fix (``fix``: what to run instead, which depends on the command)."""
    path = Path(model_file) if Path(model_file).is_absolute() else Path(root) / model_file
    if not path.is_file():
        raise CheckpointError(f"round {round_}'s model {model_file} is missing (deleted or "
                              f"moved); {fix}")
    return load_model(path)


def load_model(path: Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a classifier saved by :func:`save_model`; returns (model, its metadata)."""
    state = load_safe(path, "model")
    if not isinstance(state, dict) or state.get("kind") != "alft-classifier":
        raise CheckpointError(f"{path} is not an alft classifier file")
    model = Classifier.from_config(state["config"])
    from alft_cli.models import load_state_dict_checked

    load_state_dict_checked(model, state["state_dict"], str(path))
    meta = {k: v for k, v in state.items() if k not in ("state_dict",)}
    return model, meta
