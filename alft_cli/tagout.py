"""The output of ``alft tag``: its format, the record of the model that wrote it, resuming
it, and writing it.

The format follows ``--format``, else the output's name (``.jsonl``/``.ndjson``: JSON Lines;
anything else: CSV); a format that contradicts the name is refused. Each output has a side
file ``<out>.model.json`` naming the model (its SHA-256), format and shard that wrote it:
``--resume`` with another model would otherwise keep the old model's tags next to the new
one's without a word, so it is refused (``--overwrite`` starts over). A run killed mid-line
leaves a partial last line, which resuming cuts off.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO, Any

import numpy as np

from alft_cli.errors import OptionError

FORMATS = ("csv", "jsonl")
# What an output's name says about its format; a name saying nothing means CSV (the default).
EXTENSION_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
DECIMALS = 6


def _header(classes: list[str]) -> list[str]:
    return ["filename", *classes, "labels"]


def resolve_format(fmt: str | None, out: Path) -> str:
    """The output format: ``fmt`` when given, else what ``out``'s extension says (CSV when it
    says nothing).

    Raises:
        OptionError: unknown format; ``.json`` without ``--format``; or a format that
            contradicts the extension (``--format csv --out tags.jsonl``).
    """
    suffix = out.suffix.lower()
    implied = EXTENSION_FORMATS.get(suffix)
    if fmt is None or str(fmt).strip() == "":
        if suffix == ".json":
            raise OptionError(f"--out {out}: alft writes JSON Lines (one object per line), "
                              "not one JSON document; name it .jsonl or give --format jsonl")
        return implied or "csv"
    fmt = str(fmt).strip().lower()
    if fmt not in FORMATS:
        raise OptionError(f"--format {fmt!r}: use csv or jsonl")
    if implied is not None and implied != fmt:
        raise OptionError(f"--format {fmt} but --out {out} is named like {implied}; "
                          f"give a .{'jsonl' if fmt == 'jsonl' else 'csv'} name or "
                          f"--format {implied}")
    return fmt


def model_record_path(out: Path) -> Path:
    """The side file that names the model, format and shard that wrote ``out``."""
    return out.with_name(out.name + ".model.json")


def model_record(model_path: Path, sha256: str, fmt: str,
                  shard: tuple[int, int] | None) -> dict[str, Any]:
    return {"model": str(model_path.resolve()), "sha256": sha256, "format": fmt,
            "shard": f"{shard[0]}/{shard[1]}" if shard else None}


def check_model_record(out: Path, wanted: dict[str, Any]) -> bool:
    """Refuse resuming ``out`` with another model, format or shard than the ones that wrote it.

    Returns:
        Whether the side file was there (outputs of older alft versions have none).

    Raises:
        OptionError: the side file names another model, format or shard, or is unreadable.
    """
    path = model_record_path(out)
    if not path.exists():
        return False
    fix = "use --overwrite to tag again from scratch, or another --out"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(recorded, dict) or "sha256" not in recorded:
            raise ValueError("no sha256")
    except (OSError, ValueError) as exc:
        raise OptionError(f"{path}: unreadable record of the model that wrote {out} ({exc}); "
                          f"{fix}") from None
    if recorded["sha256"] != wanted["sha256"]:
        raise OptionError(
            f"{out} was written by another model ({Path(str(recorded.get('model'))).name}, "
            f"sha256 {str(recorded['sha256'])[:12]}); this one is "
            f"{Path(wanted['model']).name} (sha256 {wanted['sha256'][:12]}): resuming would "
            f"mix their tags; {fix}")
    if recorded.get("format", wanted["format"]) != wanted["format"]:
        raise OptionError(f"{out} was written as {recorded['format']}, this run writes "
                          f"{wanted['format']}; give --format {recorded['format']} or {fix}")
    if recorded.get("shard") != wanted["shard"]:
        raise OptionError(f"{out} was written for shard {recorded.get('shard') or 'all'}, this "
                          f"run is shard {wanted['shard'] or 'all'}; {fix}")
    return True


def repair_tail(path: Path) -> int:
    """Cut a partial last line (a run killed mid-write); returns the bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        end = size
        block = 1 << 16
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            chunk = handle.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            handle.truncate(keep)
    return size - keep


def read_done(out: Path, fmt: str, classes: list[str]) -> set[str]:
    """Filenames already in ``out``; checks that it was written for these classes."""
    done: set[str] = set()
    with open(out, encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return done
            if header != _header(classes):
                raise OptionError(f"{out}: its columns are not this model's "
                                  f"({', '.join(header[:4])}...); use another --out")
            for row in reader:
                if row:
                    done.add(row[0])
            return done
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name, probabilities = record["filename"], record["probabilities"]
            except (ValueError, KeyError, TypeError):
                raise OptionError(f"{out} line {number} is not an alft tag record; "
                                  "use another --out") from None
            if number == 1 and list(probabilities) != classes:
                raise OptionError(f"{out}: written for other classes than this model's; "
                                  "use another --out")
            done.add(name)
    return done


class Writer:
    """Appends rows to the output; each batch is flushed, so a kill loses at most one."""

    def __init__(self, handle: IO[str], fmt: str, classes: list[str],
                 thresholds: np.ndarray, header: bool) -> None:
        self.handle = handle
        self.fmt = fmt
        self.classes = classes
        self.thresholds = thresholds
        self.csv = csv.writer(handle, lineterminator="\n") if fmt == "csv" else None
        if header and self.csv is not None:
            self.csv.writerow(_header(classes))
            handle.flush()

    def write(self, keys: list[str], probabilities: np.ndarray) -> None:
        hits = probabilities >= self.thresholds[None, :]
        for key, p, hit in zip(keys, probabilities, hits):
            labels = [c for c, h in zip(self.classes, hit) if h]
            if self.csv is not None:
                self.csv.writerow([key, *(f"{v:.{DECIMALS}f}" for v in p), ";".join(labels)])
            else:
                self.handle.write(json.dumps({
                    "filename": key,
                    "probabilities": {c: round(float(v), DECIMALS)
                                      for c, v in zip(self.classes, p)},
                    "labels": labels}) + "\n")
        self.handle.flush()


class SkipLog:
    """The ``<out>.skipped.csv`` side file, created at the first unusable file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def add(self, key: str, reason: str) -> None:
        if self._handle is None:
            self._handle = open(self.path, "w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._handle, lineterminator="\n")
            self._writer.writerow(["filename", "reason"])
        self._writer.writerow([key, reason])
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
