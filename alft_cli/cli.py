"""The `alft` command line: parse options, make one `api` call, print a short summary.

No torch here: commands stay quick to start and the core stays importable without the CLI.
One idea, kept in one file past ~600 lines on purpose: every command's options and help are
the CLI's contract, and reading them side by side is how they stay consistent.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from alft_cli import __version__
from alft_cli.cli_experiments import register as register_experiments
from alft_cli.cli_labelstudio import DocumentRootOpt, ImageUrlPrefixOpt, labelstudio_app
from alft_cli.errors import AlftError
from alft_cli.progress import RichReporter, set_reporter

app = typer.Typer(
    name="alft",
    help=(
        "Active-learning-guided fine-tuning for multi-label remote-sensing image "
        "classification (BYOL pretraining + MGE+Clustering queries).\n\n"
        "\b\nExample:\n  alft init-pool archive/ -p proj --labels gold.csv && alft status -p proj"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

out = Console(highlight=False, soft_wrap=True)
ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder.")]
app.add_typer(labelstudio_app)


def _version(value: bool) -> None:
    if value:
        out.print(f"alft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    set_reporter(RichReporter(quiet=quiet))


# ------------------------------------------------------------------------------------------
@app.command("demo-data")
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the archive into.")],
    n_images: Annotated[int, typer.Option("--n-images", "-n", help="Number of images.")] = 400,
    image_size: Annotated[int, typer.Option("--image-size", help="Side in pixels.")] = 64,
    imbalance: Annotated[float, typer.Option(help="1 = natural class frequencies; larger "
                                             "makes minority classes rarer.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    bands: Annotated[int | None, typer.Option(
        help="12: a Sentinel-2-like archive instead (12-band uint16 GeoTIFFs, CORINE "
             "classes, BigEarthNet layout).")] = None,
    layout: Annotated[str, typer.Option(
        help="With --bands 12: band-folder (BigEarthNet v1: a folder per patch, a file per "
             "band) or file (one 12-band GeoTIFF per patch).")] = "band-folder",
) -> None:
    """Generate the built-in synthetic multi-label archive (images + one-hot labels.csv).

    \b
    Examples:
      alft demo-data demo/ -n 400
      alft init-pool demo/images -p proj --labels demo/labels.csv
      alft demo-data s2demo/ --bands 12 -n 300 --image-size 60
    """
    from alft_cli import api

    result = api.demo_data(out_dir, n_images=n_images, image_size=image_size,
                           imbalance=imbalance, seed=seed, bands=bands, layout=layout)
    what = "patches" if bands else "images"
    out.print(f"wrote {len(result.keys)} {what} to {result.root}")
    out.print(f"gold labels: {result.labels_csv}  ({len(result.classes)} classes: "
              f"{', '.join(result.classes)})")


@app.command("init-pool")
def init_pool(
    archive: Annotated[Path, typer.Argument(help="Folder of images (searched recursively) or "
                                            "a manifest CSV with a 'filename' column.")],
    project: ProjectOpt,
    classes: Annotated[str | None, typer.Option(help="Class names, comma-separated.")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="Gold labels (one-hot CSV); classes come from its header. Used for val/test "
             "evaluation only, never as pool labels.")] = None,
    val_fraction: Annotated[float | None, typer.Option(
        help="Fraction of images for validation (default 0.25 with --labels, else 0).")] = None,
    test_fraction: Annotated[float | None, typer.Option(
        help="Fraction of images for test (default 0.25 with --labels, else 0).")] = None,
    val_from_answers: Annotated[float | None, typer.Option(
        help="No gold labels? Route this share of every imported batch of answers to a "
             "validation set (never trained on nor queried), e.g. 0.2.")] = None,
    initial: Annotated[int, typer.Option(help="Size of the random initial to-label set.")] = 40,
    image_size: Annotated[int, typer.Option(help="Images are resized to this square size.")
                          ] = 256,
    in_channels: Annotated[int | None, typer.Option(
        help="Bands per image for 8-bit images (default 3 = RGB); multi-band archives take "
             "it from --bands.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split and the initial set.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Decoding threads.")] = None,
    format: Annotated[str, typer.Option("--format", help="csv | label-studio (also writes "
                                        "the initial list as Label Studio tasks, labeling "
                                        "config and README.txt)")] = "csv",
    image_url_prefix: ImageUrlPrefixOpt = None,
    document_root: DocumentRootOpt = None,
    layout: Annotated[str, typer.Option(
        help="auto | file (one multi-band file per sample) | band-folder (a folder per "
             "sample, one <patch>_B01.tif ... file per band: BigEarthNet).")] = "auto",
    bands: Annotated[str | None, typer.Option(
        help="Bands to use, in order: names (B04,B03,B02,B08; BigEarthNet suffixes or band "
             "descriptions) or 1-based indexes. Default: all.")] = None,
    nodata: Annotated[float | None, typer.Option(
        help="Nodata value (default: each file's own); nodata, NaN and inf are masked.")
                      ] = None,
    scale: Annotated[str, typer.Option(
        help="Per-band scaling for the whole archive: reflectance (DN / 10000, clipped), "
             "percentile (2nd-98th percentile on a seeded sample; default for non-8-bit "
             "data) or none (8-bit).")] = "auto",
) -> None:
    """Index an archive into a new project; write the initial to-label list.

    The initial list goes to Label Studio like any query: --format label-studio writes it as
    tasks (without suggestions: there is no model yet), or push it with alft labelstudio
    push -p proj --create TITLE.

    \b
    Examples:
      alft init-pool ucmerced/images -p proj --labels ucmerced/labels.csv --initial 40
      alft init-pool /data/tiles -p proj --classes water,trees,buildings
      alft init-pool /data/tiles -p proj --classes water,trees --val-from-answers 0.2
      alft init-pool BigEarthNet-v1.0 -p ben --labels gold.csv --scale reflectance --bands 2,3,4,8
    """
    from alft_cli import api

    r = api.init_pool(archive, project, classes=classes, labels_file=labels,
                      val_fraction=val_fraction, test_fraction=test_fraction, initial=initial,
                      image_size=image_size, in_channels=in_channels, seed=seed,
                      workers=workers, fmt=format, image_url_prefix=image_url_prefix,
                      document_root=document_root, val_from_answers=val_from_answers,
                      layout=layout, bands=bands, nodata=nodata, scale=scale)
    out.print(f"project {r.project}: {r.indexed} images indexed in {r.seconds:.1f} s "
              f"(pool {r.splits['pool']}, val {r.splits['val']}, test {r.splits['test']}), "
              f"{len(r.classes)} classes")
    if r.skipped:
        out.print(f"{r.skipped} files skipped; see {r.skipped_file}")
    for note in r.notes:
        out.print(f"note: {note}")
    if r.query_file:
        out.print(f"initial to-label list ({r.initial} images): {r.query_file}")
        for path in r.label_studio_files:
            out.print(f"label studio: {path}")
        out.print(f"next: label them, then  alft import-labels FILE -p {r.project}  (or: "
                  f"alft labelstudio push -p {r.project} --create TITLE, then pull)")


@app.command("labels-from-bigearthnet")
def labels_from_bigearthnet(
    archive: Annotated[Path, typer.Argument(help="BigEarthNet folder (one folder per patch).")],
    out_file: Annotated[Path, typer.Option("--out", help="Gold file to write (one-hot CSV).")],
    nomenclature: Annotated[int, typer.Option(
        help="43 (the CORINE classes as stored) or 19 (BigEarthNet-19, Sumbul et al. 2021)."
    )] = 43,
    metadata: Annotated[Path | None, typer.Option(
        help="BigEarthNet v2 metadata.parquet (needs pyarrow); default: v1 per-patch "
             "<patch>_labels_metadata.json files.")] = None,
) -> None:
    """Write a BigEarthNet archive's labels as a one-hot gold file for init-pool --labels.

    \b
    Examples:
      alft labels-from-bigearthnet BigEarthNet-v1.0 --out gold19.csv --nomenclature 19
      alft labels-from-bigearthnet BigEarthNet-S2 --out gold.csv --nomenclature 19 \\
          --metadata metadata.parquet
    """
    from alft_cli import api

    r = api.labels_from_bigearthnet(archive, out_file, nomenclature=nomenclature,
                                    metadata=metadata)
    out.print(f"wrote {out_file}: {len(r.rows)} patches, {len(r.classes)} classes "
              f"({nomenclature}-class nomenclature)")
    if r.unmapped:
        out.print(f"{len(r.unmapped)} patches have no class in it and got no row (e.g. "
                  f"{r.unmapped[0]})")
    if r.missing:
        out.print(f"{len(r.missing)} patch folders have no labels (e.g. {r.missing[0]})")


@app.command("import-labels")
def import_labels(
    file: Annotated[Path, typer.Argument(help="Label file: one-hot CSV, list CSV "
                                         "(filename,labels with ';'), or a Label Studio export.")],
    project: ProjectOpt,
    format: Annotated[str, typer.Option(
        "--format", help="auto | onehot | list | label-studio")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace existing labels that differ.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Validate and report; change nothing.")] = False,
    val_from_answers: Annotated[float | None, typer.Option(
        help="Route this share of the new answers to a validation set (never trained on "
             "nor queried); default: the project's init-pool --val-from-answers.")] = None,
) -> None:
    """Import labels for pool images (all rows validated first; all or nothing).

    A row's answer is the classes present, joined by ';' (list CSV) or 0/1 per class
    (one-hot). "No class present" is an answer too: write none (or -) in the labels column,
    or 0 in every class column. An EMPTY answer is no answer: the row is not imported and
    its image stays pending, so a file filled in halfway imports its answered half.

    \b
    Examples:
      alft import-labels proj/rounds/round_001/query.csv -p proj --dry-run
      alft import-labels proj/rounds/round_001/query.csv -p proj
      alft import-labels answers.csv -p proj --val-from-answers 0.2
    """
    from alft_cli import api

    r = api.import_labels(project, file, fmt=format, overwrite=overwrite, dry_run=dry_run,
                          val_from_answers=val_from_answers)
    verb = "would import" if r.dry_run else "imported"
    out.print(f"{verb} {r.file} ({r.format}): {r.added} new, {r.changed} changed, "
              f"{r.unchanged} unchanged" + (f", {r.not_labels} tasks without a usable "
                                            "annotation" if r.not_labels else ""))
    if r.unanswered:
        out.print(f"{r.unanswered} rows unanswered (empty): not imported, their images stay "
                  "pending (write none for 'no class present')")
    if r.to_val:
        out.print(f"{r.to_val} of the new answers {'would go' if r.dry_run else 'went'} to "
                  "the validation set (--val-from-answers)")
    for note in r.notes:
        out.print(f"note: {note}")
    out.print(f"labeled pool images: {r.labeled_total}; still pending: {r.pending_left}")


@app.command("status")
def status(
    project: ProjectOpt,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    stop_kappa: Annotated[float, typer.Option(
        help="Stop rule: recommend stopping once the stop-set kappa between consecutive "
             "rounds, averaged over --stop-window rounds, reaches this (paper: 0.99).")
    ] = 0.99,
    stop_window: Annotated[int, typer.Option(
        help="Stop rule: number of consecutive round-to-round agreements (paper: 3).")] = 3,
) -> None:
    """Show the project's splits, labels, rounds and metrics, and whether to stop labeling
    (read-only, never blocks).

    \b
    Examples:
      alft status -p proj
      alft status -p proj --json | jq .rounds
      alft status -p proj --json | jq .stop
    """
    from alft_cli import api

    info = api.status(project, stop_kappa=stop_kappa, stop_window=stop_window)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    _print_status(info)


def _print_status(info: dict) -> None:
    s = info["splits"]
    out.print(f"[bold]project[/bold] {info['project']}  (archive {info['archive']})")
    if not info.get("archive_found", True):
        out.print(f"archive folder not found: {info['archive']} (moved? alft relocate -p "
                  f"{info['project']} NEW_PATH; the project works from its decode cache "
                  "meanwhile)", style="yellow")
    out.print(f"images: pool {s['pool']}, val {s['val']}, test {s['test']}"
              + (f"; {info['skipped']} skipped" if info["skipped"] else ""))
    out.print(f"classes ({len(info['classes'])}): {', '.join(info['classes'])}")
    pre = info.get("pretrained")
    out.print("pretrained: " + (f"{pre['backbone']} ({pre['method']}, {pre['epochs']} epochs)"
                                if pre else "no"))
    out.print(f"labeled pool images: {info['labeled']}; pending: {len(info['pending'])}"
              + (f"; {info['val_from_answers']} answers in val" if info.get("val_from_answers")
                 else ""))
    if info.get("suggestions"):
        out.print(_suggestion_evidence(info["suggestions"]))
    if info["rounds"]:
        table = Table(show_edge=False)
        for col in ("round", "strategy", "labeled", "pending", "val micro/macro F1",
                    "test micro/macro F1", "stop kappa / changed"):
            table.add_column(col)
        for r in info["rounds"]:
            m = r["metrics"] or {}
            table.add_row(str(r["round"]), r["strategy"], str(r["labeled"]), str(r["pending"]),
                          _f1s(m.get("val")), _f1s(m.get("test")),
                          _stability(r.get("stability")))
        out.print(table)
    for split, names in (info.get("classes_without_positives") or {}).items():
        if names:
            out.print(f"note: the {split} split has no image of {', '.join(names)}: macro F1 "
                      "counts each as F1 0 (scikit-learn), mAP leaves it out")
    stop = info.get("stop")
    if stop:
        out.print(("[bold]stop labeling?[/bold] yes: " if stop["recommended"]
                   else "stop labeling? not yet: ") + stop["reason"])
    out.print(f"next: {info['next']}")


def _suggestion_evidence(e: dict) -> str:
    return (f"suggestions: round {e['model_round']}'s model suggested for the "
            f"{e['answered']} answered images of round {e['round']}'s query: micro F1 "
            f"{e['micro_f1']:.3f}, {e['exact']} exactly as answered")


def _stability(s: dict | None) -> str:
    if not s:
        return "-"
    kappa = "undefined" if s["kappa"] is None else f"{s['kappa']:.3f}"
    changed = "-" if s["changed"] is None else f"{100 * s['changed']:.0f}%"
    return f"{kappa} / {changed}"


def _f1s(m: dict | None) -> str:
    if not m:
        return "-"
    return f"{m['micro_f1']:.3f} / {m['macro_f1']:.3f}"


@app.command("pretrain")
def pretrain(
    project: ProjectOpt,
    backbone: Annotated[str, typer.Option(help="densenet121 (paper), resnet18, resnet50, "
                                          "mobilenet_v3_small, efficientnet_b0.")
                        ] = "densenet121",
    epochs: Annotated[int, typer.Option(help="BYOL epochs (paper: 1000).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Images per step (paper: 100).")] = 100,
    lr: Annotated[float, typer.Option(help="Adam learning rate (paper: 1e-3).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay.")] = 0.0,
    hidden_dim: Annotated[int, typer.Option(help="Projector/predictor hidden size.")] = 4096,
    proj_dim: Annotated[int, typer.Option(help="Projection size.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Save a checkpoint every N epochs.")
                                ] = 10,
    resume: Annotated[bool, typer.Option(help="Continue from pretrain/checkpoint.pt.")] = False,
    restart: Annotated[bool, typer.Option(help="Start over, replacing an earlier run.")
                       ] = False,
    init_weights: Annotated[Path | None, typer.Option(
        help="Start from a backbone state dict (torchvision or alft file).")] = None,
    method: Annotated[str, typer.Option(
        help="byol (paper) | supervised-noisy (BCE on --noisy-labels, head dropped).")
    ] = "byol",
    noisy_labels: Annotated[Path | None, typer.Option(
        help="Weak labels for supervised-noisy (import-labels formats; any classes).")] = None,
    then: Annotated[str | None, typer.Option(
        help="After supervised-noisy, continue with: byol.")] = None,
    then_epochs: Annotated[int, typer.Option(help="BYOL epochs after --then byol.")] = 100,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Pretrain the backbone: BYOL on every image of the archive (no labels used).

    Runs under torchrun for several GPUs (last example).

    \b
    Examples:
      alft pretrain -p proj --backbone resnet18 --epochs 50 --batch-size 64
      alft pretrain -p proj --method supervised-noisy --noisy-labels lc.csv --epochs 30 \\
          --lr 0.01 --batch-size 32 --then byol --then-epochs 50
      torchrun --nproc_per_node=4 -m alft_cli pretrain -p proj
    """
    from alft_cli import api

    r = api.pretrain(project, backbone=backbone, epochs=epochs, batch_size=batch_size, lr=lr,
                     weight_decay=weight_decay, hidden_dim=hidden_dim, proj_dim=proj_dim,
                     seed=seed, checkpoint_every=checkpoint_every, resume=resume,
                     device=device, restart=restart, init_weights=init_weights,
                     method=method, noisy_labels=noisy_labels, then=then,
                     then_epochs=then_epochs)
    if r.interrupted:
        out.print(f"stopped after {r.epochs_done}/{r.epochs} epochs; continue with: "
                  f"alft pretrain -p {project} --resume (same options)")
        raise typer.Exit(130)
    out.print(f"pretrained {r.backbone} ({method}{' + ' + then if then else ''}) for "
              f"{r.epochs} epochs on {r.device} in "
              f"{r.seconds:.0f} s ({r.images_per_second:.1f} img/s), final loss "
              f"{r.final_loss:.4f}: {r.backbone_file}")


