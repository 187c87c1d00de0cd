"""Indexing an archive into a new project: scan, decode into the cache, gold labels, splits.

:func:`create_project` builds the whole project in a temporary folder next to the target and
renames it into place, so a project appears complete or not at all. The initial to-label list
(round 0, random) is written here because it is part of a project's birth.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alft_cli import __version__
from alft_cli.atomic import atomic_open, make_temp_dir
from alft_cli.config import (
    ARCHIVE_EXTENSIONS,
    RASTER_SCHEMA_VERSION,
    ProjectConfig,
    RasterConfig,
    check_class_names,
    parse_class_list,
)
from alft_cli.errors import ArchiveError, LabelFileError, OptionError, ProjectError
from alft_cli.images import ScanResult, create_cache, decode_many, scan_folder, scan_manifest
from alft_cli.labels import QueryRow, header_classes, match_keys, read_label_file, write_query_csv
from alft_cli.progress import reporter
from alft_cli.project import ARCHIVE_META, Project, archive_location, open_project
from alft_cli.raster_index import RasterOptions, RasterPlan
from alft_cli.store import SampleRecord, Store, encode_y, now_iso

# The paper's split of UC Merced: half the archive for val and test (with gold labels).
PAPER_VAL_FRACTION = 0.25
PAPER_TEST_FRACTION = 0.25


def split_fractions(val_fraction: float | None, test_fraction: float | None,
                    has_gold: bool) -> tuple[float, float]:
    """The val/test fractions to use: the paper's with gold labels, none without (nothing to
    evaluate against); refused when they leave no pool or need gold labels not given."""
    val = (PAPER_VAL_FRACTION if has_gold else 0.0) if val_fraction is None else float(val_fraction)
    test = ((PAPER_TEST_FRACTION if has_gold else 0.0) if test_fraction is None
            else float(test_fraction))
    if not 0 <= val < 1 or not 0 <= test < 1:
        raise OptionError("--val-fraction and --test-fraction must be in [0, 1)")
    if val + test >= 1:
        raise OptionError("--val-fraction + --test-fraction must leave a pool (sum < 1)")
    if (val or test) and not has_gold:
        raise OptionError("val/test splits need gold labels to evaluate against: "
                          "give --labels FILE, or set --val-fraction 0 --test-fraction 0")
    return val, test


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
    label_studio_files: list[Path] = field(default_factory=list)


def create_project(
    archive: Path, root: Path, *, classes: list[str], labels_file: Path | str | None,
    val_fraction: float, test_fraction: float, initial: int, image_size: int,
    in_channels: int | None, seed: int, workers: int | None, index_from: Path | None,
    meta: dict[str, str] | None = None, raster: RasterOptions | None = None,
) -> InitPoolResult:
    """Index ``archive`` into the new project folder ``root`` (built aside, then renamed);
    ``meta`` adds store settings (e.g. the share of answers routed to val).

    8-bit RGB archives are decoded with Pillow into a uint8 cache as they always were;
    multi-band, 16-bit and band-folder archives (or any ``raster`` option) take the rasterio
    path of :mod:`alft_cli.raster_index`, which settles layout, bands and scaling first, so a
    bad option fails before anything is written.
    """
    from alft_cli import raster_index

    check_new_project_dir(root)
    plan: RasterPlan | None = None
    if index_from is not None:
        archive_root, scan, manifest = archive.resolve(), None, None
    else:
        archive_root, scan, manifest = scan_archive(archive)
        if scan.keys:
            plan = raster_index.plan(archive_root, scan.keys, scan.skipped,
                                     raster or RasterOptions(), in_channels)
    if scan is not None and not scan.keys:
        raise ArchiveError(f"{archive}: no images found ({'/'.join(ARCHIVE_EXTENSIONS)})"
                           + (f"; {len(scan.skipped)} unusable" if scan.skipped else ""))

    # As open as the umask allows (a team shares the project), not mkdtemp's drwx------.
    tmp_root = make_temp_dir(root.parent, ".alft-init-")
    # The archive's location, also relative to the project when both live in one folder.
    meta = {**(meta or {}), ARCHIVE_META: json.dumps(archive_location(root, archive_root))}
    try:
        result = _build_project(
            tmp_root, archive_root, manifest, scan, classes, labels_file, val_fraction,
            test_fraction, initial, image_size, in_channels, seed, workers, index_from, meta,
            plan)
        _move_into_place(tmp_root, root)
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    result.project = root
    if result.query_file is not None:
        result.query_file = root / result.query_file.relative_to(tmp_root)
    if result.skipped_file is not None:
        result.skipped_file = root / result.skipped_file.relative_to(tmp_root)
    return result


def check_new_project_dir(root: Path) -> None:
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


def resolve_classes(classes: Sequence[str] | str | None,
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


def scan_archive(archive: Path) -> tuple[Path, ScanResult, Path | None]:
    if not archive.exists():
        raise ArchiveError(f"archive {archive} does not exist")
    if archive.is_dir():
        return archive.resolve(), scan_folder(archive, ARCHIVE_EXTENSIONS), None
    if archive.suffix.lower() == ".csv":
        return archive.parent.resolve(), scan_manifest(archive, strict=True), archive.resolve()
    raise ArchiveError(f"{archive}: give a folder of images or a manifest CSV with a "
                       "'filename' column")


def _build_project(
    tmp_root: Path, archive_root: Path, manifest: Path | None, scan: ScanResult | None,
    classes: list[str], labels_file: Path | str | None, val_fraction: float,
    test_fraction: float, initial: int, image_size: int, in_channels: int | None, seed: int,
    workers: int | None, index_from: Path | None = None,
    meta: dict[str, str] | None = None, plan: RasterPlan | None = None,
) -> InitPoolResult:
    from alft_cli import raster_index

    (tmp_root / "cache").mkdir()
    spec: RasterConfig | None = None
    if index_from is not None:
        records, skipped, mean, std, spec = _reuse_index(tmp_root, index_from, archive_root,
                                                         image_size, in_channels)
        in_channels = len(spec.bands) if spec is not None else (in_channels or 3)
    elif plan is not None:
        indexed = raster_index.index(plan, archive_root, tmp_root / "cache" / "images.npy",
                                     image_size, seed, workers)
        records, skipped, mean, std = (indexed.records, indexed.skipped, indexed.mean,
                                       indexed.std)
        spec = indexed.spec
        in_channels = len(spec.bands)
    else:
        assert scan is not None
        in_channels = in_channels or 3
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
        created_at=now_iso(), raster=spec,
        # Only multi-band projects need the newer config schema; RGB ones stay readable by
        # every alft.
        **({"schema_version": RASTER_SCHEMA_VERSION} if spec is not None else {}),
    )
    config.save(tmp_root / "config.json")
    store = Store.create(tmp_root / Store.FILENAME)
    project = Project(tmp_root, config, store)
    query_path: Path | None = None
    try:
        with store.transaction():
            store.set_meta("alft_version", __version__)
            for key, value in (meta or {}).items():
                store.set_meta(key, value)
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
                quick: dict[str, str] = {}
                if spec is not None:
                    # People cannot open a 12-band file: the initial list gets quicklooks too.
                    from alft_cli import quicklooks

                    quick = quicklooks.for_query(project, [int(s) for s in chosen],
                                                 [keys[int(s)] for s in chosen],
                                                 query_path.parent / quicklooks.FOLDER)
                write_query_csv(query_path, [QueryRow(keys[int(s)], i + 1, 0.0, -1, None,
                                                      quick.get(keys[int(s)]))
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
                 in_channels: int | None
                 ) -> tuple[list[tuple[int, SampleRecord]], list[tuple[str, str]], list[float],
                            list[float], RasterConfig | None]:
    """Share another project's index and decode cache (same archive and size): simulate
    makes one project per run without decoding the archive again. Its raster settings
    (bands, scaling) come along: they describe the cache."""
    src = open_project(source, readonly=True)
    try:
        cfg = src.config
        if (Path(cfg.archive) != archive_root or cfg.image_size != image_size
                or (in_channels is not None and cfg.in_channels != in_channels)):
            raise OptionError(f"{source} indexes another archive or image size")
        records = [(row, rec) for row, rec, _ in src.store.sample_records()]
        skipped = src.store.skipped()
        target = tmp_root / "cache" / "images.npy"
        try:
            os.link(src.cache_path, target)
        except OSError:  # another file system: a symlink works as well for reading
            os.symlink(src.cache_path.resolve(), target)
        return records, skipped, list(cfg.mean), list(cfg.std), cfg.raster
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

