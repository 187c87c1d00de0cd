"""Random draws by a seeded order of the images, not by their positions in a list.

Every image gets a key, a 64-bit hash of (seed, image id); a random draw of ``k`` takes the
``k`` candidates with the smallest keys. The keys of distinct ids are distinct (the hash is a
bijection of the id for a fixed seed) and, over seeds, behave as independent uniform draws, so
the ``k`` smallest are a uniform sample without replacement - as ``Generator.choice`` gives -
with two properties a draw over list positions lacks:

- **The same image gets the same chance whatever else is in the list.** A draw does not
  depend on the order the pool was listed in, and two projects that differ by a few labeled
  images draw nearly the same new ones.
- **The random part of a split batch is what random would have drawn.** ``auto`` takes its
  MGE+Clustering picks, then the smallest keys among the rest: random's batch with its
  MGE+Clustering share swapped in (less any random picks MGE+Clustering already took). In a
  simulation, where every strategy of a seed starts from the same labels, the default and
  random then share most of their random labels, so their difference measures the swap and
  not the luck of two unrelated draws (issue 18: at 5-10 seeds that luck moved random against
  a second stream of itself by up to 5 F1 points at one budget).

The hash is SplitMix64's output function (Steele, Lea & Flood, OOPSLA 2014), vectorised with
wrapping uint64 arithmetic; ``tests/test_draws.py`` checks it against a plain-Python copy.
"""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def mix64(x: int) -> int:
    """SplitMix64's output for state ``x`` (plain Python: the reference the arrays follow)."""
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _mix64_array(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # multiplication modulo 2**64 is the point
        z = x + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def order_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """The draw-order key of each image id under ``seed`` (uint64; smaller is drawn first)."""
    salt = np.uint64(mix64(int(seed) & _MASK))
    return _mix64_array(np.asarray(ids).astype(np.int64).view(np.uint64) ^ salt)


def draw(ids: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Positions in ``ids`` of a uniform draw of ``min(k, len(ids))`` without replacement, in
    draw order: the smallest keys first. O(n) time and memory for n ids (a partition, then a
    sort of the k drawn)."""
    keys = order_keys(ids, seed)
    k = min(int(k), len(keys))
    if k <= 0:
        return np.zeros(0, np.int64)
    first = np.argpartition(keys, k - 1)[:k]
    return first[np.argsort(keys[first], kind="stable")].astype(np.int64)


def round_seed(seed: int, round_: int) -> int:
    """The seed of every draw in one round (random draws, k-means++ starts): a hash of (seed,
    round), so the same command in the next round draws afresh while the same round and seed
    repeat the same query.

    Issue 18's repeated-seed defect: draws then took positions in the id-sorted list of
    unlabeled images, and with one seed for every round the next round (the same list minus a
    few) drew the neighbours of the previous picks: seven rounds of the plain command covered
    16 of UC Merced's 21 class folders where independent draws covered 19 after three.
    """
    return int(np.random.SeedSequence([int(seed), int(round_)]).generate_state(1)[0])
