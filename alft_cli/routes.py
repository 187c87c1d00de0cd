"""Where a model's weights come from: the pretraining routes and a round's starting point.

Pretraining routes (:func:`pretrain_project`): BYOL on the whole archive (the paper,
:mod:`alft_cli.pretrain`), optionally started from supplied weights (``--init-weights``), or
supervised BCE on noisy labels (:mod:`alft_cli.noisy`), optionally followed by BYOL. The
result is recorded in the store's ``pretrained`` meta.

A round's classifier (:func:`initial_classifier`) warm-starts from the previous round's model
(the paper's protocol), else from the pretrained backbone, else from random weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alft_cli.errors import OptionError
from alft_cli.progress import reporter
from alft_cli.project import Project

SUPERVISED_BACKBONE = "backbone_supervised.pt"


@dataclass
class PretrainResult:
    """What pretrain did."""

    backbone: str
    backbone_file: Path
    epochs_done: int
    epochs: int
    final_loss: float
    seconds: float
    images_per_second: float
    interrupted: bool
    device: str


def pretrain_project(project: Project, cfg: Any, device: Any, *, restart: bool,
                     init_weights: Path | str | None, noisy_labels: Path | str | None,
                     then: str | None, then_epochs: int, is_main: bool) -> PretrainResult:
    """Run the chosen route on ``project`` (see the module docstring); ``is_main`` is False
    on torchrun ranks other than 0, which train but do not record."""
    from alft_cli.pretrain import BACKBONE, CHECKPOINT, run_pretrain

    out_dir = project.pretrain_dir
    ckpt = out_dir / CHECKPOINT
    supervised_file = out_dir / SUPERVISED_BACKBONE
    started_before = ckpt.exists() or supervised_file.exists()
    if started_before and not cfg.resume and not restart:
        raise OptionError(f"{out_dir} holds an earlier run: --resume continues it, "
                          "--restart starts over (and replaces it)")
    if cfg.resume and not started_before:
        raise OptionError(f"--resume: no checkpoint in {out_dir}")
    if restart and not cfg.resume:
        for stale in (ckpt, supervised_file, out_dir / "finetune_checkpoint.pt"):
            stale.unlink(missing_ok=True)
    init_state = (_load_init_weights(Path(init_weights), cfg.backbone,
                                     project.config.in_channels) if init_weights else None)
    out_dir.mkdir(exist_ok=True)
    method, epochs, notes = cfg.method, cfg.epochs, []
    if cfg.method == "supervised-noisy":
        stage = _supervised_stage(project, cfg, Path(noisy_labels), init_state, device)
        if stage is None:  # interrupted
            return PretrainResult(cfg.backbone, supervised_file, 0, cfg.epochs,
                                  float("nan"), 0.0, 0.0, True, str(device))
        init_state, notes, final_loss, seconds = stage
        if then is None:
            _record_pretrained(project, cfg, "supervised-noisy", cfg.epochs,
                               supervised_file, final_loss, seconds, device, init_weights,
                               noisy_labels, notes)
            return PretrainResult(cfg.backbone, supervised_file, cfg.epochs, cfg.epochs,
                                  final_loss, seconds, 0.0, False, str(device))
        method, epochs = "supervised-noisy+byol", then_epochs
        cfg = cfg.model_copy(update={"epochs": then_epochs,
                                     "resume": cfg.resume and ckpt.exists()})
    ids = np.concatenate([project.store.sample_ids(s) for s in ("pool", "val", "test")])
    ids.sort()
    from alft_cli.augment_bands import view_recipe

    raster = project.config.raster
    views = view_recipe(project.config.in_channels, raster.bands if raster else None)
    outcome = run_pretrain(project.cache_path, ids, out_dir, cfg, project.config.mean,
                           project.config.std, device, init_backbone=init_state, views=views)
    if is_main and not outcome.interrupted:
        _record_pretrained(project, cfg, method, epochs, out_dir / BACKBONE,
                           outcome.final_loss, outcome.seconds, device, init_weights,
                           noisy_labels, notes, images=int(len(ids)))
    return PretrainResult(cfg.backbone, outcome.backbone_file, outcome.epochs_done,
                          cfg.epochs, outcome.final_loss, outcome.seconds,
                          outcome.images_per_second, outcome.interrupted, str(device))


def _record_pretrained(project: Project, cfg: Any, method: str, epochs: int, file: Path,
                       final_loss: float, seconds: float, device: Any,
                       init_weights: Path | str | None, noisy_labels: Path | str | None,
                       notes: list[str], images: int | None = None) -> None:
    with project.store.transaction():
        project.store.set_meta("pretrained", json.dumps({
            "backbone": cfg.backbone, "method": method, "epochs": epochs,
            "file": project.relative(file), "final_loss": final_loss,
            "seconds": round(seconds, 1), "images": images, "batch_size": cfg.batch_size,
            "lr": cfg.lr, "init_weights": str(init_weights) if init_weights else None,
            "noisy_labels": str(noisy_labels) if noisy_labels else None, "notes": notes,
            "device": str(device)}))


def _supervised_stage(project: Project, cfg: Any, noisy_file: Path,
                      init_state: dict | None, device: Any
                      ) -> tuple[dict, list[str], float, float] | None:
    """BCE on noisy labels; returns (backbone state, notes, loss, seconds) or None if
    interrupted. Skipped when an earlier run finished it (``--resume``)."""
    from alft_cli import finetune as ft
    from alft_cli.checkpoints import load_safe, save_atomic
    from alft_cli.config import FinetuneConfig
    from alft_cli.data import CachedImages
    from alft_cli.models import load_state_dict_checked
    from alft_cli.noisy import read_noisy_labels

    out_file = project.pretrain_dir / SUPERVISED_BACKBONE
    if cfg.resume and out_file.exists():
        state = load_safe(out_file, "supervised backbone")
        return state["state_dict"], list(state.get("notes", [])), float(
            state.get("final_loss", float("nan"))), 0.0
    store = project.store
    noisy = read_noisy_labels(noisy_file, store.ids_by_key(), store.split_of())
    rep = reporter()
    for note in noisy.notes:
        rep.info(f"noisy labels: {note}")
    torch_seed(cfg.seed)
    model = ft.build_classifier(cfg.backbone, noisy.classes, project.config.in_channels,
                                project.config.mean, project.config.std)
    if init_state is not None:
        load_state_dict_checked(model.backbone, init_state, "--init-weights")
    ft_cfg = FinetuneConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                            lr_step=max(1, int(0.8 * cfg.epochs)), seed=cfg.seed,
                            checkpoint_every=cfg.checkpoint_every, resume=cfg.resume,
                            device=cfg.device,
                            # Fine-tuning re-estimates the statistics on its own labels; a
                            # pass over the whole noisy set here would change nothing it uses.
                            precise_bn=False)
    rep.info(f"supervised pretraining of {cfg.backbone} on {len(noisy.ids)} noisy labels "
             f"({len(noisy.classes)} classes, head dropped afterwards)")
    outcome = ft.train(model, CachedImages(project.cache_path), noisy.ids, noisy.y, ft_cfg,
                       project.pretrain_dir, device)
    if outcome.interrupted:
        return None
    state = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    save_atomic({"kind": "alft-backbone", "format": 1, "backbone": cfg.backbone,
                 "in_channels": project.config.in_channels, "feature_dim": model.feature_dim,
                 "method": "supervised-noisy", "epochs": cfg.epochs, "notes": noisy.notes,
                 "noisy_classes": noisy.classes, "final_loss": outcome.final_loss,
                 "state_dict": state}, out_file)
    (project.pretrain_dir / ft.FINETUNE_CHECKPOINT).unlink(missing_ok=True)
    return state, noisy.notes, outcome.final_loss, outcome.seconds


def _load_init_weights(path: Path, backbone: str, in_channels: int) -> dict:
    """A backbone state dict from a torchvision state dict or an alft backbone/checkpoint."""
    from alft_cli.checkpoints import load_safe
    from alft_cli.models import backbone_state_dict_from_torchvision

    state = load_safe(path, "weights file")
    if isinstance(state, dict) and state.get("kind") == "alft-backbone":
        if state.get("backbone") != backbone:
            raise OptionError(f"{path} holds a {state.get('backbone')} backbone, not {backbone}")
        return state["state_dict"]
    if isinstance(state, dict) and state.get("kind") == "alft-classifier":
        prefix = "backbone."
        return {k[len(prefix):]: v for k, v in state["state_dict"].items()
                if k.startswith(prefix)}
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                         dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise OptionError(f"{path}: expected a state dict of tensors")
    return backbone_state_dict_from_torchvision(backbone, state, in_channels=in_channels)


def initial_classifier(project: Project, cfg: Any, round_: int) -> tuple[Any, str, str]:
    """Build the classifier for this round and load its starting weights."""
    from alft_cli.finetune import build_classifier, load_round_model
    from alft_cli.models import BACKBONES

    # The head (and a scratch model) is initialized here: seed first, so a run does not
    # depend on what else the process did before (simulate runs many rounds in one process).
    torch_seed(cfg.seed)
    pretrained = json.loads(project.store.get_meta("pretrained") or "null")
    previous = next((r for r in reversed(project.store.rounds())
                     if r.round < round_ and r.model_file), None)
    choice = cfg.init
    if choice == "previous" and previous is None:
        choice = "pretrained"
    if choice == "pretrained" and pretrained is None:
        if cfg.init == "pretrained":
            raise OptionError("--init pretrained: the project has no pretrained backbone "
                              "(run alft pretrain)")
        choice = "scratch"
    if choice == "previous":
        model, _ = load_round_model(
            project.root, previous.model_file, previous.round,
            f"start round {round_} from the pretrained backbone instead: alft finetune -p "
            f"{project.root} --init pretrained (or --init scratch)")
        backbone = model.config["backbone"]
        if cfg.backbone and cfg.backbone != backbone:
            raise OptionError(f"--backbone {cfg.backbone}: the previous round's model is a "
                              f"{backbone}; use --init scratch to change the backbone")
        return model, f"previous (round {previous.round})", backbone
    if choice == "pretrained":
        backbone = pretrained["backbone"]
        if cfg.backbone and cfg.backbone != backbone:
            raise OptionError(f"--backbone {cfg.backbone}: the project was pretrained with "
                              f"{backbone}")
        return pretrained_classifier(project, pretrained), "pretrained", backbone
    backbone = cfg.backbone or (pretrained or {}).get("backbone") or "densenet121"
    if backbone not in BACKBONES:
        raise OptionError(f"--backbone {backbone!r}: unknown; choose from "
                          f"{', '.join(sorted(BACKBONES))}")
    return (build_classifier(backbone, project.classes, project.config.in_channels,
                             project.config.mean, project.config.std), "scratch", backbone)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def pretrained_classifier(project: Project, pretrained: dict[str, Any]) -> Any:
    """A classifier for the project's classes on the pretrained backbone (new head)."""
    from alft_cli.checkpoints import load_safe
    from alft_cli.finetune import build_classifier
    from alft_cli.models import load_state_dict_checked

    model = build_classifier(pretrained["backbone"], project.classes,
                             project.config.in_channels, project.config.mean,
                             project.config.std)
    state = load_safe(project.resolve(pretrained["file"]), "pretrained backbone")
    load_state_dict_checked(model.backbone, state["state_dict"], pretrained["file"])
    return model
