"""Multi-label classification metrics (pure numpy).

The paper (Moellenbrok & Demir, IGARSS 2023) reports micro and macro F1 on BigEarthNet and
UCMerced multi-label; mean average precision is added as a threshold-free companion. Every
number follows scikit-learn's definitions with ``zero_division=0`` (the tests compare against
``f1_score``, ``precision_recall_fscore_support``, ``average_precision_score`` and
``hamming_loss``), computed from one pass of counts instead of one sklearn call per metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    # sklearn's zero_division=0: a ratio with an empty denominator is 0, not NaN.
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _check(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape:
        raise ValueError(
            f"y_true and y_score must both be (N, C), got {y_true.shape} and {y_score.shape}"
        )
    return y_true.astype(bool), y_score


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision of one class: ``sum_k (R_k - R_{k-1}) P_k`` over score thresholds.

    Same as ``sklearn.metrics.average_precision_score`` (tied scores form one threshold).

    Args:
        y_true: (N,) 0/1 labels with at least one positive.
        y_score: (N,) scores.

    Returns:
        AP in [0, 1].
    """
    y_true = np.asarray(y_true).astype(bool)
    order = np.argsort(-np.asarray(y_score, dtype=np.float64), kind="mergesort")
    score = np.asarray(y_score, dtype=np.float64)[order]
    hits = y_true[order]
    # Only the last index of each run of tied scores is a threshold.
    last = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(hits)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def multilabel_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    classes: Sequence[str],
    threshold: float | np.ndarray = 0.5,
) -> dict[str, Any]:
    """Micro/macro/sample-averaged precision, recall and F1, Hamming loss, mAP, per class.

    A class is predicted when its score is ``>= threshold`` (one value, or one per class as
    returned by ``best_f1_thresholds``).

    Args:
        y_true: (N, C) 0/1 ground truth.
        y_score: (N, C) scores, normally sigmoid probabilities.
        classes: the C class names, keys of ``per_class``.
        threshold: scalar or (C,) decision thresholds.

    Returns:
        JSON-ready dict: ``micro_f1``, ``macro_f1``, ``micro_precision``, ``micro_recall``,
        ``macro_precision``, ``macro_recall``, ``samples_f1``, ``hamming_loss``, ``mAP`` (mean
        AP over the classes with at least one positive), ``per_class``
        (``{name: {precision, recall, f1, ap, support}}``) and ``n`` (number of samples).
        Undefined ratios are 0.0, as sklearn's ``zero_division=0``: that includes the AP of a
        class without positives (``support`` 0; sklearn also gives 0.0; left out of ``mAP``)
        and ``mAP`` when no class has a positive.
    """
    truth, score = _check(y_true, y_score)
    n, c = truth.shape
    if len(classes) != c:
        raise ValueError(f"{len(classes)} class names for {c} columns")
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim not in (0, 1) or (thr.ndim == 1 and thr.shape[0] != c):
        raise ValueError(f"threshold must be a scalar or have {c} values, got shape {thr.shape}")
    pred = score >= thr

    tp = (truth & pred).sum(axis=0).astype(np.float64)
    fp = (~truth & pred).sum(axis=0).astype(np.float64)
    fn = (truth & ~pred).sum(axis=0).astype(np.float64)
    support = truth.sum(axis=0)

    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    # F1 from counts (2 tp / (2 tp + fp + fn)) equals 2PR/(P+R) and is 0 where that is 0/0,
    # which is how sklearn computes it.
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    t_tp, t_fp, t_fn = tp.sum(), fp.sum(), fn.sum()

    s_tp = (truth & pred).sum(axis=1)
    s_f1 = _div(2 * s_tp, truth.sum(axis=1) + pred.sum(axis=1))

    has_pos = support > 0
    ap = [average_precision(truth[:, j], score[:, j]) if has_pos[j] else 0.0 for j in range(c)]
    defined = [a for a, pos in zip(ap, has_pos, strict=True) if pos]

    return {
        "micro_f1": float(_div(2 * t_tp, 2 * t_tp + t_fp + t_fn)),
        "macro_f1": float(f1.mean()) if c else 0.0,
        "micro_precision": float(_div(t_tp, t_tp + t_fp)),
        "micro_recall": float(_div(t_tp, t_tp + t_fn)),
        "macro_precision": float(precision.mean()) if c else 0.0,
        "macro_recall": float(recall.mean()) if c else 0.0,
        "samples_f1": float(s_f1.mean()) if n else 0.0,
        "hamming_loss": float((truth != pred).mean()) if truth.size else 0.0,
        "mAP": float(np.mean(defined)) if defined else 0.0,
        "per_class": {
            str(name): {
                "precision": float(precision[j]),
                "recall": float(recall[j]),
                "f1": float(f1[j]),
                "ap": ap[j],
                "support": int(support[j]),
            }
            for j, name in enumerate(classes)
        },
        "n": int(n),
    }


def classes_without_positives(y_true: np.ndarray, classes: Sequence[str]) -> list[str]:
    """The classes that no sample of ``y_true`` has.

    Macro F1 (scikit-learn's definition, kept here) counts each of them as F1 0, while mAP
    leaves them out; ``alft status`` and ``alft report`` name them so that a low macro F1 on a
    small split is not mistaken for a bad model.

    Args:
        y_true: (N, C) 0/1 ground truth of one split.
        classes: the C class names.

    Returns:
        Their names, in class order (empty for an empty split: nothing is evaluated there).
    """
    y = np.asarray(y_true)
    if y.ndim != 2 or y.shape[0] == 0:
        return []
    if y.shape[1] != len(classes):
        raise ValueError(f"{len(classes)} class names for {y.shape[1]} columns")
    return [str(c) for c, n in zip(classes, y.sum(axis=0), strict=True) if n == 0]


def best_f1_thresholds(y_true: np.ndarray, y_score: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-class threshold that maximises that class's F1 (calibration on a validation set).

    Every distinct score is a candidate (predict ``score >= t``); among the best, the highest
    is kept and the returned threshold is placed halfway to the next lower score, so that
    every threshold in that gap, which has the same validation F1, is equally far away.
    Classes without positives (F1 is 0 whatever the threshold) keep ``default``.

    Args:
        y_true: (N, C) 0/1 ground truth.
        y_score: (N, C) scores.
        default: threshold for classes without positives.

    Returns:
        (C,) float64 thresholds.
    """
    truth, score = _check(y_true, y_score)
    n, c = truth.shape
    out = np.full(c, float(default))
    for j in range(c):
        n_pos = int(truth[:, j].sum())
        if n_pos == 0:
            continue
        order = np.argsort(-score[:, j], kind="mergesort")
        s = score[order, j]
        last = np.r_[np.flatnonzero(np.diff(s)), n - 1]
        tps = np.cumsum(truth[order, j])[last]
        predicted = last + 1
        # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (predicted + positives).
        f1 = 2.0 * tps / (predicted + n_pos)
        k = int(np.argmax(f1))  # first maximum = highest threshold
        chosen = s[last[k]]
        if k + 1 < last.size:
            mid = (chosen + s[last[k + 1]]) / 2.0
            # Adjacent floats have no midpoint; rounding down would admit the lower score.
            chosen = mid if mid > s[last[k + 1]] else chosen
        out[j] = chosen
    return out
