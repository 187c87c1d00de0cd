"""Checking an answer file against the project before anything is written, then writing it.

:func:`plan_import` matches every row of a parsed label file to a sample and decides what it
does to the store: add a label, change one (only with ``overwrite``), or nothing (the same
label again); with a val share (``--val-from-answers``) it also picks the new answers that go
to the val split (:mod:`alft_cli.valsplit`). Every problem (an unknown or skipped file, a
val/test sample, a conflict without ``overwrite``) is collected and the whole file refused at
once, so one round of fixes is enough and a refused file leaves the project as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alft_cli.errors import LabelFileError
from alft_cli.evidence import read_suggestions, suggested
from alft_cli.labels import ParsedLabels, match_keys
from alft_cli.labels.base import MAX_LISTED_PROBLEMS
from alft_cli.project import Project
from alft_cli.store import decode_y, encode_y
from alft_cli.valsplit import choose_for_val

# Fewer answers than this that all equal the suggestions may well be a good model.
MIN_ROWS_TO_QUESTION = 5


@dataclass
class ImportResult:
    """What import-labels did (or would do, with dry_run).

    ``unanswered``: rows with an empty answer, not imported (their images stay pending).
    ``to_val``: new answers routed to the val split (``val_from_answers``).
    """

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
    unanswered: int = 0
    to_val: int = 0


@dataclass
class ImportPlan:
    """What importing a file would do.

    Attributes:
        new: (sample id, encoded label, round) of training labels to add or change.
        added, changed, unchanged: counts over every answered row (val answers included).
        labeled_before: training labels stored before.
        to_val: (sample id, encoded label, round) of new answers routed to the val split.
        val_changed: (sample id, encoded label) of val answers replaced (``overwrite``).
        with_suggestion: new or changed answers to images the model made a suggestion for.
        as_suggested: how many of those equal the suggestion exactly.
        train_added: training labels that did not exist before.
    """

    new: list[tuple[int, str, int]]
    added: int
    changed: int
    unchanged: int
    labeled_before: int
    to_val: list[tuple[int, str, int]] = field(default_factory=list)
    val_changed: list[tuple[int, str]] = field(default_factory=list)
    with_suggestion: int = 0
    as_suggested: int = 0
    train_added: int = 0

    @property
    def answered_ids(self) -> list[int]:
        """Every sample whose query this import answers."""
        return [s for s, _, _ in self.new] + [s for s, _, _ in self.to_val]


def plan_import(project: Project, parsed: ParsedLabels, file: Path, overwrite: bool,
                val_fraction: float = 0.0) -> ImportPlan:
    """Match ``parsed`` rows to samples; raise :class:`LabelFileError` listing every problem.

    A label belongs to the round of the query that asked for its image; a label for an image
    nobody queried belongs to the current round. Answers routed to val earlier are checked
    like labels (the same answer again is unchanged; another one needs ``overwrite``).
    """
    store = project.store
    ids = store.ids_by_key()
    splits = store.split_of()
    skipped = dict(store.skipped())
    mapping, _unmatched = match_keys([r.ref for r in parsed.rows], ids.keys())
    existing = store.labels()
    val_answers = store.val_answers()
    pending_round = store.pending_round_of()
    current = store.current_round()
    problems: list[str] = []
    new: list[tuple[int, str, int]] = []
    val_changed: list[tuple[int, str]] = []
    key_of: dict[int, str] = {}
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
        key_of[sample] = key
        y = encode_y(row.labels)
        in_val = sample in val_answers
        if splits[sample] != "pool" and not in_val:
            problems.append(f"{where}: {key} is a {splits[sample]} sample; only pool "
                            "samples take imported labels")
            continue
        old = val_answers[sample] if in_val else existing.get(sample)
        if old == y:
            unchanged += 1
            continue
        if old is not None and not overwrite:
            problems.append(f"{where}: {key} already labeled "
                            f"[{_names(old, project.classes)}]"
                            + (" (its answer went to the validation set)" if in_val else "")
                            + f", file says [{_names(y, project.classes)}]; use --overwrite "
                            "to replace")
            continue
        if old is not None:
            changed += 1
        if in_val:
            val_changed.append((sample, y))
            continue
        round_ = pending_round.get(sample, current if current is not None else 0)
        new.append((sample, y, round_))
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        if len(problems) > MAX_LISTED_PROBLEMS:
            listed.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more")
        raise LabelFileError(
            f"{file}: {len(problems)} problem{'s' if len(problems) != 1 else ''}; "
            "nothing was imported", details=listed)
    added = len(new) + len(val_changed) - changed
    first_answers = [s for s, _, _ in new if s not in existing]
    for_val = set(choose_for_val(first_answers, val_fraction,
                                 len(existing) + len(val_answers), len(val_answers),
                                 project.config.seed))
    plan = ImportPlan([n for n in new if n[0] not in for_val], added, changed, unchanged,
                      len(existing), [n for n in new if n[0] in for_val], val_changed)
    plan.train_added = sum(1 for s, _, _ in plan.new if s not in existing)
    plan.with_suggestion, plan.as_suggested = _compare_with_suggestions(project, new, key_of)
    return plan


def _compare_with_suggestions(project: Project, answers: list[tuple[int, str, int]],
                              key_of: dict[int, str]) -> tuple[int, int]:
    """(answers to images the model made a suggestion for, answers equal to it). An answer
    belongs to the round that queried its image; that round's query file holds the
    suggestions."""
    files = {rec.round: rec.query_file for rec in project.store.rounds()
             if rec.model_round is not None and rec.query_file}
    by_round: dict[int, dict[str, np.ndarray]] = {}
    compared = same = 0
    for sample, y, round_ in answers:
        if round_ not in files:
            continue
        if round_ not in by_round:
            by_round[round_] = read_suggestions(project.resolve(files[round_]),
                                                project.classes)
        p = by_round[round_].get(key_of[sample])
        if p is None:
            continue
        compared += 1
        same += bool((suggested(p) == decode_y(y)).all())
    return compared, same


def store_answers(project: Project, file: Path, sha256: str, fmt: str,
                  plan: ImportPlan) -> None:
    """Write one import's answers (inside the caller's transaction): training labels, val
    answers, and the queries they close."""
    store = project.store
    if store.current_round() is None:
        # Labels before any query (an existing labeled subset): open round 0.
        store.add_round(0, "imported", 0, project.config.seed, None, None)
    import_id = store.add_import(str(file.resolve()), sha256, fmt, plan.added, plan.changed,
                                 plan.unchanged)
    store.upsert_labels((s, y, r, import_id) for s, y, r in plan.new)
    store.add_val_answers((s, y, r, import_id) for s, y, r in plan.to_val)
    store.set_gold(plan.val_changed)
    store.mark_labeled(plan.answered_ids)


def suggestions_note(plan: ImportPlan) -> str | None:
    """The question to ask when every answer equals the model's suggestion."""
    n = plan.with_suggestion
    if n >= MIN_ROWS_TO_QUESTION and plan.as_suggested == n:
        return (f"{n} of {n} rows equal the model's suggestions: were they reviewed? (a "
                "query file imported unchanged accepts every suggestion)")
    return None


def _names(y: str, classes: Sequence[str]) -> str:
    return ";".join(c for c, v in zip(classes, y) if v == "1") or "none"
