"""When to stop labeling: stabilizing predictions, adapted to multi-label (pure numpy).

Bloodgood & Vijay-Shanker (CoNLL 2009, "A method for stopping active learning based on
stabilizing predictions and the need for user-adjustable stopping"): keep a fixed set of
unlabeled examples, the *stop set*; after every round, compare the new model's predictions on
it with the previous model's (Cohen's kappa); once the agreement has stayed at or above a
threshold (0.99) over a window of rounds (3; the rule averages the window's kappas), more
labels are unlikely to change the model, so stop. Bloodgood & Grothendieck (CoNLL 2013) bound
the F-measure difference between two binary models whose kappa is ``T`` by ``4 (1 - T) / T``
(0.04 at 0.99), which is why the threshold is that high.

Multi-label adaptation used by alft:

- The stop set is drawn once per project, seeded by the project seed, from the pool at the
  first fine-tuning (a uniform sample of at most :data:`STOP_SET_SIZE` pool images) and never
  changes afterwards (the ids are in the store).
- A round's predictions are the sigmoid outputs thresholded at 0.5 (the threshold of the
  reported F1), one bit per (image, class), stored per round.
- Agreement of two consecutive trained rounds = the mean over classes of the per-class Cohen's
  kappa (each class is a binary rater pair), plus the share of images whose predicted label set
  changed. A class that both rounds predict identically constant (e.g. never) has no defined
  kappa (its expected agreement is 1) and is left out of the mean; if no class is defined, the
  kappa is undefined (None) and never counts as stable - a model that predicts nothing is not
  a model to stop at.
- Stop-set images stay in the pool: strategies may query them and people may label them.
  They stay in the stop set (it is fixed), but from the round they are labeled (or leave the
  pool) they are left out of the agreement, because the stop set must be *unlabeled* data: a
  model reproducing the labels it was trained on agrees with itself for the wrong reason.
  Excluding them from queries instead would change what every strategy picks (on UC Merced a
  500-image stop set is half of the 1050-image pool) and so the experiment the signal is meant
  to observe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alft_cli.errors import OptionError

# At most this many pool images form the stop set. A trade-off: with 500 images one changed
# prediction on a class with 30 positives moves that class's kappa by about 0.02, and the
# extra prediction at fine-tune time stays a fraction of one evaluation pass (val + test).
STOP_SET_SIZE = 500
DEFAULT_KAPPA = 0.99
DEFAULT_WINDOW = 3
PREDICTION_THRESHOLD = 0.5
# Stream tag of the stop-set draw, so that it is independent of the other draws seeded by the
# project seed (split, initial set, queries).
_STOP_SET_STREAM = 1509


def draw_stop_set(pool_ids: np.ndarray, seed: int, size: int = STOP_SET_SIZE) -> np.ndarray:
    """A seeded uniform sample of ``min(size, len(pool_ids))`` pool ids, sorted.

    The same pool and seed give the same stop set whatever order the ids come in.
    """
    ids = np.unique(np.asarray(pool_ids, dtype=np.int64))
    rng = np.random.default_rng([int(seed), _STOP_SET_STREAM])
    take = min(int(size), len(ids))
    return np.sort(rng.choice(ids, size=take, replace=False)) if take else ids[:0]


def pack(bits: np.ndarray) -> bytes:
    """A 0/1 array as bytes (8 values per byte, row-major); see :func:`unpack`."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=None).tobytes()


