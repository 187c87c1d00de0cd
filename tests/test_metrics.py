"""Metrics agree with scikit-learn, including classes with no positives or no predictions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
)

from alft_cli.metrics import average_precision, best_f1_thresholds, multilabel_metrics

TOL = 1e-9


def _data(seed: int, n: int = 60, c: int = 7):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(int)
    y[:, 0] = 0  # no positives
    y[:3] = 0  # samples without labels
    score = np.clip(0.35 * y + rng.random((n, c)) * 0.7, 0, 1)
    score[:, 1] = 0.1  # never predicted, all tied
    score[:, 2] = np.round(score[:, 2], 1)  # many ties
    return y, score


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, "per_class"])
def test_agrees_with_sklearn(seed, threshold):
    y, score = _data(seed)
    c = y.shape[1]
    thr = np.linspace(0.3, 0.7, c) if threshold == "per_class" else threshold
    pred = (score >= thr).astype(int)
    classes = [f"c{j}" for j in range(c)]
    m = multilabel_metrics(y, score, classes, threshold=thr)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kw = {"zero_division": 0}
        assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", **kw), abs=TOL)
        assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", **kw), abs=TOL)
        assert m["samples_f1"] == pytest.approx(f1_score(y, pred, average="samples", **kw), abs=TOL)
        for avg in ("micro", "macro"):
            p, r, _, _ = precision_recall_fscore_support(y, pred, average=avg, **kw)
            assert m[f"{avg}_precision"] == pytest.approx(p, abs=TOL)
            assert m[f"{avg}_recall"] == pytest.approx(r, abs=TOL)
        p, r, f, s = precision_recall_fscore_support(y, pred, average=None, **kw)
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred), abs=TOL)

    has_pos = y.sum(axis=0) > 0
    assert m["mAP"] == pytest.approx(
        average_precision_score(y[:, has_pos], score[:, has_pos], average="macro"), abs=TOL
    )
    for j, name in enumerate(classes):
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(p[j], abs=TOL)
        assert pc["recall"] == pytest.approx(r[j], abs=TOL)
        assert pc["f1"] == pytest.approx(f[j], abs=TOL)
        assert pc["support"] == s[j]
        if has_pos[j]:
            assert pc["ap"] == pytest.approx(average_precision_score(y[:, j], score[:, j]), abs=TOL)
        else:
            assert pc["ap"] == 0.0  # zero_division=0, as sklearn
    assert m["n"] == y.shape[0]
    json.dumps(m, allow_nan=False)  # plain Python numbers only


def test_hand_made():
    y = np.array([[1, 0], [1, 1], [0, 0]])
    score = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.1]])
    m = multilabel_metrics(y, score, ["a", "b"])
    # a: tp 1 (row 0), fp 1 (row 2), fn 1 (row 1); b: tp 1.
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["f1"] == 1.0
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # Ranking for a: 0.9 (pos), 0.6 (neg), 0.4 (pos) -> AP = 0.5 * 1 + 0.5 * 2/3.
    assert m["per_class"]["a"]["ap"] == pytest.approx(0.5 + 1 / 3)
    assert average_precision(np.array([1, 0, 1]), np.array([0.9, 0.6, 0.4])) == pytest.approx(
        0.5 + 1 / 3
    )


def test_no_positives_anywhere():
    y = np.zeros((4, 2), dtype=int)
    m = multilabel_metrics(y, np.full((4, 2), 0.7), ["a", "b"])
    assert m["mAP"] == 0.0
    assert m["micro_f1"] == 0.0 and m["hamming_loss"] == 1.0


def test_bad_shapes():
    with pytest.raises(ValueError):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3)), ["a", "b"])
    with pytest.raises(ValueError):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["a"])
    with pytest.raises(ValueError):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["a", "b"], np.zeros(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_f1_thresholds_maximise_f1(seed):
    y, score = _data(seed)
    thr = best_f1_thresholds(y, score, default=0.5)
    assert thr.shape == (y.shape[1],)
    assert thr[0] == 0.5  # no positives: default kept
    for j in range(1, y.shape[1]):
        # Brute force over every candidate threshold (each distinct score, and above all).
        candidates = np.r_[np.unique(score[:, j]), np.inf]
        best = max(_f1(y[:, j], score[:, j] >= t) for t in candidates)
        assert _f1(y[:, j], score[:, j] >= thr[j]) == pytest.approx(best, abs=TOL)


def _f1(truth, pred):
    truth = truth.astype(bool)
    tp = np.sum(truth & pred)
    den = 2 * tp + np.sum(~truth & pred) + np.sum(truth & ~pred)
    return 2 * tp / den if den else 0.0


def test_best_f1_threshold_is_between_scores():
    y = np.array([[1], [1], [0], [0]])
    score = np.array([[0.9], [0.7], [0.3], [0.1]])
    assert best_f1_thresholds(y, score)[0] == pytest.approx(0.5)
