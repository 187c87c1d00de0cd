"""A validation set grown from the answers, for projects without gold labels.

Most teams have no gold val/test labels, so every metric is ``-`` and ``auto`` can only judge
the model by its last suggestions. With ``--val-from-answers F`` (at ``init-pool`` for the
whole project, or at ``import-labels`` for one file) a seeded share of each imported batch
of new answers goes to the val split instead of the training labels: those images are
evaluated on after every ``finetune`` and never trained on nor queried again. The share is
kept over the whole project (each batch tops the val answers up to F of all answers), so
small batches do not round it away.

The bias (README, "No gold labels?"): the images are the queried ones - random in round 0,
then the ones the strategy found uncertain or unusual - not a random sample of the archive.
Their F1 is typically lower than on the archive as a whole (hard images) and class
frequencies follow what was queried. The set also grows each round, so rounds are scored on
different sets. It is still the same kind of evidence for every model evaluated on it, fit
for telling a good model from a bad one, for ``auto``, and for ``export
--calibrate-thresholds`` - not for reporting the archive-wide accuracy.
"""

from __future__ import annotations

import json

import numpy as np

from alft_cli.errors import OptionError
from alft_cli.store import Store

META_KEY = "val_from_answers"


def check_fraction(fraction: float | None) -> float | None:
    """None or a share in [0, 1)."""
    if fraction is None:
        return None
    if not 0 <= fraction < 1:
        raise OptionError(f"--val-from-answers {fraction}: a share in [0, 1), e.g. 0.2")
    return float(fraction)


def project_fraction(store: Store) -> float:
    """The project's share of answers routed to val (0 when never set)."""
    raw = json.loads(store.get_meta(META_KEY) or "null") or {}
    return float(raw.get("fraction", 0.0))


def refuse_with_gold_val(store: Store, fraction: float) -> None:
    """Answers and gold labels in one val split would be scored as one: refuse the mix."""
    if not fraction:
        return
    gold_val = len(store.gold("val")[0]) - len(store.val_answers())
    if gold_val:
        raise OptionError(f"--val-from-answers grows a validation set for projects without "
                          f"gold val labels; this one has {gold_val} gold val images")


def choose_for_val(added: list[int], fraction: float, answers_before: int, val_before: int,
                   seed: int) -> list[int]:
    """The new answers (sample ids) to route to val: enough to bring the val answers to
    ``fraction`` of all answers, chosen at random (seeded by ``seed`` and the project's
    history, so an import is reproducible).

    Args:
        added: sample ids answered for the first time in this import.
        fraction: the share of all answers that should be val answers.
        answers_before: answers stored before this import (training labels + val answers).
        val_before: val answers among them.
        seed: the project seed.
    """
    if not fraction or not added:
        return []
    want = int(round(fraction * (answers_before + len(added)))) - val_before
    k = min(max(want, 0), len(added))
    if k == 0:
        return []
    rng = np.random.default_rng([seed, answers_before, 0x7A1])
    chosen = rng.choice(np.array(sorted(added), dtype=np.int64), size=k, replace=False)
    return sorted(int(s) for s in chosen)
