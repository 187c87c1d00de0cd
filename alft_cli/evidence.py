"""The model's suggestions against the answers people gave: evidence without gold labels.

A query file written by a model holds its probabilities (``p_<class>``); its suggestion for
an image is the classes with p >= 0.5. Once people have answered those images, the
agreement of suggestions and answers (micro-F1) says how good the model that suggested was,
out of sample: the images were not in its training set. It is a round behind the current
model and measured on queried (hard or unusual) images, so it errs on the cautious side.
``auto-f1`` steers by it when there are no validation labels; ``status`` and ``finetune`` show
it; ``import-labels`` uses the suggestions to ask whether answers that all equal them were
reviewed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alft_cli.labels.base import SUGGEST_THRESHOLD
from alft_cli.project import Project
from alft_cli.store import decode_y

# Fewer answered suggestions than this say too little about a model.
MIN_SUGGESTIONS_FOR_EVIDENCE = 10


@dataclass(frozen=True)
class SuggestionEvidence:
    """How the suggestions of one query matched the answers given since.

    Attributes:
        round: the round whose query file held the suggestions.
        model_round: the round whose model made them.
        answered: suggested images answered since.
        micro_f1: micro-F1 of the suggestions (p >= 0.5) against the answers.
        exact: answers identical to the suggestion (every class).
    """

    round: int
    model_round: int
    answered: int
    micro_f1: float
    exact: int

    def describe(self) -> str:
        return (f"round {self.model_round}'s suggestions on the {self.answered} images of "
                f"round {self.round}'s query reached micro-F1 {self.micro_f1:.3f} against "
                "the labels given")

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.round, "model_round": self.model_round,
                "answered": self.answered, "micro_f1": self.micro_f1, "exact": self.exact}


def read_suggestions(path: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """filename -> probabilities from a query file's ``p_<class>`` columns ({} if there are
    none or the file is unreadable)."""
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


def suggested(probabilities: np.ndarray) -> np.ndarray:
    """The 0/1 suggestion(s) for probabilities (p >= 0.5; NaN is never suggested)."""
    return (np.nan_to_num(probabilities, nan=0.0) >= SUGGEST_THRESHOLD).astype(np.uint8)


def answers_by_id(project: Project) -> dict[int, str]:
    """Every answer people gave: pool labels and the answers routed to validation."""
    return {**project.store.val_answers(), **project.store.labels()}


def last_answered_suggestions(project: Project,
                              minimum: int = MIN_SUGGESTIONS_FOR_EVIDENCE
                              ) -> SuggestionEvidence | None:
    """The evidence of the latest query whose suggestions have at least ``minimum`` answers
    (None when no query has)."""
    from alft_cli.metrics import multilabel_metrics

    store = project.store
    answers = answers_by_id(project)
    ids = store.ids_by_key()
    classes = project.classes
    for rec in reversed(store.rounds()):
        if rec.model_round is None or not rec.query_file:
            continue
        probabilities = read_suggestions(project.resolve(rec.query_file), classes)
        pairs = [(decode_y(answers[ids[k]]), p) for k, p in probabilities.items()
                 if k in ids and ids[k] in answers]
        if len(pairs) < max(1, minimum):
            continue
        y_true = np.stack([y for y, _ in pairs])
        y_score = np.stack([p for _, p in pairs])
        f1 = float(multilabel_metrics(y_true, y_score, classes)["micro_f1"])
        exact = int((suggested(y_score) == y_true).all(axis=1).sum())
        return SuggestionEvidence(rec.round, rec.model_round, len(pairs), f1, exact)
    return None
