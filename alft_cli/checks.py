"""The project checks of ``alft doctor``: is everything the store says consistent with the
files on disk and with itself? Read-only; problems make a project inconsistent, notes do not.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

from alft_cli.project import Project


@dataclass
class DoctorReport:
    """What doctor found; ``problems`` make the project inconsistent, ``notes`` do not."""

    problems: list[str]
    notes: list[str]
    checked: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_project(project: Project, verify_hashes: bool = False) -> DoctorReport:
    """Every check of ``alft doctor`` (read-only): database integrity, the archive's files,
    the decode cache, labels and gold labels, rounds and their artifacts, unfinished runs."""
    problems: list[str] = []
    notes: list[str] = []
    checked: dict[str, int] = {}
    store = project.store
    integrity = store.conn.execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        problems.append(f"database integrity check failed: {integrity}")
    records = list(store.sample_records())
    checked["images"] = len(records)
    _check_files(project, records, verify_hashes, problems)
    _check_cache(project, records, problems)
    labels = _check_labels(project, problems, checked)
    # Answers routed to val close their queries too.
    _check_rounds(project, {**store.val_answers(), **labels}, problems, notes, checked)
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

def _check_files(project: Project, records: list, verify_hashes: bool,
                 problems: list[str]) -> None:
    archive = project.archive
    if records and not archive.is_dir():
        # One line with the cause, not one per image: the archive moved or is not mounted.
        problems.append(f"archive folder not found: {archive} (moved? point the project at "
                        f"its new place with: alft relocate -p {project.root} NEW_PATH)")
        return
    raster = project.config.raster
    if raster is not None and raster.layout == "band-folder":
        _check_band_folders(project, records, verify_hashes, problems)
        return
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


def _check_band_folders(project: Project, records: list, verify_hashes: bool,
                        problems: list[str]) -> None:
    """A band-folder sample is its selected band files: sizes summed, hashes combined."""
    from alft_cli import raster_index, rasters

    archive, raster = project.archive, project.config.raster
    for _sid, rec, _split in records:
        sample = rasters.sample_for(archive, rec.key, "band-folder")
        files = raster_index.sample_files(sample, raster)
        if len(files) != len(raster.bands):
            problems.append(f"sample {rec.key}: band files missing from the archive "
                            f"{archive}")
            continue
        try:
            size, _, digest = raster_index.fingerprint(archive, files, verify_hashes)
        except OSError:
            problems.append(f"sample {rec.key}: unreadable band file in {archive}")
            continue
        if size != rec.size:
            problems.append(f"sample {rec.key}: size changed ({rec.size} -> {size} bytes) "
                            "since indexing")
        elif verify_hashes and digest != rec.sha256:
            problems.append(f"sample {rec.key}: content changed since indexing")


def _check_labels(project: Project, problems: list[str],
                  checked: dict[str, int]) -> dict[int, str]:
    store = project.store
    n_classes = len(project.classes)
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
    return labels


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
    dtype = "float16" if cfg.raster is not None else "uint8"
    if cache.dtype != dtype:
        problems.append(f"decode cache holds {cache.dtype}, expected {dtype}")


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
