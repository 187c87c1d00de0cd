"""The library's face: one function per command. The round bookkeeping lives here only.

The CLI parses options and calls exactly one of these; the experiments (``simulate``) drive
rounds through the same functions, so a simulated round is a real round. Notebook users
import this module. Each function checks its options, opens the project (locked when it
writes) and calls the module that owns the step:

=================  ==========================================================
init_pool          :mod:`alft_cli.indexing` (scan, decode cache, splits, gold)
import_labels      :mod:`alft_cli.labels` (read the file), :mod:`alft_cli.answers` (check it)
pretrain           :mod:`alft_cli.routes` (BYOL / noisy labels / supplied weights)
finetune           :mod:`alft_cli.routes` (warm start), :mod:`alft_cli.finetune` (BCE loop)
query              :mod:`alft_cli.scoring` (pool pass + strategy), :mod:`alft_cli.labels`
status / doctor    the store; :mod:`alft_cli.checks`
export / tag       :mod:`alft_cli.export`, :mod:`alft_cli.tag`
labels_from_...    :mod:`alft_cli.bigearthnet` (BigEarthNet label files -> gold CSV)
demo_data          :mod:`alft_cli.demo` (the synthetic archives)
=================  ==========================================================

Above this face sit the experiments (:mod:`alft_cli.experiments`) and the live Label Studio
loop (:mod:`alft_cli.labelstudio`): they drive projects only through these functions. The
module is one idea (the commands' boundary: option checks, locking, rounds) and stays near
700 lines because each command checks its own options here, before any work starts.

Rounds: round 0 is the initial (random) to-label list written by :func:`init_pool`. Labels
imported for a queried sample belong to the round of that query. :func:`finetune` trains the
model of the latest round on every label present; :func:`query` uses the latest trained model
to open the next round.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alft_cli import faults
from alft_cli.answers import ImportResult
from alft_cli.atomic import atomic_open
from alft_cli.checks import DoctorReport
from alft_cli.errors import OptionError
from alft_cli.indexing import InitPoolResult
from alft_cli.labels import QueryRow, read_label_file, write_query_csv
from alft_cli.labels.lstasks import image_url_function, write_label_studio_files
from alft_cli.labels.queryfiles import fresh_path
from alft_cli.progress import reporter
from alft_cli.project import Project, reading, writing
from alft_cli.routes import PretrainResult

__all__ = [
    "DoctorReport", "FinetuneResult", "ImportResult", "InitPoolResult", "PretrainResult",
    "QueryResult", "adopt_pretrained", "demo_data", "doctor", "exclude_samples", "export",
    "finetune", "import_labels", "init_pool", "labels_from_bigearthnet", "pretrain", "query",
    "relocate", "status", "tag",
]

PAPER_INITIAL = 40


# --------------------------------------------------------------------------------------------
# init-pool
# --------------------------------------------------------------------------------------------
def init_pool(
    archive: Path | str,
    project_dir: Path | str,
    *,
    classes: Sequence[str] | str | None = None,
    labels_file: Path | str | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    initial: int = PAPER_INITIAL,
    image_size: int = 256,
    in_channels: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    index_from: Path | str | None = None,
    fmt: str = "csv",
    image_url_prefix: str | None = None,
    document_root: Path | str | None = None,
    val_from_answers: float | None = None,
    layout: str = "auto",
    bands: str | Sequence[str] | None = None,
    nodata: float | None = None,
    scale: str | None = None,
) -> InitPoolResult:
    """Index an archive into a new project: splits, decode cache, initial to-label list.

    Gold labels from ``labels_file`` are kept for val and test samples only (evaluation);
    pool samples get labels only through :func:`import_labels`. Without gold labels there is
    nothing to evaluate against, so val/test default to empty. ``index_from`` (another
    project over the same archive) reuses its index and decode cache instead of decoding.
    ``fmt="label-studio"`` also writes the initial list as Label Studio tasks (no
    predictions: there is no model yet), as :func:`query` does. ``val_from_answers``
    (projects without gold val labels) routes that share of every imported batch of answers
    to the val split (:mod:`alft_cli.valsplit`).

    Multi-band archives (see :mod:`alft_cli.rasters`): ``layout`` (``auto``, ``file``,
    ``band-folder``), ``bands`` (names or 1-based indexes, in model order; default all),
    ``nodata`` (overrides the files' own) and ``scale`` (``reflectance``, ``percentile``,
    ``none``; default percentile for non-8-bit data) are fixed here for the project's life;
    ``in_channels`` then follows from the bands (default 3 for 8-bit RGB archives).
    """
    import time

    from alft_cli.indexing import (
        check_new_project_dir,
        create_project,
        resolve_classes,
        split_fractions,
    )
    from alft_cli.raster_index import RasterOptions
    from alft_cli.valsplit import META_KEY, check_fraction

    started = time.perf_counter()
    root = Path(project_dir)
    check_new_project_dir(root)
    class_list = resolve_classes(classes, labels_file)
    val_fraction, test_fraction = split_fractions(val_fraction, test_fraction,
                                                  has_gold=labels_file is not None)
    val_from_answers = check_fraction(val_from_answers)
    if val_from_answers and val_fraction:
        raise OptionError("--val-from-answers grows a validation set for projects without "
                          "gold val labels; give --val-fraction 0 with it")
    if initial < 0:
        raise OptionError("--initial must be >= 0")
    if not 16 <= image_size <= 4096:
        raise OptionError("--image-size must be between 16 and 4096")
    if fmt not in ("csv", "label-studio"):
        raise OptionError(f"--format {fmt!r}: use csv or label-studio")
    if fmt == "label-studio":  # refuse a document root that cannot serve it before indexing
        image_url_function(Path(archive).resolve(), prefix=image_url_prefix, root=document_root)
    result = create_project(
        Path(archive), root, classes=class_list, labels_file=labels_file,
        val_fraction=val_fraction, test_fraction=test_fraction, initial=initial,
        image_size=image_size, in_channels=in_channels, seed=seed, workers=workers,
        index_from=Path(index_from) if index_from is not None else None,
        meta={META_KEY: json.dumps({"fraction": val_from_answers})} if val_from_answers
        else None,
        raster=RasterOptions(layout or "auto", bands, nodata, scale))
    if fmt == "label-studio" and result.query_file is not None:
        from alft_cli.quicklooks import initial_quicklook

        with reading(root) as project:
            keys = project.store.keys_by_id()
            rows = [QueryRow(keys[s], rank, float("nan"), -1, None,
                             initial_quicklook(project, result.query_file, rank, keys[s]))
                    for _, s, rank, _, _ in project.store.pending_queries()]
            result.label_studio_files = write_label_studio_files(
                result.query_file, rows, project.classes, project.archive, "alft", round_=0,
                image_url_prefix=image_url_prefix, root=document_root, project_dir=root)
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------
# import-labels
# --------------------------------------------------------------------------------------------
def import_labels(project_dir: Path | str, file: Path | str, *, fmt: str = "auto",
                  overwrite: bool = False, dry_run: bool = False,
                  val_from_answers: float | None = None) -> ImportResult:
    """Validate every row of a label file, then import all of it in one transaction.

    Any problem (unknown file or class, duplicate, non-0/1 value, val/test sample, conflict
    with an existing label without ``overwrite``) refuses the whole file with one line per
    problem; nothing is written. Importing the same content twice changes nothing. A row
    with an empty answer is not an answer: it is not imported and its image stays pending.
    ``val_from_answers`` (default: the project's ``init-pool --val-from-answers``) routes
    that share of the answers to the val split (:mod:`alft_cli.valsplit`).
    """
    from alft_cli.answers import plan_import, store_answers, suggestions_note
    from alft_cli.valsplit import check_fraction, project_fraction, refuse_with_gold_val

    file = Path(file)
    val_from_answers = check_fraction(val_from_answers)
    args = {"file": str(file), "format": fmt, "overwrite": overwrite, "dry_run": dry_run,
            "val_from_answers": val_from_answers}
    context = reading(project_dir) if dry_run else writing(project_dir, "import-labels", args)
    with context as project:
        store = project.store
        fraction = (project_fraction(store) if val_from_answers is None
                    else val_from_answers)
        if val_from_answers:
            refuse_with_gold_val(store, val_from_answers)
        parsed = read_label_file(file, project.classes, fmt=fmt)
        plan = plan_import(project, parsed, file, overwrite, fraction)
        if (plan.answered_ids or plan.val_changed) and not dry_run:
            faults.point("import-labels:validated")
            with store.transaction():
                store_answers(project, file, _sha256(file), parsed.format, plan)
                faults.point("import-labels:before-commit")
            faults.point("import-labels:committed")
        answered = set(plan.answered_ids)
        pending_left = sum(1 for _, s in store.pending() if s not in answered)
        labeled_total = plan.labeled_before + plan.train_added
        notes = list(parsed.notes)
        question = suggestions_note(plan)
        if question:
            notes.append(question)
        return ImportResult(file, parsed.format, plan.added, plan.changed, plan.unchanged,
                            parsed.skipped, dry_run, pending_left, labeled_total, notes,
                            parsed.unanswered, len(plan.to_val))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------
def status(project_dir: Path | str, *, stop_kappa: float | None = None,
           stop_window: int | None = None) -> dict[str, Any]:
    """A JSON-ready summary of the project (never blocks on a writer); see
    :func:`alft_cli.summary.summarize` for its keys. ``stop_kappa`` / ``stop_window``: the
    stop rule (default: kappa >= 0.99 averaged over 3 rounds, as Bloodgood & Vijay-Shanker)."""
    from alft_cli import stopping
    from alft_cli.summary import summarize

    kappa, window = stopping.rule_options(stop_kappa, stop_window)
    with reading(project_dir) as project:
        return summarize(project, stop_kappa=kappa, stop_window=window)


# --------------------------------------------------------------------------------------------
# demo-data
# --------------------------------------------------------------------------------------------
def demo_data(out_dir: Path | str, *, n_images: int = 400, image_size: int = 64,
              imbalance: float = 1.0, seed: int = 0, bands: int | None = None,
              layout: str = "band-folder") -> Any:
    """Generate the built-in synthetic multi-label archive (see :mod:`alft_cli.synthetic`);
    with ``bands=12`` the Sentinel-2-like one (:mod:`alft_cli.synthetic_s2`) in ``layout``."""
    from alft_cli.demo import demo_archive

    with reporter().task("generating synthetic archive", total=None):
        return demo_archive(Path(out_dir), n_images=n_images, image_size=image_size,
                            imbalance=imbalance, seed=seed, bands=bands, layout=layout)


# --------------------------------------------------------------------------------------------
# pretrain
# --------------------------------------------------------------------------------------------
def pretrain(project_dir: Path | str, *, restart: bool = False,
             init_weights: Path | str | None = None, noisy_labels: Path | str | None = None,
             then: str | None = None, then_epochs: int = 100,
             **options: Any) -> PretrainResult:
    """Pretrain the backbone. Options: see :class:`~alft_cli.config.PretrainConfig`.

    ``method='byol'`` (the paper): BYOL on every indexed image, val and test included (no
    labels are used). ``method='supervised-noisy'``: BCE on ``noisy_labels`` (any classes;
    rows for val/test images are dropped), head dropped afterwards; ``then='byol'`` follows
    it with ``then_epochs`` of BYOL started from that backbone. ``init_weights`` starts from a
    supplied backbone state dict (e.g. ImageNet weights downloaded elsewhere).
    """
    from alft_cli import distributed
    from alft_cli.config import PretrainConfig, validated
    from alft_cli.data import resolve_device
    from alft_cli.models import BACKBONES
    from alft_cli.routes import pretrain_project

    cfg = validated(PretrainConfig, **options)
    if cfg.method not in ("byol", "supervised-noisy"):
        raise OptionError(f"--method {cfg.method!r}: use byol or supervised-noisy")
    if cfg.method == "supervised-noisy" and noisy_labels is None:
        raise OptionError("--method supervised-noisy needs --noisy-labels FILE")
    if cfg.method == "byol" and (noisy_labels is not None or then is not None):
        raise OptionError("--noisy-labels and --then go with --method supervised-noisy")
    if then not in (None, "byol"):
        raise OptionError(f"--then {then!r}: only byol")
    if cfg.backbone not in BACKBONES:
        raise OptionError(f"--backbone {cfg.backbone!r}: unknown; choose from "
                          f"{', '.join(sorted(BACKBONES))}")
    device = resolve_device(cfg.device)
    info = distributed.env_info()
    if info.enabled and cfg.method == "supervised-noisy":
        raise OptionError("--method supervised-noisy runs in one process (under torchrun every "
                          "rank would train the same model and write the same file): start "
                          "it without torchrun")
    args = {**cfg.model_dump(), "noisy_labels": str(noisy_labels) if noisy_labels else None,
            "then": then, "init_weights": str(init_weights) if init_weights else None}
    context = (writing(project_dir, "pretrain", args) if info.is_main
               else reading(project_dir))
    with context as project:
        return pretrain_project(project, cfg, device, restart=restart,
                                init_weights=init_weights, noisy_labels=noisy_labels,
                                then=then, then_epochs=then_epochs, is_main=info.is_main)


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """What finetune did."""

    round: int
    labeled: int
    init: str
    backbone: str
    model_file: Path | None
    metrics: dict[str, Any]
    seconds: float
    interrupted: bool
    device: str
    suggestions: dict[str, Any] | None = None
    # Agreement with the previous round on the stop set (alft_cli.stopping), or None.
    stability: dict[str, Any] | None = None


def finetune(project_dir: Path | str, *, restart: bool = False,
             **options: Any) -> FinetuneResult:
    """Fine-tune backbone + head on every labeled pool image; evaluate on val and test.

    The model belongs to the latest round. ``init='previous'`` warm-starts from the newest
    model of an earlier round (the paper's protocol), falling back to the pretrained backbone,
    then to random weights (with a warning). An interrupted run of the round is never
    discarded silently: ``resume`` continues it, ``restart`` starts over; neither is refused.
    The result carries the evidence of the last answered suggestions
    (:mod:`alft_cli.evidence`), the one measure a project without gold labels has.
    The model then predicts the project's stop set (drawn at the first fine-tuning), and the
    agreement with the previous round's predictions is stored for the stop signal
    (:mod:`alft_cli.stopping`, ``alft status``).
    """
    from alft_cli import distributed, stopping
    from alft_cli import finetune as ft
    from alft_cli.config import FinetuneConfig, validated
    from alft_cli.data import CachedImages, resolve_device
    from alft_cli.evidence import last_answered_suggestions
    from alft_cli.routes import initial_classifier

    if distributed.env_info().enabled:
        raise OptionError("finetune runs in one process (labeled sets are small): start it "
                          "without torchrun; pretrain and query use several processes")
    cfg = validated(FinetuneConfig, **options)
    if cfg.backbone is not None:
        from alft_cli.models import BACKBONES

        if cfg.backbone not in BACKBONES:
            raise OptionError(f"--backbone {cfg.backbone!r}: unknown; choose from "
                              f"{', '.join(sorted(BACKBONES))}")
    device = resolve_device(cfg.device)
    rep = reporter()
    with writing(project_dir, "finetune", cfg.model_dump()) as project:
        store = project.store
        round_ = store.current_round()
        ids, y = store.labeled_arrays()
        if round_ is None or len(ids) == 0:
            raise OptionError("no labeled pool images yet: label the to-label list and run "
                              "alft import-labels first")
        if len(ids) < 2 and not cfg.freeze_backbone:
            raise OptionError("fine-tuning needs at least 2 labeled images (BatchNorm); "
                              "import more labels")
        _check_interrupted(project, round_, cfg.resume, restart)
        model, init_used, backbone = initial_classifier(project, cfg, round_)
        if init_used == "scratch" and cfg.init != "scratch":
            rep.warn("no pretrained backbone and no earlier model: training from random "
                     "weights (run alft pretrain first for the paper's setting)")
        round_dir = project.round_dir(round_)
        round_dir.mkdir(parents=True, exist_ok=True)
        cache = CachedImages(project.cache_path)
        rep.info(f"round {round_}: fine-tuning {backbone} on {len(ids)} labels "
                 f"(init: {init_used}, {cfg.epochs} epochs, device {device})")
        outcome = ft.train(model, cache, ids, y, cfg, round_dir, device)
        if outcome.interrupted:
            return FinetuneResult(round_, len(ids), init_used, backbone, None, {},
                                  outcome.seconds, True, str(device))
        faults.point("finetune:trained")
        eval_sets = {split: store.gold(split) for split in ("val", "test")}
        metrics = ft.evaluate(model, cache, eval_sets, project.classes, device,
                              cfg.eval_batch_size)
        metrics["train_loss"] = outcome.final_loss
        # The stop signal: the same evaluation pass over the fixed stop set, compared with
        # the previous round's stored predictions (no pass at query time).
        stop = stopping.prepare_round(
            store, round_, project.config.seed, len(project.classes),
            lambda stop_ids: ft.predict(model, cache, stop_ids, device, cfg.eval_batch_size,
                                        "predicting the stop set"))
        model_file = round_dir / ft.MODEL_FILE
        train_config = {**cfg.model_dump(), "init_used": init_used, "backbone": backbone}
        ft.save_model(model, model_file, {
            "classes": project.classes, "image_size": project.config.image_size,
            "round": round_, "trained_on": int(len(ids)), "metrics": _headline(metrics),
            "train_config": json.dumps(train_config)})
        with atomic_open(round_dir / "metrics.json") as handle:
            json.dump({"round": round_, "labeled": int(len(ids)), **metrics}, handle, indent=2)
        faults.point("finetune:model-saved")
        with store.transaction():
            store.set_round_model(round_, project.relative(model_file), int(len(ids)),
                                  metrics, train_config)
            if stop is not None:
                stop.save(store)
        (round_dir / ft.FINETUNE_CHECKPOINT).unlink(missing_ok=True)
        evidence = last_answered_suggestions(project, minimum=1)
        return FinetuneResult(round_, len(ids), init_used, backbone, model_file, metrics,
                              outcome.seconds, False, str(device),
                              evidence.as_dict() if evidence else None,
                              stop.stability if stop is not None else None)


def _check_interrupted(project: Project, round_: int, resume: bool, restart: bool) -> None:
    """Refuse to drop an interrupted fine-tuning without being told (``restart``)."""
    checkpoint = project.finetune_checkpoint(round_)
    where = project.relative(checkpoint)
    if resume and restart:
        raise OptionError("--resume continues the interrupted fine-tuning, --restart drops "
                          "it; give one of them")
    if checkpoint.exists() and not (resume or restart):
        raise OptionError(f"round {round_}'s fine-tuning was interrupted ({where}): --resume "
                          "continues it, --restart starts over (and replaces it)")
    if resume and not checkpoint.exists():
        raise OptionError(f"--resume: round {round_} has no interrupted fine-tuning to "
                          f"continue ({where} does not exist)")
    if restart:
        checkpoint.unlink(missing_ok=True)


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for split in ("val", "test"):
        for key in ("micro_f1", "macro_f1", "mAP"):
            if split in metrics:
                flat[f"{split}_{key}"] = float(metrics[split][key])
    return flat


# --------------------------------------------------------------------------------------------
# query
# --------------------------------------------------------------------------------------------
@dataclass
class QueryResult:
    """What query did."""

    round: int
    strategy: str
    query_file: Path
    selected: int
    budget: int
    candidates: int
    model_round: int | None
    label_studio_files: list[Path]
    cancelled: int
    notes: list[str] = field(default_factory=list)


def query(project_dir: Path | str, *, budget: int, strategy: str = "auto",
          candidates: int | None = None, seed: int = 0, out: Path | str | None = None,
          fmt: str = "csv", force: bool = False, device: str = "auto",
          batch_size: int = 64, image_url_prefix: str | None = None,
          document_root: Path | str | None = None,
          preview_bands: str | Sequence[str] | None = None) -> QueryResult | None:
    """Choose ``budget`` unlabeled pool images to label next; write the query file.

    One inference pass over the unlabeled pool gives features h and probabilities p; the
    strategy (a pure function of them, see :mod:`alft_cli.strategies`) picks the images.
    Under torchrun every rank scores a shard of the pool; only rank 0 selects and writes
    (the other ranks return None). A multi-band project also gets an RGB quicklook PNG per
    queried sample in ``quicklooks/`` next to the query file (true colour, or
    ``preview_bands``); the query file and the Label Studio tasks point to them.
    """
    from alft_cli import distributed
    from alft_cli.data import resolve_device
    from alft_cli.draws import round_seed
    from alft_cli.scoring import choose, rank_device
    from alft_cli.strategies import NEEDS_MODEL, STRATEGIES

    if budget < 1:
        raise OptionError(f"--budget {budget}: must be at least 1")
    if strategy not in STRATEGIES:
        raise OptionError(f"--strategy {strategy!r}: unknown; choose from "
                          f"{', '.join(sorted(STRATEGIES))}")
    if candidates is not None and candidates <= budget:
        raise OptionError(f"--candidates {candidates} must be larger than --budget {budget}")
    if fmt not in ("csv", "label-studio"):
        raise OptionError(f"--format {fmt!r}: use csv or label-studio")
    args = {"budget": budget, "strategy": strategy, "candidates": candidates, "seed": seed,
            "out": str(out) if out else None, "format": fmt, "force": force}
    if preview_bands is not None:
        args["preview_bands"] = preview_bands
    notes: list[str] = []
    info = distributed.env_info()
    # Under torchrun every rank scores a shard of the pool; rank 0 owns the project.
    context = writing(project_dir, "query", args) if info.is_main else reading(project_dir)
    with context as project:
        store = project.store
        pending = store.pending()
        if pending and not force:
            rounds_pending = sorted({r for r, _ in pending})
            raise OptionError(
                f"{len(pending)} images queried in round {rounds_pending[-1]} are still "
                "pending (see alft status): import their labels first, or use --force to "
                "cancel them (they go back to the unlabeled pool)")
        raster = project.config.raster
        if preview_bands is not None:
            if raster is None:
                raise OptionError("--preview-bands is for multi-band projects; the images of "
                                  "this one are shown as they are")
            from alft_cli.quicklooks import preview_bands as check_preview

            check_preview(raster.band_names, preview_bands)
        labeled = set(store.labels())
        pool = store.sample_ids("pool")
        unlabeled = np.array([s for s in pool if int(s) not in labeled], dtype=np.int64)
        if len(unlabeled) == 0:
            raise OptionError("every pool image is labeled; nothing left to query")
        if budget > len(unlabeled):
            notes.append(f"only {len(unlabeled)} unlabeled pool images are left; the query "
                         f"holds all of them (asked for {budget})")
        rounds = store.rounds()
        model_rec = next((r for r in reversed(rounds) if r.model_file), None)
        if strategy in NEEDS_MODEL and model_rec is None:
            raise OptionError(f"--strategy {strategy} needs a trained model: run alft "
                              "finetune first (or use --strategy random, kmeans or typiclust)")
        if fmt == "label-studio":  # an unusable document root is refused before scoring
            image_url_function(project.archive, prefix=image_url_prefix, root=document_root)
        if model_rec is not None and len(labeled) > (model_rec.trained_on or 0):
            notes.append(f"the model of round {model_rec.round} chooses, trained on "
                         f"{model_rec.trained_on} labels: the "
                         f"{len(labeled) - (model_rec.trained_on or 0)} labeled since are not "
                         "in it (run alft finetune first to choose with them)")
        current = store.current_round()
        cur_rec = store.round(current) if current is not None else None
        # A round whose query nobody answered yet (no labels, no model) is replaced rather
        # than followed, so cancelling and re-querying does not leave empty rounds behind.
        reuse = (cur_rec is not None and cur_rec.model_file is None
                 and current not in set(store.label_rounds().values()))
        new_round = current if reuse else (0 if current is None else current + 1)
        dev = rank_device(resolve_device(device))
        # Every draw of a round comes from (seed, round): the same command in the next round
        # draws afresh, the same round with the same seed repeats its query.
        choice = choose(project, model_rec, strategy, unlabeled, labeled, budget, candidates,
                        round_seed(seed, new_round), dev, batch_size, new_round)
        if choice is None:
            return None  # a torchrun rank other than 0: it only helped score the pool
        notes += choice.notes
        chosen = choice.ids

        query_path = Path(out) if out else fresh_path(project.round_dir(new_round) /
                                                       "query.csv")
        keys = store.keys_by_id()
        quick: dict[str, str] = {}
        if raster is not None:
            from alft_cli import quicklooks

            quick = quicklooks.for_query(project, [int(s) for s in chosen],
                                         [keys[int(s)] for s in chosen],
                                         query_path.parent / quicklooks.FOLDER, preview_bands)
        rows = [QueryRow(keys[int(s)], rank + 1, float(choice.scores[rank]),
                         int(choice.clusters[rank]),
                         None if choice.probabilities is None
                         else choice.probabilities[rank].tolist(),
                         quick.get(keys[int(s)]))
                for rank, s in enumerate(chosen)]
        write_query_csv(query_path, rows, project.classes)
        faults.point("query:file-written")
        ls_files: list[Path] = []
        if fmt == "label-studio":
            ls_files = write_label_studio_files(
                query_path, rows, project.classes, project.archive,
                f"alft-r{model_rec.round}" if model_rec else "alft", round_=new_round,
                image_url_prefix=image_url_prefix, root=document_root, project_dir=project.root)
        with store.transaction():
            cancelled = store.cancel_pending() if force else 0
            if reuse:
                store.delete_round_queries(new_round)
                store.replace_round_query(new_round, strategy, len(chosen), seed,
                                          model_rec.round if model_rec else None,
                                          project.relative(query_path))
            else:
                store.add_round(new_round, strategy, len(chosen), seed,
                                model_rec.round if model_rec else None,
                                project.relative(query_path))
            store.add_query(new_round, ((int(s), i + 1, float(choice.scores[i]),
                                         int(choice.clusters[i]))
                                        for i, s in enumerate(chosen)))
            store.save_auto_decision(new_round, *(choice.auto or (None, None)))
            faults.point("query:before-commit")
        if cancelled:
            notes.append(f"cancelled {cancelled} pending images of the earlier query; they "
                         "are back in the unlabeled pool")
        return QueryResult(new_round, strategy, query_path, len(chosen), budget,
                           len(unlabeled), model_rec.round if model_rec else None, ls_files,
                           cancelled, notes)


# --------------------------------------------------------------------------------------------
# exclude (take pool images out of play) and adopt-pretrained (share one BYOL backbone)
# --------------------------------------------------------------------------------------------
def exclude_samples(project_dir: Path | str, keys: Sequence[str]) -> int:
    """Take unlabeled pool images out of play (never queried, trained on or evaluated).

    Used by simulate's imbalance scenarios; labeled, pending or val/test images are refused.
    Returns how many were excluded.
    """
    with writing(project_dir, "exclude", {"n": len(keys)}) as project:
        store = project.store
        ids = store.ids_by_key()
        splits = store.split_of()
        labeled = set(store.labels())
        pending = {s for _, s in store.pending()}
        problems = []
        chosen = []
        for key in keys:
            sid = ids.get(key)
            if sid is None:
                problems.append(f"{key}: not an image of this project")
            elif splits[sid] != "pool" or sid in labeled or sid in pending:
                problems.append(f"{key}: only unlabeled, unqueried pool images can be excluded")
            else:
                chosen.append(sid)
        if problems:
            raise OptionError(f"{len(problems)} images cannot be excluded; nothing changed",
                              details=problems[:50])
        with store.transaction():
            store.set_split(chosen, "excluded")
        return len(chosen)


def adopt_pretrained(project_dir: Path | str, source_project: Path | str) -> dict[str, Any]:
    """Use another project's pretrained backbone (same archive) instead of pretraining again.

    simulate pretrains once and lets every run project adopt that backbone.
    """
    with reading(source_project) as src:
        meta = json.loads(src.store.get_meta("pretrained") or "null")
        if meta is None:
            raise OptionError(f"{source_project} has no pretrained backbone")
        meta = {**meta, "file": str(src.resolve(meta["file"]).resolve()),
                "adopted_from": str(Path(source_project).resolve())}
        source_archive = src.config.archive
    with writing(project_dir, "adopt-pretrained", {"source": str(source_project)}) as project:
        if project.config.archive != source_archive:
            raise OptionError(f"{source_project} indexes another archive")
        with project.store.transaction():
            project.store.set_meta("pretrained", json.dumps(meta))
    return meta


def labels_from_bigearthnet(archive: Path | str, out: Path | str, *, nomenclature: int = 43,
                            metadata: Path | str | None = None) -> Any:
    """Write the one-hot gold file of a BigEarthNet archive (keys = patch folders as
    init-pool makes them) from its per-patch label JSONs (v1) or its ``metadata.parquet``
    (v2); ``nomenclature=19`` applies the published 43 -> 19 class mapping.

    Returns:
        The :class:`~alft_cli.bigearthnet.BigEarthNetLabels` written (its ``notes`` report
        patches without labels and patches whose labels all map to nothing).
    """
    from alft_cli.bigearthnet import write_gold

    found = write_gold(Path(archive), Path(out), nomenclature,
                       Path(metadata) if metadata is not None else None)
    for note in found.notes:
        reporter().warn(note)
    return found


# --------------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------------
def doctor(project_dir: Path | str, *, verify_hashes: bool = False) -> DoctorReport:
    """Check a project without changing anything: files, cache, labels, rounds, artifacts."""
    from alft_cli.checks import check_project

    with reading(project_dir) as project:
        return check_project(project, verify_hashes=verify_hashes)


def relocate(project_dir: Path | str, new_archive: Path | str) -> Any:
    """Point the project at its archive's new place (a folder, or the manifest CSV it was
    indexed from), after checking every indexed image is there with the size and SHA-256
    recorded at indexing; otherwise refuse and change nothing (:mod:`alft_cli.relocate`)."""
    from alft_cli.relocate import relocate_project

    with writing(project_dir, "relocate", {"archive": str(new_archive)}) as project:
        return relocate_project(project, Path(new_archive))


# --------------------------------------------------------------------------------------------
# export and tag
# --------------------------------------------------------------------------------------------
def export(project_dir: Path | str, *, round_: int | None = None, out: Path | str | None = None,
           calibrate_thresholds: bool = False, device: str = "cpu") -> Any:
    """Export a round's classifier to one self-contained ONNX file (sigmoid outputs, metadata
    for consumers), checked with onnx.checker and an onnxruntime-vs-torch parity check.

    Read-only for the project: the ONNX file is written atomically under ``exports/`` (or
    ``out``), so no lock is needed and a kill leaves no partial file.
    """
    from alft_cli.export import export_project

    with reading(project_dir) as project:
        return export_project(project, round_=round_, out=Path(out) if out else None,
                              calibrate_thresholds=calibrate_thresholds, device=device)


def tag(model: Path | str, archive: Path | str, *, out: Path | str, fmt: str | None = None,
        device: str = "auto", shard: str | None = None, resume: bool = False,
        batch_size: int = 32, workers: int | None = None, threads: int | None = None,
        overwrite: bool = False) -> Any:
    """Tag every image of an archive with an exported model (no project needed). ``fmt``
    None: from ``out``'s extension. ``resume`` continues an output of the same model only;
    ``overwrite`` replaces an existing one."""
    from alft_cli.tag import tag_archive

    return tag_archive(Path(model), Path(archive), Path(out), fmt=fmt, device=device,
                       shard=shard, resume=resume, batch_size=batch_size, workers=workers,
                       threads=threads, overwrite=overwrite)
