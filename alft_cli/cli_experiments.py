"""`alft simulate` and `alft report`: the experiments' commands (parsing only; one call into
:mod:`alft_cli.experiments.api` each). Registered on the main app by :mod:`alft_cli.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console(highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``report`` to ``app``."""
    app.command("simulate")(simulate)
    app.command("report")(report)


def simulate(
    archive: Annotated[Path, typer.Argument(help="Folder of images (or manifest CSV).")],
    labels: Annotated[Path, typer.Option(help="Gold labels (one-hot CSV): the oracle.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Simulation folder (resumable).")
                       ],
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies to compare.")
                          ] = "mge-clustering,random",
    seeds: Annotated[str, typer.Option(help="Number of seeds (5) or a list (0,1,2).")] = "5",
    scenario: Annotated[str, typer.Option(
        help="Imbalance scenario(s): 1 = pool as is, 2/3 = remove 20/40 pool images of each "
             "of 3 minority classes; e.g. 1,2,3.")] = "1",
    initial: Annotated[int, typer.Option(help="Random initial labels (paper: 40).")] = 40,
    budget: Annotated[int, typer.Option(help="Images per round (paper: 20).")] = 20,
    max_labels: Annotated[int, typer.Option(help="Stop at this many labels (paper: 220).")
                          ] = 220,
    val_fraction: Annotated[float, typer.Option(help="Validation fraction.")] = 0.25,
    test_fraction: Annotated[float, typer.Option(help="Test fraction.")] = 0.25,
    image_size: Annotated[int, typer.Option(help="Image side (paper: 256).")] = 256,
    backbone: Annotated[str, typer.Option(help="Backbone (paper: densenet121).")
                        ] = "densenet121",
    pretrain_epochs: Annotated[int, typer.Option(help="BYOL epochs (paper: 1000; 0 = none).")
                               ] = 1000,
    pretrain_batch_size: Annotated[int, typer.Option(help="BYOL batch (paper: 100).")] = 100,
    pretrain_lr: Annotated[float, typer.Option(help="BYOL Adam lr (paper: 1e-3).")] = 1e-3,
    hidden_dim: Annotated[int, typer.Option(help="BYOL head hidden size.")] = 4096,
    proj_dim: Annotated[int, typer.Option(help="BYOL projection size.")] = 256,
    pretrain_method: Annotated[str, typer.Option(
        help="byol | supervised-noisy (needs --noisy-labels or --noisy-flip).")] = "byol",
    noisy_labels: Annotated[Path | None, typer.Option(
        help="Weak labels for supervised-noisy pretraining.")] = None,
    noisy_flip: Annotated[float | None, typer.Option(
        help="Make the weak labels from the gold ones, each bit flipped with this "
             "probability (seeded).")] = None,
    then: Annotated[str | None, typer.Option(help="After supervised-noisy: byol.")] = None,
    then_epochs: Annotated[int, typer.Option(help="BYOL epochs after --then byol.")] = 100,
    init_weights: Annotated[Path | None, typer.Option(
        help="Start pretraining from this backbone state dict.")] = None,
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs (paper: 100).")] = 100,
    finetune_batch_size: Annotated[int, typer.Option(help="Fine-tuning batch (paper: 10).")
                                   ] = 10,
    finetune_lr: Annotated[float, typer.Option(help="SGD lr (paper: 0.025).")] = 0.025,
    lr_step: Annotated[int, typer.Option(help="lr x0.1 after this epoch (paper: 80).")] = 80,
    finetune_momentum: Annotated[float | None, typer.Option(
        help="SGD momentum of fine-tuning (default 0.9; the paper does not give one).")
    ] = None,
    freeze_backbone: Annotated[bool, typer.Option(help="Fine-tune the head only (fast).")
                               ] = False,
    finetune_precise_bn: Annotated[bool, typer.Option(
        help="Re-estimate BatchNorm statistics after each fine-tuning (alft finetune "
             "--precise-bn); --no-finetune-precise-bn continues simulations made before it.")
    ] = True,
    candidates: Annotated[int | None, typer.Option(help="m for mge-clustering.")] = None,
    full_supervision: Annotated[bool, typer.Option(
        help="Also fine-tune on the whole pool (upper bound).")] = False,
    max_steps: Annotated[int | None, typer.Option(
        help="Stop after this many steps (time-sliced sessions); rerun to continue.")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        help="Checkpoint and stop after this many minutes; rerun to continue. Exit code 75 "
             "means 'not finished yet'.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Compare AL strategies with an oracle (gold labels answer every query); resumable.

    \b
    Examples:
      alft simulate ucm/images --labels ucm/labels.csv -o sim --seeds 3 --scenario 1,2,3
      alft simulate ucm/images --labels ucm/labels.csv -o old-sim --no-finetune-precise-bn
    """
    from alft_cli.experiments import api as experiments

    r = experiments.simulate(
        archive, labels, out_dir, strategies=strategies, seeds=seeds, scenarios=scenario,
        initial=initial, budget=budget, max_labels=max_labels, val_fraction=val_fraction,
        test_fraction=test_fraction, image_size=image_size, full_supervision=full_supervision,
        candidates=candidates, device=device, max_steps=max_steps, max_minutes=max_minutes,
        pretrain=_pretrain_route(
            backbone=backbone, epochs=pretrain_epochs, batch_size=pretrain_batch_size,
            lr=pretrain_lr, hidden_dim=hidden_dim, proj_dim=proj_dim, method=pretrain_method,
            noisy_labels=str(noisy_labels.resolve()) if noisy_labels else None,
            noisy_flip=noisy_flip, then=then,
            then_epochs=then_epochs if then else None,
            init_weights=str(init_weights.resolve()) if init_weights else None),
        finetune={"epochs": finetune_epochs, "batch_size": finetune_batch_size,
                  "lr": finetune_lr, "lr_step": lr_step, "freeze_backbone": freeze_backbone,
                  "backbone": backbone, "momentum": finetune_momentum,
                  "precise_bn": finetune_precise_bn})
    out.print(f"simulation {r.out}: {r.finished}/{len(r.runs)} runs finished")
    if r.report is not None:
        out.print(f"report: {r.report}/curves.md (plots and CSVs beside it)")
    if not r.complete:
        out.print("not finished: run the same command again to continue")
        raise typer.Exit(75)  # EX_TEMPFAIL: scripts loop on it


def _pretrain_route(**options: object) -> dict:
    # Only what was given (and byol is the default route): the settings file of a
    # simulation records its route exactly, and older simulations resume unchanged.
    return {k: v for k, v in options.items()
            if v is not None and not (k == "method" and v == "byol")}


def report(
    sources: Annotated[list[str], typer.Argument(
        help="Simulation or project folder; several simulation folders (optionally "
             "NAME=FOLDER) to compare them, where an earlier report's rounds.csv may stand "
             "in for a folder.", metavar="source")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write "
                                                    "(default SOURCE/report).")] = None,
    split: Annotated[str, typer.Option(help="test | val")] = "test",
    baseline: Annotated[str | None, typer.Option(
        help="Paired differences against these runs (default: random; comparing folders: "
             "the first folder's random, e.g. byol:random).")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Only these seeds, e.g. 0,1,2 (to compare folders on the seeds they share).")
    ] = None,
    strategies: Annotated[str | None, typer.Option(
        help="Only these strategies, e.g. mge-clustering,random (or byol:random).")] = None,
    scenario: Annotated[str | None, typer.Option(help="Only these scenarios, e.g. 1,3.")
                        ] = None,
    stop_kappa: Annotated[float, typer.Option(
        help="Stop rule replayed on every run: mean stop-set kappa of consecutive rounds "
             "(paper: 0.99).")] = 0.99,
    stop_window: Annotated[int, typer.Option(
        help="Stop rule: rounds the kappa is averaged over (paper: 3).")] = 3,
    budgets: Annotated[str | None, typer.Option(
        help="Labels averaged seed by seed in paired_mean.csv, e.g. 60-220 (default: every "
             "budget after the initial set).")] = None,
) -> None:
    """Learning curves (PNG, CSV, Markdown), paired differences vs random (per budget and
    averaged over budgets), class histograms, and where the stop rule would have ended each
    run (stop.csv).

    Several simulations (e.g. pretraining routes) compare in one report (second example); an
    earlier report's rounds.csv can stand in for a simulation no longer kept (last example).

    \b
    Examples:
      alft report sim/   # then open sim/report/curves.md
      alft report byol=sim-a noisy=sim-b -o cmp/
      alft report sim/ --budgets 60-220   # paired_mean.csv over 60-220 labels
      alft report new=sim/ old=archive/rounds.csv -o cmp/ --baseline old:random
    """
    from alft_cli.experiments import api as experiments

    r = experiments.report([_named_source(s) for s in sources], out=out_dir, split=split,
                           baseline=baseline, seeds=seeds, strategies=strategies,
                           scenarios=scenario, stop_kappa=stop_kappa, stop_window=stop_window,
                           budgets=budgets)
    out.print(f"{r.rows} trained rounds from {r.runs} runs -> {r.out}")
    for f in r.files:
        out.print(f"  {f}")


def _named_source(text: str) -> Path | tuple[str, Path]:
    # NAME=FOLDER, unless the whole text is an existing path (folders may contain '=').
    name, sep, folder = text.partition("=")
    if sep and not Path(text).exists():
        return name, Path(folder)
    return Path(text)