def unpack(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack` for an array of ``shape``; bool."""
    count = int(np.prod(shape))
    flat = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=count)
    return flat.astype(bool).reshape(shape)


def class_kappas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cohen's kappa of each column of two (N, C) 0/1 prediction matrices.

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the share of equal predictions and ``p_e``
    the agreement expected from the two raters' positive rates; equals
    ``sklearn.metrics.cohen_kappa_score(a[:, c], b[:, c])`` (tested). NaN where it is
    undefined: both columns are the same constant (``p_e = 1``), or N = 0.

    Returns:
        (C,) float64 kappas in [-1, 1] or NaN.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (N, C) arrays of one shape, got {a.shape} and {b.shape}")
    n = a.shape[0]
    # Integer counts keep the undefined case exact: n^2 p_e is an integer.
    agree = (a == b).sum(axis=0).astype(np.int64)
    pos_a = a.sum(axis=0).astype(np.int64)
    pos_b = b.sum(axis=0).astype(np.int64)
    expected = pos_a * pos_b + (n - pos_a) * (n - pos_b)  # n^2 p_e
    den = n * n - expected
    num = n * agree - expected
    out = np.full(a.shape[1], np.nan)
    ok = den != 0
    out[ok] = num[ok] / den[ok]
    return out


def agreement(previous: np.ndarray, current: np.ndarray,
              keep: np.ndarray | None = None) -> dict[str, Any]:
    """How much two rounds' thresholded stop-set predictions agree.

    Args:
        previous: (N, C) 0/1 predictions of the earlier round.
        current: (N, C) 0/1 predictions of the later round.
        keep: (N,) bool, the images to compare (default all): alft passes the stop-set
            images that were unlabeled pool images for both rounds.

    Returns:
        JSON-ready ``{"kappa": mean per-class kappa over the classes where it is defined, or
        None; "changed": share of the compared images whose predicted label set changed;
        "n": images compared; "classes": classes with a defined kappa; "per_class": the
        per-class kappas (None where undefined)}``.
    """
    prev = np.asarray(previous, dtype=bool)
    cur = np.asarray(current, dtype=bool)
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        prev, cur = prev[keep], cur[keep]
    kappas = class_kappas(prev, cur)
    defined = kappas[~np.isnan(kappas)]
    n = int(prev.shape[0])
    changed = float(np.any(prev != cur, axis=1).mean()) if n else None
    return {
        "kappa": float(defined.mean()) if defined.size else None,
        "changed": changed,
        "n": n,
        "classes": int(defined.size),
        "per_class": [None if np.isnan(k) else float(k) for k in kappas],
    }


def stop_point(kappas: Sequence[float | None], threshold: float = DEFAULT_KAPPA,
               window: int = DEFAULT_WINDOW) -> int | None:
    """The first position where the rule fires in a sequence of consecutive rounds' kappas.

    ``kappas[i]`` is the agreement of round i with round i-1 (None where there is none: the
    first round, or an undefined kappa). The rule fires at i when the ``window`` kappas ending
    at i all exist and their mean is ``>= threshold``.
    """
    _check_rule(threshold, window)
    for i in range(window - 1, len(kappas)):
        if _holds(kappas[i - window + 1:i + 1], threshold):
            return i
    return None


def recommendation(rounds: Sequence[tuple[int, int, float | None]],
                   threshold: float = DEFAULT_KAPPA, window: int = DEFAULT_WINDOW,
                   stop_set_size: int | None = None) -> dict[str, Any]:
    """Whether to stop labeling now, judged on the latest trained rounds.

    Args:
        rounds: (round, labels trained on, kappa with the previous trained round or None) of
            every trained round, in order.
        threshold: kappa at or above which predictions count as stable (paper: 0.99).
        window: number of consecutive comparisons the mean is taken over (paper: 3).
        stop_set_size: for the message.

    Returns:
        ``{"recommended": bool, "reason": str}``.
    """
    _check_rule(threshold, window)
    last = list(rounds)[-window:]
    have = [k for _, _, k in last if k is not None]
    size = f"the {stop_set_size} stop-set images" if stop_set_size else "the stop set"
    if len(last) < window or len(have) < window:
        # Count the comparisons at the end of the run of rounds that have one.
        run = 0
        for _, _, k in reversed(list(rounds)):
            if k is None:
                break
            run += 1
        return {"recommended": False,
                "reason": f"not enough rounds to judge: the rule needs {window} consecutive "
                          f"round-to-round agreements on {size}, there are {run} so far"}
    mean = float(np.mean(have))
    span = f"rounds {last[0][0]}-{last[-1][0]}"
    if mean >= threshold:
        return {"recommended": True,
                "reason": f"predictions on {size} have stabilized: mean kappa {mean:.4f} over "
                          f"{span} >= {threshold:g} (Bloodgood & Vijay-Shanker 2009); more "
                          f"labels are unlikely to change the model much - consider stopping "
                          f"at {last[-1][1]} labels"}
    return {"recommended": False,
            "reason": f"predictions on {size} still change: mean kappa {mean:.4f} over {span} "
                      f"< {threshold:g}"}


def _holds(window_kappas: Sequence[float | None], threshold: float) -> bool:
    if any(k is None for k in window_kappas):
        return False
    return float(np.mean([float(k) for k in window_kappas])) >= threshold  # type: ignore[arg-type]


def _check_rule(threshold: float, window: int) -> None:
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"kappa threshold {threshold} must be in [-1, 1]")
    if window < 1:
        raise ValueError(f"window {window} must be at least 1")


# --------------------------------------------------------------------------------------------
# bookkeeping at fine-tune time (the store is passed in; no torch here)
# --------------------------------------------------------------------------------------------
@dataclass
class StopRound:
    """A round's stop-set predictions and their agreement with the previous round, ready to
    be saved in the fine-tuning's transaction (:meth:`save`)."""

    round: int
    ids: np.ndarray
    predicted: np.ndarray  # (n, C) bool
    known: np.ndarray  # (n,) bool: labeled or not in the pool when this round was trained
    stability: dict[str, Any] | None
    new_stop_set: dict[str, Any] | None  # set when this round draws the stop set

    def save(self, store: Any) -> None:
        """Write to ``store`` (inside the caller's transaction)."""
        if self.new_stop_set is not None:
            store.set_stop_set(self.ids.tolist(), self.new_stop_set)
        store.save_stop_predictions(self.round, pack(self.predicted), pack(self.known),
                                    len(self.ids), self.predicted.shape[1], self.stability)


def prepare_round(store: Any, round_: int, seed: int, n_classes: int,
                  predict: Callable[[np.ndarray], np.ndarray | None],
                  size: int = STOP_SET_SIZE) -> StopRound | None:
    """Predict the stop set with the round's model and compare with the previous round.

    The stop set is drawn here the first time (projects made before alft had one draw theirs
    at their next fine-tuning). ``predict(ids)`` returns sigmoid probabilities (the evaluation
    pass). Returns None when there is nothing to predict (an empty pool) or on a non-main
    rank.
    """
    ids = store.stop_set()
    new = None
    if len(ids) == 0:
        pool = store.sample_ids("pool")
        ids = draw_stop_set(pool, seed, size)
        if len(ids) == 0:
            return None
        new = {"seed": int(seed), "size": int(len(ids)), "pool": int(len(pool)),
               "drawn_at_round": int(round_)}
    p = predict(ids)
    if p is None:
        return None
    predicted = np.asarray(p) >= PREDICTION_THRESHOLD
    labeled = store.labels()
    split = store.split_of()
    known = np.array([int(s) in labeled or split.get(int(s)) != "pool" for s in ids],
                     dtype=bool)
    stability = None
    before = store.stop_predictions_before(round_)
    trained = [r.round for r in store.rounds() if r.round < round_ and r.model_file]
    # Consecutive rounds only: a previous model without stored predictions (trained before
    # alft had a stop set) leaves this round without a comparison.
    if before is not None and trained and before[0] == trained[-1]:
        prev_round, n, classes, prev_blob, prev_known_blob = before
        if n == len(ids) and classes == n_classes:
            prev = unpack(prev_blob, (n, classes))
            prev_known = unpack(prev_known_blob, (n,))
            stability = {"compared_with": int(prev_round),
                         **agreement(prev, predicted, keep=~(known | prev_known))}
    return StopRound(round_, ids, predicted, known, stability, new)


def rule_options(kappa: float | None, window: int | None) -> tuple[float, int]:
    """The stop rule's threshold and window (defaults: the paper's), checked."""
    kappa = DEFAULT_KAPPA if kappa is None else float(kappa)
    window = DEFAULT_WINDOW if window is None else int(window)
    if not 0 < kappa <= 1:
        raise OptionError(f"--stop-kappa {kappa:g}: must be in (0, 1]")
    if window < 1:
        raise OptionError(f"--stop-window {window}: must be at least 1")
    return kappa, window
