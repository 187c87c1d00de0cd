"""Checking an answer file against the project before anything is written.

:func:`plan_import` matches every row of a parsed label file to a sample and decides what it
does to the store: add a label, change one (only with ``overwrite``), or nothing (the same
label again). Every problem (an unknown or skipped file, a val/test sample, a conflict
without ``overwrite``) is collected and the whole file refused at once, so one round of fixes
is enough and a refused file leaves the project as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alft_cli.errors import LabelFileError
from alft_cli.labels import ParsedLabels, match_keys
from alft_cli.labels.base import MAX_LISTED_PROBLEMS
from alft_cli.project import Project
from alft_cli.store import encode_y


@dataclass
class ImportPlan:
    """What importing a file would do: ``new`` holds (sample id, encoded label, round)."""

    new: list[tuple[int, str, int]]
    added: int
    changed: int
    unchanged: int
    labeled_before: int


def plan_import(project: Project, parsed: ParsedLabels, file: Path,
                overwrite: bool) -> ImportPlan:
    """Match ``parsed`` rows to samples; raise :class:`LabelFileError` listing every problem.

    A label belongs to the round of the query that asked for its image; a label for an image
    nobody queried belongs to the current round.
    """
    store = project.store
    ids = store.ids_by_key()
    splits = store.split_of()
    skipped = dict(store.skipped())
    mapping, _unmatched = match_keys([r.ref for r in parsed.rows], ids.keys())
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
        listed = problems[:MAX_LISTED_PROBLEMS]
        if len(problems) > MAX_LISTED_PROBLEMS:
            listed.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more")
        raise LabelFileError(
            f"{file}: {len(problems)} problem{'s' if len(problems) != 1 else ''}; "
            "nothing was imported", details=listed)
    return ImportPlan(new, len(new) - changed, changed, unchanged, len(existing))


def _names(y: str, classes: Sequence[str]) -> str:
    return ";".join(c for c, v in zip(classes, y) if v == "1")
