"""BYOL pretraining of the backbone on every indexed image (Grill et al., NeurIPS 2020), as
the first stage of Moellenbrok & Demir (IGARSS 2023).

The loop reads uint8 batches from the decode cache, makes BYOL's two views on the device
(:mod:`alft_cli.augment`), and trains online = backbone + projector + predictor against a
momentum target whose tau follows a cosine schedule from 0.996 to 1. On CUDA it runs in bf16
autocast with channels_last tensors, and the loop never waits for the device: the loss is
summed on the device and read every ``LOSS_EVERY`` steps and at the end of an epoch. Under
torchrun on GPUs every BatchNorm becomes a SyncBatchNorm, as in BYOL's own setup (Grill et
al. compute batch statistics over the whole global batch), so K processes train like one
with the global batch. A checkpoint holds everything the schedule depends on (epoch, batch
position, optimizer, EMA target, augmentation generator, RNG), so ``--resume`` continues
exactly where it stopped; Ctrl-C (or SIGTERM from a scheduler) saves one first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alft_cli import distributed, faults
from alft_cli.augment_bands import make_views
from alft_cli.byol import BYOL, cosine_tau
from alft_cli.checkpoints import (
    derived_seed,
    generator_state,
    load_safe,
    restore_generator,
    rng_state,
    save_atomic,
    set_rng_state,
)
from alft_cli.config import PretrainConfig
from alft_cli.data import CachedImages, epoch_order, iterate_batches
from alft_cli.errors import CheckpointError, OptionError
from alft_cli.models import Normalize, build_backbone, load_state_dict_checked
from alft_cli.progress import reporter
from alft_cli.training import (
    GracefulStop,
    autocast,
    model_to_device_layout,
    to_device_layout,
)

CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.pt"
# Steps between reads of the loss (each read waits for the device) and, under torchrun,
# between the ranks' agreement on a stop request (an all_reduce that waits too).
LOSS_EVERY = 20
STOP_CHECK_EVERY = 10


@dataclass
class PretrainOutcome:
    """What a pretrain run produced."""

    backbone_file: Path
    checkpoint_file: Path
    epochs_done: int
    epochs: int
    final_loss: float
    seconds: float
    images_per_second: float
    interrupted: bool
    resumed_from: int | None


def run_pretrain(cache_path: Path, sample_ids: np.ndarray, out_dir: Path, cfg: PretrainConfig,
                 mean: list[float], std: list[float], device: torch.device,
                 init_backbone: dict[str, torch.Tensor] | None = None,
                 views: str = "rgb") -> PretrainOutcome:
    """Train BYOL; write ``out_dir/checkpoint.pt`` (resumable) and ``out_dir/backbone.pt``.

    ``views`` is the view recipe (:func:`alft_cli.augment_bands.make_views`): ``rgb`` (BYOL's) or
    ``bands`` (band-agnostic, for multispectral band sets).
    """
    info = distributed.init(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    rep = reporter()
    torch.manual_seed(cfg.seed)
    cache = CachedImages(cache_path)
    n = len(sample_ids)
    if n < 2:
        raise OptionError(f"BYOL needs at least 2 images; the project has {n}")
    if cfg.batch_size % info.world_size:
        raise OptionError(f"--batch-size {cfg.batch_size} must be divisible by the number of "
                          f"processes ({info.world_size})")
    global_batch = min(cfg.batch_size, n - n % info.world_size)
    batches_per_epoch = max(1, n // global_batch)  # drop_last: BatchNorm needs full batches
    local_batch = global_batch // info.world_size
    total_steps = cfg.epochs * batches_per_epoch

    backbone, feature_dim = build_backbone(cfg.backbone, cache.channels)
    if init_backbone is not None:
        load_state_dict_checked(backbone, init_backbone, "--init-weights")
    model = BYOL(backbone, feature_dim, hidden_dim=cfg.hidden_dim, proj_dim=cfg.proj_dim)
    if info.enabled:
        model = distributed.sync_batchnorm(model, device)
        if info.is_main and device.type == "cuda":
            rep.info(f"BYOL on {info.world_size} GPUs: BatchNorm statistics synchronised over "
                     f"the global batch of {global_batch} (SyncBatchNorm, as in BYOL)")
    normalize = Normalize(mean, std).to(device)
    model.to(device)
    model_to_device_layout(model, device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed + 1000 * info.rank)

    ckpt_path = out_dir / CHECKPOINT
    start_epoch, start_batch, losses = 0, 0, []
    resumed_from = None
    if cfg.resume:
        state = _load_checkpoint(ckpt_path, cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_batch = int(state["epoch"]), int(state["batch"])
        losses = list(state["losses"])
        gens = state["generators"]
        reseed = [cfg.seed, info.rank, start_epoch, start_batch]
        if info.rank < len(gens):
            restore_generator(generator, gens[info.rank], reseed, f"--resume of {ckpt_path}")
        else:  # more processes than when the checkpoint was written: a stream of its own
            generator.manual_seed(derived_seed(reseed))
        set_rng_state(state["rng"])
        resumed_from = start_epoch
        rep.info(f"resuming BYOL at epoch {start_epoch + 1}, batch {start_batch + 1}")

    net: torch.nn.Module = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(epoch: int, batch: int) -> None:
        states = _gather_generators(generator)
        if info.is_main:
            save_atomic({
                "kind": "alft-byol", "format": 1, "config": cfg.model_dump(),
                "epoch": epoch, "batch": batch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "generators": states,
                "rng": rng_state(), "losses": losses, "feature_dim": feature_dim,
            }, ckpt_path)

    model.train()
    seen = 0
    started = time.perf_counter()
    interrupted = False
    epoch = start_epoch
    batch_index = start_batch
    with GracefulStop() as stopper, rep.task("BYOL pretraining", total=total_steps) as task:
        task.update(completed=start_epoch * batches_per_epoch + start_batch)
        for epoch in range(start_epoch, cfg.epochs):
            order = epoch_order(sample_ids, cfg.seed, epoch)
            first = start_batch if epoch == start_epoch else 0
            per_rank = order[:batches_per_epoch * global_batch].reshape(
                batches_per_epoch, info.world_size, local_batch)[:, info.rank]
            epoch_loss = torch.zeros((), device=device)  # summed on the device: no sync
            shown_loss = losses[-1] if losses else float("nan")  # until this epoch's read
            batch_index = first
            for _, images in iterate_batches(cache, per_rank[first:].reshape(-1), local_batch,
                                             device):
                step = epoch * batches_per_epoch + batch_index
                if step == 1:
                    faults.point("pretrain:step")
                loss = _step(net, model, normalize, images, generator, optimizer, device,
                             cache.image_size, cosine_tau(step, total_steps, cfg.tau_base),
                             views)
                epoch_loss += loss
                seen += len(images) * info.world_size
                batch_index += 1
                if (batch_index - first) % LOSS_EVERY == 0:
                    shown_loss = float(epoch_loss) / (batch_index - first)
                rate = seen / max(time.perf_counter() - started, 1e-9)
                task.advance(1, epoch=f"{epoch + 1}/{cfg.epochs}", loss=shown_loss,
                             img_s=round(rate, 1))
                # Single process: a flag read, every step. Under torchrun the ranks must
                # agree (an all_reduce the host waits for): every few steps and at an
                # epoch's end, at the same steps on every rank.
                if (not info.enabled or batch_index % STOP_CHECK_EVERY == 0
                        or batch_index == batches_per_epoch) and stopper.should_stop(device):
                    interrupted = True
                    break
            if interrupted:
                if batch_index == batches_per_epoch:  # stopped on an epoch's last batch
                    losses.append(float(epoch_loss) / max(batch_index - first, 1))
                    epoch, batch_index = epoch + 1, 0
                break
            losses.append(float(epoch_loss) / max(batch_index - first, 1))
            task.update(loss=losses[-1])
            batch_index = 0
            if cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0 \
                    and epoch + 1 < cfg.epochs:
                save(epoch + 1, 0)
                faults.point("pretrain:checkpointed")
    seconds = time.perf_counter() - started
    if interrupted:
        save(epoch, batch_index)
        rep.warn(f"stopped at epoch {epoch + 1}, batch {batch_index + 1}; checkpoint saved - "
                 "continue with --resume")
    else:
        save(cfg.epochs, 0)
    backbone_file = out_dir / BACKBONE
    if info.is_main and not interrupted:
        save_atomic({"kind": "alft-backbone", "format": 1, "backbone": cfg.backbone,
                     "in_channels": cache.channels, "feature_dim": feature_dim,
                     "method": "byol", "epochs": cfg.epochs,
                     "state_dict": model.backbone.state_dict()}, backbone_file)
    distributed.barrier()
    return PretrainOutcome(backbone_file, ckpt_path, epoch if interrupted else cfg.epochs,
                           cfg.epochs, losses[-1] if losses else math.nan, seconds,
                           seen / max(seconds, 1e-9), interrupted, resumed_from)


def _step(net: torch.nn.Module, model: BYOL, normalize: Normalize, images: torch.Tensor,
          generator: torch.Generator, optimizer: torch.optim.Optimizer, device: torch.device,
          size: int, tau: float, views: str = "rgb") -> torch.Tensor:
    view1, view2 = make_views(images.float(), generator, size, views)
    view1 = to_device_layout(normalize(view1), device)
    view2 = to_device_layout(normalize(view2), device)
    with autocast(device):
        loss = net(view1, view2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.update_target(tau)
    return loss.detach()


def _gather_generators(generator: torch.Generator) -> list[dict[str, Any]]:
    state = generator_state(generator)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [state]
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, state)
    return parts


def _load_checkpoint(path: Path, cfg: PretrainConfig) -> dict[str, Any]:
    state = load_safe(path, "BYOL checkpoint")
    if not isinstance(state, dict) or state.get("kind") != "alft-byol":
        raise CheckpointError(f"{path} is not an alft BYOL checkpoint")
    saved = state["config"]
    for key in ("backbone", "batch_size", "hidden_dim", "proj_dim", "seed"):
        if saved.get(key) != getattr(cfg, key):
            raise CheckpointError(f"--resume: {key} was {saved.get(key)!r} in {path}, now "
                                  f"{getattr(cfg, key)!r}; resume with the same settings")
    if int(state["epoch"]) >= cfg.epochs and int(state["batch"]) == 0:
        raise CheckpointError(f"{path} already completed {state['epoch']} epochs; give a "
                              "larger --epochs to train longer")
    return state