@app.command("finetune")
def finetune(
    project: ProjectOpt,
    epochs: Annotated[int, typer.Option(help="Epochs (paper: 100).")] = 100,
    batch_size: Annotated[int, typer.Option(help="Batch size (paper: 10).")] = 10,
    lr: Annotated[float, typer.Option(help="SGD learning rate (paper: 0.025).")] = 0.025,
    lr_step: Annotated[int, typer.Option(help="Epoch after which lr is x0.1 (paper: 80; "
                                         "0 = never).")] = 80,
    momentum: Annotated[float, typer.Option(
        help="SGD momentum (0.9; not given in the paper, see docs/RESULTS.md).")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = 0.0,
    init: Annotated[str, typer.Option(help="previous (warm start from the last round's "
                                      "model; first round: pretrained) | pretrained | scratch")
                    ] = "previous",
    freeze_backbone: Annotated[bool, typer.Option(
        help="Train only the head on cached features (fast on CPU).")] = False,
    backbone: Annotated[str | None, typer.Option(
        help="Backbone for --init scratch without pretraining.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N epochs.")] = 10,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    restart: Annotated[bool, typer.Option(help="Start over, dropping an interrupted run.")
                       ] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    precise_bn: Annotated[bool, typer.Option(
        help="After training, re-estimate the BatchNorm statistics on the labeled images "
             "(--no-precise-bn: keep training's running averages, as alft did before).")
    ] = True,
) -> None:
    """Fine-tune the classifier on all labeled images; evaluate on val and test.

    After an interruption (Ctrl-C stops after the current epoch and saves a checkpoint),
    --resume continues it and --restart starts over; without either it refuses.

    \b
    Examples:
      alft finetune -p proj --epochs 100
      alft finetune -p proj --epochs 100 --resume
      alft finetune -p proj --epochs 100 --no-precise-bn
    """
    from alft_cli import api

    r = api.finetune(project, epochs=epochs, batch_size=batch_size, lr=lr, lr_step=lr_step,
                     momentum=momentum, weight_decay=weight_decay, init=init,
                     freeze_backbone=freeze_backbone, backbone=backbone, seed=seed,
                     checkpoint_every=checkpoint_every, resume=resume, device=device,
                     restart=restart, precise_bn=precise_bn)
    if r.interrupted:
        out.print(f"stopped; continue with: alft finetune -p {project} --resume")
        raise typer.Exit(130)
    out.print(f"round {r.round}: {r.backbone} fine-tuned on {r.labeled} labels "
              f"(init {r.init}) in {r.seconds:.0f} s on {r.device}: {r.model_file}")
    for split in ("val", "test"):
        if split in r.metrics:
            m = r.metrics[split]
            out.print(f"  {split}: micro F1 {m['micro_f1']:.4f}  macro F1 {m['macro_f1']:.4f}"
                      f"  mAP {m['mAP']:.4f}  (n={m['n']})")
    if r.suggestions:
        out.print(f"  {_suggestion_evidence(r.suggestions)}")
    if r.stability is not None:
        out.print(f"  stop set vs round {r.stability['compared_with']}: kappa / label sets "
                  f"changed {_stability(r.stability)} of {r.stability['n']} images; alft "
                  "status says when to stop")


@app.command("query")
def query(
    project: ProjectOpt,
    budget: Annotated[int, typer.Option("--budget", "-b", help="Images to select (B).")] = 20,
    strategy: Annotated[str, typer.Option(
        help="auto (default: each batch split between MGE+Clustering and random draws, the "
             "split moved towards the part whose labels measurably helped more in this "
             "project, evidence accumulated over its auto rounds from an even prior, "
             "only 2 MGE+Clustering "
             "picks in the first batch; the query note says why) "
             "| mge-clustering (paper) | mge | random | entropy | badge | coreset | kmeans | "
             "typiclust | class-aware-mge | hybrid | "
             "auto-f1 (issue 9's rule: random below val micro-F1 0.70, MGE+Clustering from "
             "0.80)")] = "auto",
    candidates: Annotated[int | None, typer.Option(
        help="m most uncertain images clustered by mge-clustering (default 3 x budget).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed (same model + seed = same query).")] = 0,
    out_file: Annotated[Path | None, typer.Option("--out", help="Query file to write "
                                                     "(default: the round's folder).")] = None,
    format: Annotated[str, typer.Option("--format", help="csv | label-studio (also writes "
                                        "tasks JSON and labeling config XML)")] = "csv",
    force: Annotated[bool, typer.Option(help="Cancel a pending query and make a new one.")
                     ] = False,
    image_url_prefix: ImageUrlPrefixOpt = None,
    document_root: DocumentRootOpt = None,
    batch_size: Annotated[int, typer.Option(help="Inference batch size.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    preview_bands: Annotated[str | None, typer.Option(
        help="Multi-band projects: the 3 bands (or 1) of the quicklook PNGs, e.g. "
             "B08,B04,B03 (default: true colour B04,B03,B02 or red,green,blue).")] = None,
) -> None:
    """Choose the next images to label with an active-learning strategy.

    Several GPUs score a large pool together under torchrun (see the examples).

    --format label-studio writes, next to the query file, the tasks (query.label-studio.json,
    the model's suggestions as predictions whose score is alft's order), the labeling config
    and a README.txt with the steps. Label Studio shows the images through its local-files
    serving: start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to a folder above the archive, and give its
    project a Local Files storage (not synced) whose path is the archive; --image-url-prefix
    loads them from anywhere else. Or skip the files with alft labelstudio push (last example).

    \b
    Examples:
      alft query -p proj --budget 20
      alft query -p proj --budget 20 --strategy mge-clustering
      alft query -p s2proj --budget 20 --preview-bands B08,B04,B03
      torchrun --nproc_per_node=4 -m alft_cli query -p proj --budget 1000
      alft labelstudio push -p proj
    """
    from alft_cli import api

    r = api.query(project, budget=budget, strategy=strategy, candidates=candidates,
                  seed=seed, out=out_file, fmt=format, force=force, device=device,
                  batch_size=batch_size, image_url_prefix=image_url_prefix,
                  document_root=document_root, preview_bands=preview_bands)
    if r is None:  # a helper rank under torchrun: rank 0 reports
        return
    for note in r.notes:
        out.print(f"note: {note}")
    model = f"model of round {r.model_round}" if r.model_round is not None else "no model"
    out.print(f"round {r.round}: {r.selected} of {r.candidates} unlabeled images chosen by "
              f"{r.strategy} ({model})")
    out.print(f"query file: {r.query_file}")
    for path in r.label_studio_files:
        out.print(f"label studio: {path}")
    column = ("the 'labels' column holds the model's suggestion" if r.model_round is not None
              else "no model yet: the 'labels' column starts empty")
    out.print(f"next: label them ({column}), then alft import-labels FILE -p {project}")


@app.command("export")
def export(
    project: ProjectOpt,
    round_: Annotated[int | None, typer.Option("--round", help="Round whose model to export "
                                               "(default: the latest trained).")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="ONNX file to write "
                                                  "(default: exports/alft_roundNNN.onnx).")
                        ] = None,
    calibrate_thresholds: Annotated[bool, typer.Option(
        help="Per-class thresholds maximizing F1 on val (default 0.5, as in the paper).")
    ] = False,
    device: Annotated[str, typer.Option(help="Device for the torch side of the parity "
                                        "check.")] = "cpu",
) -> None:
    """Export the classifier to one self-contained ONNX file with everything a consumer needs.

    \b
    Examples:
      alft export -p proj
      alft export -p proj --round 3 --calibrate-thresholds --out model.onnx
    """
    from alft_cli import api

    r = api.export(project, round_=round_, out=out_file,
                   calibrate_thresholds=calibrate_thresholds, device=device)
    out.print(f"exported round {r.round}: {r.path} (onnx.checker passed; parity "
              f"onnxruntime vs torch max |diff| {r.parity_max_abs_diff:.2e} on "
              f"{r.parity_images} images, limit 1e-4)")
    out.print(f"next: alft tag {r.path} /path/to/archive --out tags.csv")


