"""The library's face: one function per command. The round bookkeeping lives here only.

The CLI parses options and calls exactly one of these; ``simulate`` drives rounds through the
same functions, so a simulated round is a real round. Notebook users import this module.

Rounds: round 0 is the initial (random) to-label list written by :func:`init_pool`. Labels
imported for a queried sample belong to the round of that query. :func:`finetune` trains the
model of the latest round on every label present; :func:`query` uses the latest trained model
to open the next round.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alft_cli import __version__, faults
from alft_cli.atomic import atomic_open
from alft_cli.config import ProjectConfig, check_class_names, parse_class_list
from alft_cli.errors import ArchiveError, LabelFileError, OptionError, ProjectError
from alft_cli.images import ScanResult, create_cache, decode_many, scan_folder, scan_manifest
from alft_cli.labels import QueryRow, header_classes, match_keys, read_label_file, write_query_csv
from alft_cli.progress import reporter
from alft_cli.project import Project, open_project, project_lock
from alft_cli.store import SampleRecord, Store, decode_y, encode_y, now_iso

PAPER_VAL_FRACTION = 0.25
PAPER_TEST_FRACTION = 0.25
PAPER_INITIAL = 40


# --------------------------------------------------------------------------------------------
# command plumbing
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _writing(project_dir: Path | str, command: str, args: dict[str, Any]) -> Iterator[Project]:
    """Lock the project, open it, and record the command in the runs table."""
    root = Path(project_dir)
    if not (root / "config.json").exists():
        open_project(root).close()  # raises the precise "not a project" error
    with project_lock(root, command):
        project = open_project(root)
        try:
            with project.store.transaction():
                run_id = project.store.start_run(command, args)
            status = "failed"
            try:
                yield project
                status = "ok"
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                with project.store.transaction():
                    project.store.finish_run(run_id, status)
        finally:
            project.close()


@contextlib.contextmanager
def _reading(project_dir: Path | str) -> Iterator[Project]:
    project = open_project(project_dir, readonly=True)
    try:
        yield project
    finally:
        project.close()


# --------------------------------------------------------------------------------------------
# init-pool
# --------------------------------------------------------------------------------------------
@dataclass
class InitPoolResult:
    """What init-pool did."""

    project: Path
    indexed: int
    skipped: int
    splits: dict[str, int]
    classes: list[str]
    query_file: Path | None
    initial: int
    seconds: float
    skipped_file: Path | None = None
    notes: list[str] = field(default_factory=list)


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
    in_channels: int = 3,
    seed: int = 0,
    workers: int | None = None,
    index_from: Path | str | None = None,
) -> InitPoolResult:
    """Index an archive into a new project: splits, decode cache, initial to-label list.

    Gold labels from ``labels_file`` are kept for val and test samples only (evaluation);
    pool samples get labels only through :func:`import_labels`. Without gold labels there is
    nothing to evaluate against, so val/test default to empty. ``index_from`` (another
    project over the same archive) reuses its index and decode cache instead of decoding.
    """
    import time

    started = time.perf_counter()
    archive = Path(archive)
    root = Path(project_dir)
    _check_new_project_dir(root)
    class_list = _resolve_classes(classes, labels_file)
    has_gold = labels_file is not None
    val_fraction = _default(val_fraction, PAPER_VAL_FRACTION if has_gold else 0.0)
    test_fraction = _default(test_fraction, PAPER_TEST_FRACTION if has_gold else 0.0)
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
        raise OptionError("--val-fraction and --test-fraction must be in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise OptionError("--val-fraction + --test-fraction must leave a pool (sum < 1)")
    if (val_fraction or test_fraction) and not has_gold:
        raise OptionError("val/test splits need gold labels to evaluate against: "
                          "give --labels FILE, or set --val-fraction 0 --test-fraction 0")
    if initial < 0:
        raise OptionError("--initial must be >= 0")
    if not 16 <= image_size <= 4096:
        raise OptionError("--image-size must be between 16 and 4096")

    if index_from is not None:
        archive_root, scan, manifest = archive.resolve(), None, None
    else:
        archive_root, scan, manifest = _scan_archive(archive)
    if scan is not None and not scan.keys:
        raise ArchiveError(f"{archive}: no images found (.tif/.tiff/.png/.jpg/.jpeg)"
                           + (f"; {len(scan.skipped)} unusable" if scan.skipped else ""))

    tmp_root = Path(tempfile.mkdtemp(prefix=".alft-init-", dir=root.parent))
    try:
        result = _build_project(
            tmp_root, archive_root, manifest, scan, class_list, labels_file, val_fraction,
            test_fraction, initial, image_size, in_channels, seed, workers,
            Path(index_from) if index_from is not None else None)
        _move_into_place(tmp_root, root)
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    result.project = root
    if result.query_file is not None:
        result.query_file = root / result.query_file.relative_to(tmp_root)
    if result.skipped_file is not None:
        result.skipped_file = root / result.skipped_file.relative_to(tmp_root)
    result.seconds = time.perf_counter() - started
    return result


def _default(value: float | None, fallback: float) -> float:
    return fallback if value is None else float(value)


def _check_new_project_dir(root: Path) -> None:
    if root.exists():
        if not root.is_dir():
            raise ProjectError(f"{root} exists and is not a folder")
        if (root / "config.json").exists():
            raise ProjectError(f"{root} is already an alft project; choose a new folder")
        if any(root.iterdir()):
            raise ProjectError(f"{root} exists and is not empty; choose a new or empty folder")
    if not root.parent.exists():
        raise ProjectError(f"parent folder {root.parent} does not exist")


def _move_into_place(tmp_root: Path, root: Path) -> None:
    # rename() onto an empty folder is atomic: the project appears whole or not at all.
    if root.exists():
        root.rmdir()
    tmp_root.rename(root)


def _resolve_classes(classes: Sequence[str] | str | None,
                     labels_file: Path | str | None) -> list[str]:
    from_file = header_classes(Path(labels_file)) if labels_file is not None else None
    if isinstance(classes, str):
        classes = parse_class_list(classes)
    if classes and from_file:
        if [c.lower() for c in classes] != [c.lower() for c in from_file]:
            raise OptionError(f"--classes differs from the classes in {labels_file} "
                              f"({', '.join(from_file)}); give one of them")
    resolved = list(classes or from_file or [])
    if not resolved:
        raise OptionError("give the classes: --classes a,b,c or --labels FILE")
    return check_class_names(resolved, "--classes" if classes else str(labels_file))


def _scan_archive(archive: Path) -> tuple[Path, ScanResult, Path | None]:
    if not archive.exists():
        raise ArchiveError(f"archive {archive} does not exist")
    if archive.is_dir():
        return archive.resolve(), scan_folder(archive), None
    if archive.suffix.lower() == ".csv":
        return archive.parent.resolve(), scan_manifest(archive, strict=True), archive.resolve()
    raise ArchiveError(f"{archive}: give a folder of images or a manifest CSV with a "
                       "'filename' column")


def _build_project(
    tmp_root: Path, archive_root: Path, manifest: Path | None, scan: ScanResult | None,
    classes: list[str], labels_file: Path | str | None, val_fraction: float,
    test_fraction: float, initial: int, image_size: int, in_channels: int, seed: int,
    workers: int | None, index_from: Path | None = None,
) -> InitPoolResult:
    (tmp_root / "cache").mkdir()
    if index_from is not None:
        records, skipped, mean, std = _reuse_index(tmp_root, index_from, archive_root,
                                                   image_size, in_channels)
    else:
        assert scan is not None
        records, skipped, mean, std = _index_archive(tmp_root, archive_root, scan, image_size,
                                                     in_channels, workers)
    gold: dict[int, str] = {}
    notes: list[str] = []
    if labels_file is not None:
        gold, gold_notes = _read_gold(Path(labels_file), classes, records, skipped)
        notes += gold_notes

    rng = np.random.default_rng(seed)
    splits = _assign_splits(records, gold, val_fraction, test_fraction, rng)
    config = ProjectConfig(
        archive=str(archive_root), manifest=str(manifest) if manifest else None,
        classes=classes, image_size=image_size, in_channels=in_channels, seed=seed,
        val_fraction=val_fraction, test_fraction=test_fraction, initial=initial,
        mean=mean, std=std,
        created_at=now_iso(),
    )
    config.save(tmp_root / "config.json")
    store = Store.create(tmp_root / Store.FILENAME)
    project = Project(tmp_root, config, store)
    query_path: Path | None = None
    try:
        with store.transaction():
            store.set_meta("alft_version", __version__)
            store.add_samples((row, rec, splits[row]) for row, rec in records)
            store.add_skipped(skipped)
            store.set_gold((row, y) for row, y in gold.items() if splits[row] != "pool")
            pool_ids = np.array([row for row, _ in records if splits[row] == "pool"])
            n_initial = min(initial, len(pool_ids))
            if n_initial < initial:
                notes.append(f"the pool has only {len(pool_ids)} images; initial set is "
                             f"{n_initial}")
            if n_initial > 0:
                chosen = rng.choice(pool_ids, size=n_initial, replace=False)
                query_path = project.round_dir(0) / "query.csv"
                keys = dict((row, rec.key) for row, rec in records)
                write_query_csv(query_path, [QueryRow(keys[int(s)], i + 1, 0.0, -1, None)
                                             for i, s in enumerate(chosen)], classes)
                store.add_round(0, "random", n_initial, seed, None,
                                project.relative(query_path))
                store.add_query(0, ((int(s), i + 1, None, None) for i, s in enumerate(chosen)))
            # The project appears by an atomic rename once complete: its run is finished here.
            store.finish_run(store.start_run("init-pool", {"archive": str(archive_root),
                                                           "seed": seed}), "ok")
    finally:
        store.close()
    skipped_file = None
    if skipped:
        skipped_file = tmp_root / "skipped.csv"
        _write_skipped(skipped_file, skipped)
    counts = {s: sum(1 for v in splits.values() if v == s) for s in ("pool", "val", "test")}
    return InitPoolResult(tmp_root, len(records), len(skipped), counts, classes, query_path,
                          n_initial if records else 0, 0.0, skipped_file, notes)


def _index_archive(tmp_root: Path, archive_root: Path, scan: ScanResult, image_size: int,
                   in_channels: int, workers: int | None
                   ) -> tuple[list[tuple[int, SampleRecord]], list[tuple[str, str]], list[float],
                              list[float]]:
    """Decode every candidate into the cache; collect records, skips and channel stats."""
    cache = create_cache(tmp_root / "cache" / "images.npy", len(scan.keys), in_channels,
                         image_size)
    records: list[tuple[int, SampleRecord]] = []
    skipped = list(scan.skipped)
    # Per-channel running sums for the normalization statistics (float64: no overflow).
    total = np.zeros(in_channels)
    total_sq = np.zeros(in_channels)
    with reporter().task("decoding archive", total=len(scan.keys)) as task:
        for row, item in enumerate(decode_many(archive_root, scan.keys, image_size, in_channels,
                                               workers)):
            task.advance(1)
            if item.decoded is None:
                skipped.append((item.key, item.reason or "unreadable"))
                continue
            array = item.decoded.array
            cache[row] = array.transpose(2, 0, 1)
            pixels = array.reshape(-1, in_channels).astype(np.float64)
            total += pixels.sum(0)
            total_sq += (pixels ** 2).sum(0)
            records.append((row, SampleRecord(item.key, item.size, item.mtime_ns, item.sha256,
                                              item.decoded.width, item.decoded.height,
                                              item.decoded.note)))
    cache.flush()
    del cache
    if not records:
        raise ArchiveError(f"{archive_root}: none of the {len(scan.keys)} images could be "
                           f"decoded (e.g. {skipped[0][0]}: {skipped[0][1]})")
    n_pixels = len(records) * image_size * image_size
    mean = total / n_pixels
    std = np.sqrt(np.maximum(total_sq / n_pixels - mean ** 2, 1e-6))
    return records, skipped, [float(m) for m in mean / 255.0], [float(v) for v in std / 255.0]


def _reuse_index(tmp_root: Path, source: Path, archive_root: Path, image_size: int,
                 in_channels: int
                 ) -> tuple[list[tuple[int, SampleRecord]], list[tuple[str, str]], list[float],
                            list[float]]:
    """Share another project's index and decode cache (same archive and size): simulate
    makes one project per run without decoding the archive again."""
    import os

    src = open_project(source, readonly=True)
    try:
        cfg = src.config
        if (Path(cfg.archive) != archive_root or cfg.image_size != image_size
                or cfg.in_channels != in_channels):
            raise OptionError(f"{source} indexes another archive or image size")
        records = [(row, rec) for row, rec, _ in src.store.sample_records()]
        skipped = src.store.skipped()
        target = tmp_root / "cache" / "images.npy"
        try:
            os.link(src.cache_path, target)
        except OSError:  # another file system: a symlink works as well for reading
            os.symlink(src.cache_path.resolve(), target)
        return records, skipped, list(cfg.mean), list(cfg.std)
    finally:
        src.close()


def _read_gold(path: Path, classes: list[str], records: list[tuple[int, SampleRecord]],
               skipped: list[tuple[str, str]]) -> tuple[dict[int, str], list[str]]:
    parsed = read_label_file(path, classes, fmt="auto")
    ids = {rec.key: row for row, rec in records}
    skipped_keys = {k for k, _ in skipped}
    mapping, unmatched = match_keys([r.ref for r in parsed.rows], ids.keys())
    problems = []
    gold: dict[int, str] = {}
    ignored = 0
    for label_row in parsed.rows:
        key = mapping.get(label_row.ref)
        if key is None:
            if label_row.ref in skipped_keys:
                ignored += 1
                continue
            problems.append(f"{path.name} {label_row.where}: {label_row.ref} is not an "
                            "indexed image of the archive")
            continue
        gold[ids[key]] = encode_y(label_row.labels)
    if problems:
        raise LabelFileError(f"{path}: {len(problems)} rows name files not in the archive; "
                             "nothing was created", details=problems[:50])
    notes = [f"{ignored} gold-label rows are for skipped images"] if ignored else []
    unlabeled = len(records) - len(gold)
    if unlabeled:
        notes.append(f"{unlabeled} images have no gold label; they go to the pool")
    return gold, notes


def _assign_splits(records: list[tuple[int, SampleRecord]], gold: dict[int, str],
                   val_fraction: float, test_fraction: float,
                   rng: np.random.Generator) -> dict[int, str]:
    rows = np.array([row for row, _ in records])
    eligible = rng.permutation(np.array([r for r in rows if r in gold], dtype=np.int64))
    n_val = min(int(round(val_fraction * len(rows))), len(eligible))
    n_test = min(int(round(test_fraction * len(rows))), len(eligible) - n_val)
    splits = dict.fromkeys((int(r) for r in rows), "pool")
    for r in eligible[:n_val]:
        splits[int(r)] = "val"
    for r in eligible[n_val:n_val + n_test]:
        splits[int(r)] = "test"
    return splits


def _write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["filename", "reason"])
        writer.writerows(sorted(skipped))


# --------------------------------------------------------------------------------------------
# import-labels
# --------------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    """What import-labels did (or would do, with dry_run)."""

    file: Path
    format: str
    added: int
    changed: int
    unchanged: int
    not_labels: int
    dry_run: bool
    pending_left: int
    labeled_total: int
    notes: list[str] = field(default_factory=list)


def import_labels(project_dir: Path | str, file: Path | str, *, fmt: str = "auto",
                  overwrite: bool = False, dry_run: bool = False) -> ImportResult:
    """Validate every row of a label file, then import all of it in one transaction.

    Any problem (unknown file or class, duplicate, non-0/1 value, val/test sample, conflict
    with an existing label without ``overwrite``) refuses the whole file with one line per
    problem; nothing is written. Importing the same content twice changes nothing.
    """
    file = Path(file)
    args = {"file": str(file), "format": fmt, "overwrite": overwrite, "dry_run": dry_run}
    context = _reading(project_dir) if dry_run else _writing(project_dir, "import-labels", args)
    with context as project:
        store = project.store
        parsed = read_label_file(file, project.classes, fmt=fmt)
        ids = store.ids_by_key()
        splits = store.split_of()
        skipped = dict(store.skipped())
        mapping, unmatched = match_keys([r.ref for r in parsed.rows], ids.keys())
        existing = store.labels()
        pending_round = store.pending_round_of()
        current = store.current_round()
        problems: list[str] = []
        new: list[tuple[int, str, int]] = []
        changed = unchanged = 0
        for row in parsed.rows:
            where = f"{file.name} {row.where}"
            key = mapping.get(row.ref)
            if key is None:
                if row.ref in skipped:
                    problems.append(f"{where}: {row.ref} was skipped at indexing "
                                    f"({skipped[row.ref]})")
                else:
                    problems.append(f"{where}: {row.ref} is not an image of this project")
                continue
            sample = ids[key]
            if splits[sample] != "pool":
                problems.append(f"{where}: {key} is a {splits[sample]} sample; only pool "
                                "samples take imported labels")
                continue
            y = encode_y(row.labels)
            old = existing.get(sample)
            if old == y:
                unchanged += 1
                continue
            if old is not None and not overwrite:
                problems.append(f"{where}: {key} already labeled "
                                f"[{_names(old, project.classes)}], file says "
                                f"[{_names(y, project.classes)}]; use --overwrite to replace")
                continue
            if old is not None:
                changed += 1
            round_ = pending_round.get(sample, current if current is not None else 0)
            new.append((sample, y, round_))
        if problems:
            raise LabelFileError(
                f"{file}: {len(problems)} problem{'s' if len(problems) != 1 else ''}; "
                "nothing was imported", details=problems[:50] + (
                    [f"... and {len(problems) - 50} more"] if len(problems) > 50 else []))
        added = len(new) - changed
        if new and not dry_run:
            faults.point("import-labels:validated")
            with store.transaction():
                if current is None:
                    # Labels before any query (an existing labeled subset): open round 0.
                    store.add_round(0, "imported", 0, project.config.seed, None, None)
                import_id = store.add_import(str(file.resolve()), _sha256(file), parsed.format,
                                             added, changed, unchanged)
                store.upsert_labels((s, y, r, import_id) for s, y, r in new)
                store.mark_labeled(s for s, _, _ in new)
                faults.point("import-labels:before-commit")
            faults.point("import-labels:committed")
        labeled_ids = {s for s, _, _ in new}
        pending_left = sum(1 for _, s in store.pending() if s not in labeled_ids)
        labeled_total = len(existing) + added
        return ImportResult(file, parsed.format, added, changed, unchanged, parsed.skipped,
                            dry_run, pending_left, labeled_total, list(parsed.notes))


def _names(y: str, classes: Sequence[str]) -> str:
    return ";".join(c for c, v in zip(classes, y) if v == "1")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------
def status(project_dir: Path | str) -> dict[str, Any]:
    """A JSON-ready summary of the project (never blocks on a writer)."""
    with _reading(project_dir) as project:
        store = project.store
        keys = store.keys_by_id()
        label_ids, label_y = store.labeled_arrays()
        label_rounds = store.label_rounds()
        pending = store.pending()
        rounds = []
        for rec in store.rounds():
            labeled_in_round = sum(1 for r in label_rounds.values() if r <= rec.round)
            rounds.append({
                "round": rec.round,
                "labeled": rec.trained_on if rec.trained_on is not None else labeled_in_round,
                "strategy": rec.strategy,
                "metrics": rec.metrics or {},
                "queried": rec.budget,
                "pending": sum(1 for r, _ in pending if r == rec.round),
                "query_file": rec.query_file,
                "model": rec.model_file,
                "model_round": rec.model_round,
                "created_at": rec.created_at,
                "trained_at": rec.trained_at,
            })
        class_counts = (label_y.sum(0).astype(int).tolist() if len(label_ids)
                        else [0] * len(project.classes))
        pretrained = store.get_meta("pretrained")
        info = {
            "project": str(project.root),
            "alft_version": __version__,
            "archive": project.config.archive,
            "classes": project.classes,
            "image_size": project.config.image_size,
            "splits": store.split_counts(),
            "labeled": len(label_ids),
            "pending": [keys[s] for _, s in pending],
            "skipped": len(store.skipped()),
            "class_counts": dict(zip(project.classes, class_counts)),
            "rounds": rounds,
            "pretrained": json.loads(pretrained) if pretrained else None,
            "next": _next_step(project, len(label_ids), pending, rounds, pretrained),
        }
        return info


def _next_step(project: Project, labeled: int, pending: list, rounds: list[dict],
               pretrained: str | None) -> str:
    p = str(project.root)
    if pending:
        first = rounds[-1]["query_file"] if rounds else None
        return (f"label the {len(pending)} pending images"
                + (f" listed in {first}" if first else "")
                + f", then: alft import-labels FILE -p {p}")
    if pretrained is None and labeled == 0:
        return f"alft pretrain -p {p}   (or import labels for the initial set)"
    if rounds and rounds[-1]["model"] is None and labeled:
        return f"alft finetune -p {p}"
    if labeled:
        return f"alft query -p {p} --budget 20"
    return f"alft query -p {p} --budget 20 --strategy kmeans"


# --------------------------------------------------------------------------------------------
# demo-data
# --------------------------------------------------------------------------------------------
def demo_data(out_dir: Path | str, *, n_images: int = 400, image_size: int = 64,
              imbalance: float = 1.0, seed: int = 0) -> Any:
    """Generate the built-in synthetic multi-label archive (see :mod:`alft_cli.synthetic`)."""
    from alft_cli.synthetic import generate_archive

    if n_images < 1:
        raise OptionError("--n-images must be >= 1")
    if image_size < 16:
        raise OptionError("--image-size must be >= 16")
    if imbalance < 1:
        raise OptionError("--imbalance must be >= 1 (1 = natural frequencies)")
    out = Path(out_dir)
    if (out / "labels.csv").exists() or (out / "images").exists():
        raise OptionError(f"{out} already holds an archive; choose a new folder")
    with reporter().task("generating synthetic archive", total=None):
        return generate_archive(out, n_images=n_images, image_size=image_size, seed=seed,
                                imbalance=imbalance, formats=("png", "jpg", "tif"))


# --------------------------------------------------------------------------------------------
# pretrain
# --------------------------------------------------------------------------------------------
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
    from alft_cli.pretrain import BACKBONE, CHECKPOINT, run_pretrain

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
    args = {**cfg.model_dump(), "noisy_labels": str(noisy_labels) if noisy_labels else None,
            "then": then, "init_weights": str(init_weights) if init_weights else None}
    context = (_writing(project_dir, "pretrain", args) if info.is_main
               else _reading(project_dir))
    with context as project:
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
        outcome = run_pretrain(project.cache_path, ids, out_dir, cfg, project.config.mean,
                               project.config.std, device, init_backbone=init_state)
        if info.is_main and not outcome.interrupted:
            _record_pretrained(project, cfg, method, epochs, out_dir / BACKBONE,
                               outcome.final_loss, outcome.seconds, device, init_weights,
                               noisy_labels, notes, images=int(len(ids)))
        return PretrainResult(cfg.backbone, outcome.backbone_file, outcome.epochs_done,
                              cfg.epochs, outcome.final_loss, outcome.seconds,
                              outcome.images_per_second, outcome.interrupted, str(device))


SUPERVISED_BACKBONE = "backbone_supervised.pt"


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
                            device=cfg.device)
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


def finetune(project_dir: Path | str, **options: Any) -> FinetuneResult:
    """Fine-tune backbone + head on every labeled pool image; evaluate on val and test.

    The model belongs to the latest round. ``init='previous'`` warm-starts from the newest
    model of an earlier round (the paper's protocol), falling back to the pretrained backbone,
    then to random weights (with a warning).
    """
    from alft_cli import distributed
    from alft_cli import finetune as ft
    from alft_cli.config import FinetuneConfig, validated
    from alft_cli.data import CachedImages, resolve_device

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
    with _writing(project_dir, "finetune", cfg.model_dump()) as project:
        store = project.store
        round_ = store.current_round()
        ids, y = store.labeled_arrays()
        if round_ is None or len(ids) == 0:
            raise OptionError("no labeled pool images yet: label the to-label list and run "
                              "alft import-labels first")
        if len(ids) < 2 and not cfg.freeze_backbone:
            raise OptionError("fine-tuning needs at least 2 labeled images (BatchNorm); "
                              "import more labels")
        model, init_used, backbone = _initial_classifier(project, cfg, round_)
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
        (round_dir / ft.FINETUNE_CHECKPOINT).unlink(missing_ok=True)
        return FinetuneResult(round_, len(ids), init_used, backbone, model_file, metrics,
                              outcome.seconds, False, str(device))


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for split in ("val", "test"):
        for key in ("micro_f1", "macro_f1", "mAP"):
            if split in metrics:
                flat[f"{split}_{key}"] = float(metrics[split][key])
    return flat


def _initial_classifier(project: Project, cfg: Any, round_: int) -> tuple[Any, str, str]:
    """Build the classifier for this round and load its starting weights."""
    from alft_cli.checkpoints import load_safe
    from alft_cli.finetune import build_classifier, load_model
    from alft_cli.models import BACKBONES, load_state_dict_checked

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
        model, _ = load_model(project.resolve(previous.model_file))
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
        model = build_classifier(backbone, project.classes, project.config.in_channels,
                                 project.config.mean, project.config.std)
        state = load_safe(project.resolve(pretrained["file"]), "pretrained backbone")
        load_state_dict_checked(model.backbone, state["state_dict"], pretrained["file"])
        return model, "pretrained", backbone
    backbone = cfg.backbone or (pretrained or {}).get("backbone") or "densenet121"
    if backbone not in BACKBONES:
        raise OptionError(f"--backbone {backbone!r}: unknown; choose from "
                          f"{', '.join(sorted(BACKBONES))}")
    return (build_classifier(backbone, project.classes, project.config.in_channels,
                             project.config.mean, project.config.std), "scratch", backbone)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


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
          batch_size: int = 64, image_url_prefix: str | None = None) -> QueryResult | None:
    """Choose ``budget`` unlabeled pool images to label next; write the query file.

    One inference pass over the unlabeled pool gives features h and probabilities p; the
    strategy (a pure function of them, see :mod:`alft_cli.strategies`) picks the images.
    Under torchrun every rank scores a shard of the pool; only rank 0 selects and writes
    (the other ranks return None).
    """
    from alft_cli.data import resolve_device
    from alft_cli.labels import label_studio_config, write_label_studio_tasks
    from alft_cli.strategies import NEEDS_MODEL, STRATEGIES, QueryContext, select

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
    notes: list[str] = []
    from alft_cli import distributed

    info = distributed.env_info()
    # Under torchrun every rank scores a shard of the pool; rank 0 owns the project.
    context = _writing(project_dir, "query", args) if info.is_main else _reading(project_dir)
    with context as project:
        store = project.store
        pending = store.pending()
        if pending and not force:
            rounds_pending = sorted({r for r, _ in pending})
            raise OptionError(
                f"{len(pending)} images queried in round {rounds_pending[-1]} are still "
                "pending (see alft status): import their labels first, or use --force to "
                "cancel them (they go back to the unlabeled pool)")
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
        dev = resolve_device(device)
        if info.enabled:
            distributed.init(dev)
            if dev.type == "cuda":
                dev = torch_device("cuda", info.local_rank)
        # scikit-learn takes ~1 s to import: do it while the pool is being scored, and wait
        # for it before selecting (two threads importing one package can see it half-made).
        # auto selects inside its own pass, so it imports when it gets there.
        importing = (_import_in_background("sklearn.cluster")
                     if strategy not in ("random", "auto") else None)
        if strategy == "auto":
            from alft_cli.strategies import auto_weight

            # Only auto looks at how good the model is (this may read the last query file).
            model_f1, evidence = (_model_evidence(project, model_rec) if model_rec
                                  else (None, "no model yet"))
            share = auto_weight(model_f1)
            selection, chosen_p = _auto_selection(project, model_rec, unlabeled, budget,
                                                  candidates, seed, share, dev, batch_size)
            notes.append(f"auto: {evidence} -> {share:.0%} of the batch by MGE+Clustering, "
                         f"{1 - share:.0%} random")
        else:
            scored = _score_pool(project, model_rec, strategy, unlabeled, labeled, budget,
                                 candidates, dev, batch_size)
        if importing is not None:
            importing.join()
        if not info.is_main:
            return None
        if strategy == "auto":
            chosen = unlabeled[selection.indices]
        else:
            rows, h, p, labeled_h, labeled_y, candidates = scored
            ctx = QueryContext(h=h, p=p, budget=budget, seed=seed, candidates=candidates,
                               labeled_h=labeled_h, labeled_y=labeled_y,
                               n_labeled=len(labeled))
            selection = select(strategy, ctx)
            chosen_p = None if p is None else p[selection.indices]
            chosen = unlabeled[rows[selection.indices]]

        current = store.current_round()
        cur_rec = store.round(current) if current is not None else None
        # A round whose query nobody answered yet (no labels, no model) is replaced rather
        # than followed, so cancelling and re-querying does not leave empty rounds behind.
        reuse = (cur_rec is not None and cur_rec.model_file is None
                 and current not in set(store.label_rounds().values()))
        new_round = current if reuse else (0 if current is None else current + 1)
        query_path = Path(out) if out else _fresh_path(project.round_dir(new_round) /
                                                       "query.csv")
        keys = store.keys_by_id()
        rows = [QueryRow(keys[int(s)], rank + 1, float(selection.scores[rank]),
                         int(selection.clusters[rank]),
                         None if chosen_p is None else chosen_p[rank].tolist())
                for rank, s in enumerate(chosen)]
        write_query_csv(query_path, rows, project.classes)
        faults.point("query:file-written")
        ls_files: list[Path] = []
        if fmt == "label-studio":
            tasks = query_path.with_suffix(".label-studio.json")
            prefix = image_url_prefix or "/data/local-files/?d=" + project.archive.as_posix(
            ).lstrip("/") + "/"
            write_label_studio_tasks(tasks, rows, project.classes,
                                     image_url=lambda key: prefix + key,
                                     model_version=f"alft-r{model_rec.round}" if model_rec
                                     else "alft")
            config_xml = query_path.with_name("label-studio-config.xml")
            from alft_cli.atomic import atomic_write_text

            atomic_write_text(config_xml, label_studio_config(project.classes))
            ls_files = [tasks, config_xml]
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
            store.add_query(new_round, ((int(s), i + 1, float(selection.scores[i]),
                                         int(selection.clusters[i]))
                                        for i, s in enumerate(chosen)))
            faults.point("query:before-commit")
        if cancelled:
            notes.append(f"cancelled {cancelled} pending images of the earlier query; they "
                         "are back in the unlabeled pool")
        return QueryResult(new_round, strategy, query_path, len(chosen), budget,
                           len(unlabeled), model_rec.round if model_rec else None, ls_files,
                           cancelled, notes)


# Fewer answered suggestions than this say too little about a model to steer `auto`.
MIN_SUGGESTIONS_FOR_EVIDENCE = 10


def _model_evidence(project: Project, model_rec: Any) -> tuple[float | None, str]:
    """How good the current model is, from what is known at query time (never test labels):
    its validation micro-F1 when the project has gold val labels; otherwise the micro-F1 of
    the latest query's suggestions (p >= 0.5, written by an earlier model) against the labels
    people gave those images since - out-of-sample for the model that suggested them, and a
    round behind the current one, so it errs on the cautious side."""
    val = (model_rec.metrics or {}).get("val") or {}
    if val.get("micro_f1") is not None:
        return float(val["micro_f1"]), (f"validation micro-F1 {val['micro_f1']:.3f} of "
                                        f"round {model_rec.round}'s model")
    store = project.store
    labels = store.labels()
    ids = store.ids_by_key()
    classes = project.classes
    for rec in reversed(store.rounds()):
        if rec.model_round is None or not rec.query_file:
            continue
        suggested = _suggestions(project.resolve(rec.query_file), classes)
        answered = [(decode_y(labels[ids[k]]), p) for k, p in suggested.items()
                    if k in ids and ids[k] in labels]
        if len(answered) < MIN_SUGGESTIONS_FOR_EVIDENCE:
            continue
        from alft_cli.metrics import multilabel_metrics

        y_true = np.stack([y for y, _ in answered])
        y_score = np.stack([p for _, p in answered])
        f1 = float(multilabel_metrics(y_true, y_score, classes)["micro_f1"])
        return f1, (f"no validation labels; round {rec.model_round}'s suggestions on the "
                    f"{len(answered)} images of round {rec.round}'s query reached micro-F1 "
                    f"{f1:.3f} against the labels given")
    return None, "no validation labels and no answered model suggestions yet"


def _suggestions(path: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """filename -> probabilities from a query file's p_<class> columns ({} if unreadable)."""
    columns = [f"p_{c}" for c in classes]
    out: dict[str, np.ndarray] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if all(row.get(c) not in (None, "") for c in columns):
                    out[row["filename"]] = np.array([float(row[c]) for c in columns])
    except (OSError, ValueError, KeyError, csv.Error):
        return {}
    return out


def torch_device(kind: str, index: int) -> Any:
    import torch

    return torch.device(kind, index)


def _score_pool(project: Project, model_rec: Any, strategy: str, unlabeled: np.ndarray,
                labeled: set[int], budget: int, candidates: int | None, dev: Any,
                batch_size: int) -> tuple:
    """One inference pass over the unlabeled pool: what the strategy looks at.

    Returns (rows, h, p, labeled_h, labeled_y, candidates); ``rows`` index ``unlabeled``
    (all of them, or only the top-m kept by a streamed pass).
    """
    from alft_cli.data import CachedImages
    from alft_cli.embed import infer_top

    store = project.store
    cache = CachedImages(project.cache_path)
    model = _scoring_model(project, model_rec) if strategy != "random" else None
    h = p = labeled_h = labeled_y = None
    rows = np.arange(len(unlabeled))
    if model is not None and model_rec is not None and strategy in STREAMED:
        # Only the top-m rows by score can be chosen: keep just their features.
        keep = _kept_rows(strategy, budget, candidates)
        model.to(dev)
        rows, h, p_all, _ = infer_top(model, cache, unlabeled, dev, STREAMED[strategy], keep,
                                      batch_size)
        p = p_all[rows]
        if strategy == "mge-clustering":
            candidates = min(keep, len(rows)) if len(rows) > budget else None
    elif model is not None:
        h, p = _score(model, cache, unlabeled, dev, batch_size, with_p=model_rec is not None)
        if strategy in ("coreset", "typiclust", "hybrid") and labeled:
            lab_ids, labeled_y = store.labeled_arrays()
            labeled_h, _ = _score(model, cache, lab_ids, dev, batch_size, with_p=False)
        elif strategy == "class-aware-mge":
            _, labeled_y = store.labeled_arrays()
    else:
        h = np.zeros((len(unlabeled), 1), np.float32)
    return rows, h, p, labeled_h, labeled_y, candidates


def _auto_selection(project: Project, model_rec: Any, unlabeled: np.ndarray, budget: int,
                    candidates: int | None, seed: int, share: float, dev: Any,
                    batch_size: int) -> tuple[Any, np.ndarray | None]:
    """``auto`` without holding the pool's features: its MGE+Clustering share comes from one
    streamed pass that keeps only the top-m rows, its random share needs no features at all
    (a weak model costs no pool pass), and probabilities are computed for the chosen images
    only, for their suggestions. Picks exactly what ``select('auto')`` picks on the full
    (h, p) (tested). Returns (selection over ``unlabeled``, probabilities of the chosen);
    under torchrun the other ranks take part in the passes and return (None, None)."""
    from alft_cli import distributed
    from alft_cli.data import CachedImages
    from alft_cli.embed import infer_top
    from alft_cli.strategies import (
        QueryContext,
        Selection,
        append_random,
        select,
        share_candidates,
        uncertainty_share,
    )

    n = len(unlabeled)
    k = min(budget, n)
    k_u = uncertainty_share(share, budget, n, model_rec is not None)
    cache = CachedImages(project.cache_path)
    model = _scoring_model(project, model_rec) if model_rec is not None else None
    first = Selection(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    p_all = None
    if k_u:
        keep = _kept_rows("mge-clustering", k_u, share_candidates(k_u, candidates))
        model.to(dev)
        rows, h, p_all, _ = infer_top(model, cache, unlabeled, dev, _mge, keep, batch_size)
        if not distributed.env_info().is_main:
            return None, None  # only rank 0 received the top rows
        part = select("mge-clustering", QueryContext(
            h=h, p=p_all[rows], budget=k_u, seed=seed,
            candidates=min(keep, len(rows)) if len(rows) > k_u else None))
        first = Selection(rows[part.indices], part.scores, part.clusters)
    selection = append_random(first, n, k - k_u, seed)
    if p_all is not None:
        return selection, p_all[selection.indices]
    if model is None:
        return selection, None
    _, p = _score(model, cache, unlabeled[selection.indices], dev, batch_size, with_p=True)
    return selection, p


def _mge(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    from alft_cli.strategies import mge_scores

    return mge_scores(h, p)


def _entropy(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    from alft_cli.strategies import entropy_scores

    return entropy_scores(p)


# Strategies that only ever pick among the top rows of a per-sample score: the pool is
# scored in one streaming pass that keeps features for those rows only.
STREAMED = {"mge-clustering": _mge, "mge": _mge, "entropy": _entropy}


def _kept_rows(strategy: str, budget: int, candidates: int | None) -> int:
    from alft_cli.strategies import CANDIDATE_FACTOR

    if strategy == "mge-clustering":
        return candidates if candidates is not None else CANDIDATE_FACTOR * budget
    return budget


def _import_in_background(module: str) -> Any:
    import importlib
    import threading

    thread = threading.Thread(target=importlib.import_module, args=(module,), daemon=True)
    thread.start()
    return thread


def _fresh_path(path: Path) -> Path:
    """``path``, or ``stem-2.csv``, ``stem-3.csv``... if taken.

    A replaced query never overwrites the file of the query it replaces: if the command dies
    before its transaction commits, the store still points at an intact old file.
    """
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _scoring_model(project: Project, model_rec: Any) -> Any:
    """The latest round's classifier, or (before any) the pretrained backbone for features."""
    from alft_cli.checkpoints import load_safe
    from alft_cli.finetune import build_classifier, load_model
    from alft_cli.models import load_state_dict_checked

    if model_rec is not None:
        model, _ = load_model(project.resolve(model_rec.model_file))
        return model
    pretrained = json.loads(project.store.get_meta("pretrained") or "null")
    if pretrained is None:
        raise OptionError("no trained model and no pretrained backbone to take features "
                          "from: run alft pretrain (or use --strategy random)")
    model = build_classifier(pretrained["backbone"], project.classes,
                             project.config.in_channels, project.config.mean,
                             project.config.std)
    state = load_safe(project.resolve(pretrained["file"]), "pretrained backbone")
    load_state_dict_checked(model.backbone, state["state_dict"], pretrained["file"])
    return model


def _score(model: Any, cache: Any, ids: np.ndarray, device: Any, batch_size: int,
           with_p: bool) -> tuple[np.ndarray, np.ndarray | None]:
    from alft_cli.embed import infer

    model.to(device)
    h, p = infer(model, cache, ids, device, batch_size, probabilities=with_p)
    return h, p


# --------------------------------------------------------------------------------------------
# exclude (take pool images out of play) and adopt-pretrained (share one BYOL backbone)
# --------------------------------------------------------------------------------------------
def exclude_samples(project_dir: Path | str, keys: Sequence[str]) -> int:
    """Take unlabeled pool images out of play (never queried, trained on or evaluated).

    Used by simulate's imbalance scenarios; labeled, pending or val/test images are refused.
    Returns how many were excluded.
    """
    with _writing(project_dir, "exclude", {"n": len(keys)}) as project:
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
    with _reading(source_project) as src:
        meta = json.loads(src.store.get_meta("pretrained") or "null")
        if meta is None:
            raise OptionError(f"{source_project} has no pretrained backbone")
        meta = {**meta, "file": str(src.resolve(meta["file"]).resolve()),
                "adopted_from": str(Path(source_project).resolve())}
        source_archive = src.config.archive
    with _writing(project_dir, "adopt-pretrained", {"source": str(source_project)}) as project:
        if project.config.archive != source_archive:
            raise OptionError(f"{source_project} indexes another archive")
        with project.store.transaction():
            project.store.set_meta("pretrained", json.dumps(meta))
    return meta


# --------------------------------------------------------------------------------------------
# simulate and report
# --------------------------------------------------------------------------------------------
@dataclass
class SimulateResult:
    """What simulate did."""

    out: Path
    runs: list[Path]
    finished: int
    report: Path | None
    complete: bool = False


def _int_list(text: str | Sequence[int], name: str, count_ok: bool = False) -> list[int]:
    if not isinstance(text, str):
        return [int(v) for v in text]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise OptionError(f"{name} {text!r}: give integers separated by commas") from exc
    if count_ok and len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise OptionError(f"{name} {text}: give a positive count or a list")
        return list(range(values[0]))
    return values


def simulate(archive: Path | str, labels: Path | str, out: Path | str, *,
             strategies: str | Sequence[str] = "mge-clustering,random",
             seeds: str | Sequence[int] = "5", scenarios: str | Sequence[int] = "1",
             initial: int = 40, budget: int = 20, max_labels: int = 220,
             val_fraction: float = 0.25, test_fraction: float = 0.25, image_size: int = 256,
             full_supervision: bool = False, candidates: int | None = None,
             device: str = "auto", max_steps: int | None = None,
             max_minutes: float | None = None,
             pretrain: dict[str, Any] | None = None, finetune: dict[str, Any] | None = None,
             write_report: bool = True) -> SimulateResult:
    """Run (or continue) an oracle simulation; see :mod:`alft_cli.simulate`."""
    from alft_cli.simulate import SimulationSettings, run_simulation

    names = ([s.strip() for s in strategies.split(",") if s.strip()]
             if isinstance(strategies, str) else list(strategies))
    pre = dict(pretrain or {})
    fin = {k: v for k, v in (finetune or {}).items() if v is not None}
    if pre.get("epochs", 1) != 0:
        fin.pop("backbone", None)  # the pretrained backbone decides
    # Without pretraining, round 0 starts from random weights and later rounds still
    # warm-start from the previous one: the same AL protocol as the pretrained routes.
    settings = SimulationSettings(
        archive=str(Path(archive).resolve()), labels=str(Path(labels).resolve()),
        strategies=names, seeds=_int_list(seeds, "--seeds", count_ok=True),
        scenarios=_int_list(scenarios, "--scenario"), initial=initial, budget=budget,
        max_labels=max_labels, val_fraction=val_fraction, test_fraction=test_fraction,
        image_size=image_size, full_supervision=full_supervision, candidates=candidates,
        pretrain=pre, finetune=fin, device=device)
    result = run_simulation(Path(out), settings, stop_after=max_steps, max_minutes=max_minutes)
    report_dir = None
    if write_report and result.rounds_trained + result.finished > 0:
        try:
            report_dir = report(out).out
        except OptionError:
            report_dir = None
    return SimulateResult(Path(out), result.runs, result.finished, report_dir, result.complete)


def report(source: Path | str | list[Path | str] | list[tuple[str, Path | str]], *,
           out: Path | str | None = None, split: str = "test", baseline: str | None = None,
           seeds: str | None = None, strategies: str | None = None,
           scenarios: str | None = None) -> Any:
    """Write learning curves, tables and plots for one folder, or compare several simulation
    folders (paths, or (name, path) pairs); see :mod:`alft_cli.report`."""
    from alft_cli.report import make_report

    if split not in ("test", "val"):
        raise OptionError("--split: test or val")
    items = source if isinstance(source, list) else [source]
    sources = [(item[0], Path(item[1])) if isinstance(item, tuple) else Path(item)
               for item in items]
    return make_report(sources if len(sources) > 1 else sources[0],
                       Path(out) if out else None, split=split, baseline=baseline,
                       seeds=_int_list(seeds, "--seeds") if seeds else None,
                       strategies=[x.strip() for x in strategies.split(",") if x.strip()]
                       if strategies else None,
                       scenarios=_int_list(scenarios, "--scenario") if scenarios else None)


# --------------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------------
@dataclass
class DoctorReport:
    """What doctor found; ``problems`` make the project inconsistent, ``notes`` do not."""

    problems: list[str]
    notes: list[str]
    checked: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.problems


def doctor(project_dir: Path | str, *, verify_hashes: bool = False) -> DoctorReport:
    """Check a project without changing anything: files, cache, labels, rounds, artifacts."""
    problems: list[str] = []
    notes: list[str] = []
    checked: dict[str, int] = {}
    with _reading(project_dir) as project:
        store = project.store
        integrity = store.conn.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"database integrity check failed: {integrity}")
        n_classes = len(project.classes)
        records = list(store.sample_records())
        checked["images"] = len(records)
        archive = project.archive
        for _sid, rec, _split in records:
            path = archive / rec.key
            try:
                stat = path.stat()
            except OSError:
                problems.append(f"image {rec.key}: missing from the archive {archive}")
                continue
            if stat.st_size != rec.size:
                problems.append(f"image {rec.key}: size changed ({rec.size} -> {stat.st_size} "
                                "bytes) since indexing")
            elif verify_hashes:
                from alft_cli.images import file_sha256

                if file_sha256(path) != rec.sha256:
                    problems.append(f"image {rec.key}: content changed since indexing")
        _check_cache(project, records, problems)
        splits = store.split_of()
        labels = store.labels()
        checked["labels"] = len(labels)
        for sid, y in labels.items():
            if len(y) != n_classes or set(y) - {"0", "1"}:
                problems.append(f"label of {project.store.keys_by_id()[sid]}: malformed {y!r}")
            if splits.get(sid) != "pool":
                problems.append(f"sample {sid} has an imported label but is {splits.get(sid)}")
        for split in ("val", "test"):
            ids, y = store.gold(split)
            if len(ids) and y.shape[1] != n_classes:
                problems.append(f"gold labels of {split} have {y.shape[1]} classes, "
                                f"not {n_classes}")
        gold_pool = store.conn.execute(
            "SELECT COUNT(*) FROM gold g JOIN samples s ON s.id=g.sample_id "
            "WHERE s.split='pool'").fetchone()[0]
        if gold_pool:
            problems.append(f"{gold_pool} pool samples carry gold labels (must be val/test only)")
        _check_rounds(project, labels, problems, notes, checked)
        pretrained = json.loads(store.get_meta("pretrained") or "null")
        if pretrained and not project.resolve(pretrained["file"]).is_file():
            problems.append(f"pretrained backbone {pretrained['file']} is missing")
        running = store.conn.execute(
            "SELECT id, command, started_at FROM runs WHERE status='running'").fetchall()
        for run_id, command, started in running:
            notes.append(f"command {command} (run {run_id}, started {started}) did not finish "
                         "(killed or still running); its changes were rolled back or are "
                         "complete")
    return DoctorReport(problems, notes, checked)


def _check_cache(project: Project, records: list, problems: list[str]) -> None:
    from alft_cli.images import open_cache

    try:
        cache = open_cache(project.cache_path)
    except (OSError, ValueError) as exc:
        problems.append(f"decode cache {project.cache_path}: unreadable ({exc})")
        return
    cfg = project.config
    want = (cfg.in_channels, cfg.image_size, cfg.image_size)
    top = max((sid for sid, _, _ in records), default=-1)
    if cache.shape[1:] != want or cache.shape[0] <= top:
        problems.append(f"decode cache has shape {cache.shape}, expected (>{top}, "
                        f"{', '.join(map(str, want))})")


def _check_rounds(project: Project, labels: dict[int, str], problems: list[str],
                  notes: list[str], checked: dict[str, int]) -> None:
    store = project.store
    keys = store.keys_by_id()
    rounds = store.rounds()
    checked["rounds"] = len(rounds)
    known = {r.round for r in rounds}
    for r in rounds:
        if r.model_file and not project.resolve(r.model_file).is_file():
            problems.append(f"round {r.round}: model {r.model_file} is recorded but missing")
        if r.model_file is None and (project.round_dir(r.round) / "model.pt").exists():
            notes.append(f"round {r.round}: model.pt exists but was never recorded (an "
                         "interrupted finetune); the next finetune replaces it")
        if r.query_file:
            path = project.resolve(r.query_file)
            if not path.is_file():
                problems.append(f"round {r.round}: query file {r.query_file} is missing")
                continue
            try:
                with open(path, newline="", encoding="utf-8-sig") as handle:
                    listed = [row.get("filename", "") for row in csv.DictReader(handle)]
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                problems.append(f"round {r.round}: query file unreadable ({exc})")
                continue
            queried = [keys[s] for s in store.queried_ids(r.round)]
            if sorted(listed) != sorted(queried):
                problems.append(f"round {r.round}: query file {r.query_file} lists other images "
                                "than the store's query")
    recorded = {project.resolve(r.query_file).resolve() for r in rounds if r.query_file}
    for path in sorted(project.root.glob("rounds/round_*/query*.csv")):
        if path.resolve() not in recorded and not path.name.endswith(".answers.csv"):
            notes.append(f"{project.relative(path)} is not the recorded query of its round "
                         "(replaced by --force, or left by an interrupted query); harmless")
    for path in sorted(project.root.rglob(".*.tmp")):
        notes.append(f"{project.relative(path)}: temp file of an interrupted write; harmless "
                     "(delete it at will)")
    rows = store.conn.execute("SELECT round, sample_id, state FROM queries").fetchall()
    checked["queries"] = len(rows)
    for round_, sid, state in rows:
        if round_ not in known:
            problems.append(f"query of sample {sid} belongs to unknown round {round_}")
        if state == "labeled" and sid not in labels:
            problems.append(f"{keys.get(sid, sid)}: query says labeled but no label is stored")
        if state == "pending" and sid in labels:
            problems.append(f"{keys.get(sid, sid)}: labeled but its query is still pending")


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

    with _reading(project_dir) as project:
        return export_project(project, round_=round_, out=Path(out) if out else None,
                              calibrate_thresholds=calibrate_thresholds, device=device)


def tag(model: Path | str, archive: Path | str, *, out: Path | str, fmt: str = "csv",
        device: str = "auto", shard: str | None = None, resume: bool = False,
        batch_size: int = 32, workers: int | None = None, threads: int | None = None) -> Any:
    """Tag every image of an archive with an exported model (no project needed)."""
    from alft_cli.tag import tag_archive

    return tag_archive(Path(model), Path(archive), Path(out), fmt=fmt, device=device,
                       shard=shard, resume=resume, batch_size=batch_size, workers=workers,
                       threads=threads)
