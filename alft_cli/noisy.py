"""Supervised pretraining on noisy labels (weak labels from land-cover products or tools).

Cheap, plentiful, imperfect labels still teach useful features: the backbone is trained with
BCE on them (with its own head and its own classes, which may differ from the project's), then
the head is dropped and the backbone is what ``finetune`` starts from. Noisy labels are never
project labels and never touch val/test: rows for val/test images are dropped before training,
so evaluation stays on images the model has not been supervised on.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alft_cli.errors import LabelFileError
from alft_cli.labels import header_classes, match_keys, read_label_file


@dataclass
class NoisyLabels:
    """Noisy labels resolved against the project index."""

    classes: list[str]
    ids: np.ndarray          # sample ids (pool or excluded images only)
    y: np.ndarray            # (n, len(classes)) uint8
    dropped_eval: int        # rows for val/test images, left out
    notes: list[str]


def noisy_classes(path: Path) -> list[str]:
    """Classes of a noisy-label file: a one-hot header, or the names used in a list CSV."""
    try:
        return header_classes(path)
    except LabelFileError:
        text = path.read_text(encoding="utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        if "labels" not in fields or "filename" not in fields:
            raise
        names: dict[str, str] = {}
        for row in reader:
            for name in (row.get(fields["labels"]) or "").split(";"):
                name = name.strip()
                if name:
                    names.setdefault(name.casefold(), name)
        if not names:
            raise LabelFileError(f"{path}: no class names in the labels column") from None
        return sorted(names.values(), key=str.casefold)


def read_noisy_labels(path: Path, ids_by_key: dict[str, int], split_of: dict[int, str]
                      ) -> NoisyLabels:
    """Parse and match a noisy-label file; keep only images outside val/test."""
    path = Path(path)
    classes = noisy_classes(path)
    parsed = read_label_file(path, classes)
    mapping, unmatched = match_keys([r.ref for r in parsed.rows], ids_by_key.keys())
    ids, rows, dropped = [], [], 0
    for row in parsed.rows:
        key = mapping.get(row.ref)
        if key is None:
            continue
        sid = ids_by_key[key]
        if split_of[sid] in ("val", "test"):
            dropped += 1
            continue
        ids.append(sid)
        rows.append(row.labels)
    notes = list(parsed.notes)
    if unmatched:
        notes.append(f"{len(unmatched)} rows name images that are not in the project "
                     "(ignored)")
    if dropped:
        notes.append(f"{dropped} rows are for val/test images and were left out, so "
                     "evaluation stays clean")
    if not ids:
        raise LabelFileError(f"{path}: no usable rows (none matches a pool image)")
    return NoisyLabels(classes, np.array(ids, dtype=np.int64),
                       np.array(rows, dtype=np.uint8).reshape(len(ids), len(classes)),
                       dropped, notes)


def corrupt(y: np.ndarray, flip: float, seed: int) -> np.ndarray:
    """Flip each label bit with probability ``flip`` (seeded): controlled noise for studies."""
    rng = np.random.default_rng([seed, 4242])
    mask = rng.random(y.shape) < flip
    return np.where(mask, 1 - y, y).astype(np.uint8)
