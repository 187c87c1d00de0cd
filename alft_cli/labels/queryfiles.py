"""Query files: the to-label list ``alft query`` writes (CSV), with the model's suggestions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alft_cli.atomic import atomic_write_text
from alft_cli.labels.base import (
    LABEL_SEPARATOR,
    NOTHING,
    SUGGEST_THRESHOLD,
    check_writable_classes,
    csv_text,
)


@dataclass(frozen=True)
class QueryRow:
    """One image to label, as written to a query file.

    Attributes:
        filename: The sample key (POSIX path relative to the archive root).
        rank: 1 = label this first.
        score: The strategy's score for the image.
        cluster: The cluster the image was drawn from (-1 when there is none).
        probabilities: The model's per-class probabilities, or None when there is no model
            yet (the random initial set).
        quicklook: An RGB preview PNG of a multi-band sample, relative to the query file's
            folder (None for images people can open as they are).
    """

    filename: str
    rank: int
    score: float
    cluster: int
    probabilities: Sequence[float] | None = None
    quicklook: str | None = None


def suggested_classes(probabilities: Sequence[float] | None, classes: Sequence[str]) -> list[str]:
    """Return the classes with probability >= 0.5, in project order (none without a model)."""
    if probabilities is None:
        return []
    if len(probabilities) != len(classes):
        raise ValueError(f"{len(probabilities)} probabilities for {len(classes)} classes")
    # NaN compares False, so a broken probability is never suggested.
    return [c for c, p in zip(classes, probabilities) if float(p) >= SUGGEST_THRESHOLD]


def write_query_csv(path: Path, rows: Sequence[QueryRow], classes: Sequence[str]) -> None:
    """Write the to-label file: one row per image, in rank order as given.

    Columns: ``filename,rank,score,cluster,labels`` (then ``quicklook``, the preview PNG of
    a multi-band sample, when rows have one) then ``p_<class>`` per class. The ``p_``
    columns are left out when no row has probabilities (the random initial set).
    ``labels`` is pre-filled with the suggested classes (p >= 0.5, joined by ``;``; ``none``
    when no class reaches 0.5), so that importing the file unchanged means accepting the
    suggestions. It is empty without a model: an empty cell is no answer.

    Args:
        path: Where to write. The file is replaced atomically.
        rows: The images to label.
        classes: The project classes, in project order.

    Raises:
        ValueError: If a row's probabilities do not match the classes, or a class name
            cannot be written in the list format (it contains ``;``).
    """
    names = check_writable_classes(classes)
    with_p = any(r.probabilities is not None for r in rows)
    with_quicklook = any(r.quicklook for r in rows)
    header = ["filename", "rank", "score", "cluster", "labels"]
    if with_quicklook:
        header.append("quicklook")
    if with_p:
        header += [f"p_{c}" for c in names]
    lines = []
    for r in rows:
        # A model that sees no class suggests the answer "none": an empty cell would be no
        # answer, and importing the file unchanged would leave that image pending.
        suggested = ("" if r.probabilities is None else
                     LABEL_SEPARATOR.join(suggested_classes(r.probabilities, names)) or NOTHING)
        line = [r.filename, int(r.rank), fmt_float(r.score, ".6g"), int(r.cluster), suggested]
        if with_quicklook:
            line.append(r.quicklook or "")
        if with_p and r.probabilities is None:
            line += [""] * len(names)
        elif with_p:
            line += [fmt_float(p, ".4f") for p in r.probabilities]
        lines.append(line)
    atomic_write_text(path, csv_text(header, lines))


def fmt_float(value: float, spec: str) -> str:
    value = float(value)
    return format(value, spec) if math.isfinite(value) else ""


def finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def fresh_path(path: Path) -> Path:
    """``path``, or ``stem-2.csv``, ``stem-3.csv``... if taken.

    A replaced query never overwrites the file of the query it replaces: if the command dies
    before its transaction commits, the store still points at an intact old file.
    """
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
