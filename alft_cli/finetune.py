"""Fine-tuning of backbone + linear head with BCE on the labeled pool, and its evaluation
(Moellenbrok & Demir, IGARSS 2023, section 2.2).

Defaults are the paper's: SGD lr 0.025, batch 10, 100 epochs, lr x0.1 after epoch 80, random
horizontal flip and rotation by multiples of 90 degrees. ``freeze_backbone`` trains only the
head on features computed once (a fast mode for CPU users). Checkpoints every N epochs make
``--resume`` continue exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alft_cli import faults
from alft_cli.augment import finetune_augment
from alft_cli.checkpoints import load_safe, rng_state, save_atomic, set_rng_state
from alft_cli.config import FinetuneConfig
from alft_cli.data import CachedImages, epoch_order, even_chunks, iterate_chunks
from alft_cli.embed import infer
from alft_cli.errors import CheckpointError
from alft_cli.metrics import multilabel_metrics
from alft_cli.models import Classifier
from alft_cli.progress import reporter
from alft_cli.training import GracefulStop, autocast, to_device_layout

FINETUNE_CHECKPOINT = "finetune_checkpoint.pt"
MODEL_FILE = "model.pt"


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
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = _scheduler(optimizer, cfg)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    targets = torch.from_numpy(y.astype(np.float32))
    position = {int(s): i for i, s in enumerate(ids)}
    loss_fn = nn.BCEWithLogitsLoss()
    ckpt_path = work_dir / FINETUNE_CHECKPOINT
    start_epoch, resumed_from = 0, None
    if cfg.resume and ckpt_path.exists():
        state = load_safe(ckpt_path, "fine-tuning checkpoint")
        if state.get("kind") != "alft-finetune" or state.get("n_labels") != len(ids):
            raise CheckpointError(f"{ckpt_path} belongs to another run (different labels); "
                                  "run without --resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        start_epoch = resumed_from = int(state["epoch"])
        rep.info(f"resuming fine-tuning at epoch {start_epoch + 1}")

    def save(epoch: int) -> None:
        save_atomic({"kind": "alft-finetune", "format": 1, "epoch": epoch, "n_labels": len(ids),
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                     "rng": rng_state()}, ckpt_path)

    model.train()
    started = time.perf_counter()
    interrupted, loss_value, epoch = False, float("nan"), start_epoch
    with GracefulStop() as stopper, rep.task("fine-tuning", total=cfg.epochs) as task:
        task.update(completed=start_epoch)
        for epoch in range(start_epoch, cfg.epochs):
            order = epoch_order(ids, cfg.seed, epoch)
            total, count = 0.0, 0
            for chunk, images in iterate_chunks(cache, even_chunks(order, cfg.batch_size),
                                                device):
                x = to_device_layout(finetune_augment(images.float(), generator), device)
                t = targets[[position[int(s)] for s in chunk]].to(device)
                with autocast(device):
                    logits = model(x)
                loss = loss_fn(logits.float(), t)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(chunk)
                count += len(chunk)
            scheduler.step()
            loss_value = total / max(count, 1)
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
    return FinetuneOutcome(model, epoch, loss_value, time.perf_counter() - started,
                           interrupted, resumed_from)


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
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start:start + cfg.batch_size].to(device)
                loss = loss_fn(head(feats[batch]), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            scheduler.step()
            loss_value = total / max(len(order), 1)
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
        _, p = infer(model, cache, ids, device, batch_size, features=False,
                     description=f"evaluating on {split}")
        if p is None:  # non-main DDP rank
            continue
        results[split] = multilabel_metrics(y, p, classes, threshold=thresholds)
    return results


def save_model(model: Classifier, path: Path, meta: dict[str, Any]) -> None:
    """Write the classifier file a round keeps (weights-only loadable)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_atomic({"kind": "alft-classifier", "format": 1, "config": model.config,
                 "state_dict": state, **meta}, path)


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