@app.command("tag")
def tag(
    model: Annotated[Path, typer.Argument(help="ONNX model written by alft export.")],
    archive: Annotated[Path, typer.Argument(help="Folder of images (recursive) or manifest "
                                            "CSV.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Output CSV or JSONL.")],
    format: Annotated[str | None, typer.Option(
        "--format", help="csv | jsonl (default: from --out's extension: .jsonl/.ndjson -> "
                         "jsonl, else csv).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when available) | cpu | cuda")
                      ] = "auto",
    shard: Annotated[str | None, typer.Option(
        help="Process only shard i of n (i/n, 0-based), e.g. 3/8 in an array job.")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue an interrupted output: skip files already in it (same model only).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 32,
    workers: Annotated[int | None, typer.Option(help="Decoding threads.")] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime CPU threads.")] = None,
) -> None:
    """Tag a whole archive with an exported model (streams; memory stays flat).

    Needs no project: classes, thresholds and preprocessing come from the model's metadata.

    \b
    Examples:
      alft tag model.onnx /data/archive --out tags.csv
      alft tag model.onnx /data/archive --out tags_0.jsonl --shard 0/4 --resume
    """
    # api is imported lazily and tag.py avoids torch, so tagging stays lean in memory.
    from alft_cli import api

    r = api.tag(model, archive, out=out_file, fmt=format, device=device, shard=shard,
                resume=resume, batch_size=batch_size, workers=workers, threads=threads,
                overwrite=overwrite)
    out.print(f"tagged {r.tagged} images with {r.provider} in {r.seconds:.1f} s "
              f"({r.images_per_second:.1f} img/s) -> {r.out}"
              + (f"; {r.already_done} already done" if r.already_done else ""))
    if r.skipped:
        out.print(f"{r.skipped} unreadable files skipped; list: {r.skipped_file}")


# simulate and report: the experiments above the face (alft_cli/cli_experiments.py)
register_experiments(app)


@app.command("relocate")
def relocate(
    project: ProjectOpt,
    new_archive: Annotated[Path, typer.Argument(
        help="The archive's new folder (or its manifest CSV, for a project indexed from one).")],
) -> None:
    """Point a project at its moved archive, after checking every indexed image is there
    with the size and SHA-256 it had at indexing (otherwise nothing changes).

    \b
    Examples:
      alft relocate -p proj /mnt/new-disk/archive/images
    """
    from alft_cli import api

    r = api.relocate(project, new_archive)
    out.print(f"archive of {project}: {r.old} -> {r.new} ({r.checked} images checked by size "
              "and SHA-256)" + (f"; recorded relative to the project as {r.relative}"
                                if r.relative else ""))


@app.command("doctor")
def doctor(
    project: ProjectOpt,
    verify_hashes: Annotated[bool, typer.Option("--hash", help="Also re-hash every image "
                                                "(slow on big archives).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Check a project (files, cache, labels, rounds, artifacts); changes nothing.

    Exit code 0 when consistent, 1 when a problem was found.

    \b
    Examples:
      alft doctor -p proj
      alft doctor -p proj --hash
    """
    from alft_cli import api

    r = api.doctor(project, verify_hashes=verify_hashes)
    if as_json:
        sys.stdout.write(json.dumps({"ok": r.ok, "problems": r.problems, "notes": r.notes,
                                     "checked": r.checked}, indent=2) + "\n")
    else:
        counts = ", ".join(f"{v} {k}" for k, v in r.checked.items())
        out.print(f"checked {counts}")
        for note in r.notes:
            out.print(f"note: {note}")
        for problem in r.problems:
            out.print(f"problem: {problem}", style="red")
        out.print("project is consistent" if r.ok else f"{len(r.problems)} problems found")
    if not r.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------
def main(args: list[str] | None = None) -> None:
    """Console-script entry point: AlftError -> one line on stderr and its exit code."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        code = app(args=args, standalone_mode=False)
    except AlftError as exc:
        err.print(f"error: {exc.message}", style="red", markup=False)
        for line in exc.details:
            err.print(f"  {line}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", style="yellow")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        # The command-line parser turns Ctrl-C into Abort.
        err.print("interrupted", style="yellow")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - usage errors, then last resort (a bug)
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            # A usage error of the (bundled) click parser: its own short message, exit 2.
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("ALFT_DEBUG"):
            raise
        err.print(f"internal error: {type(exc).__name__}: {exc} "
                  "(this is a bug; rerun with ALFT_DEBUG=1 for the traceback)",
                  style="red", markup=False)
        sys.exit(70)
    # Without standalone mode the parser returns a command's typer.Exit code instead of exiting.
    sys.exit(code if isinstance(code, int) else 0)
