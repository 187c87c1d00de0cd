"""Random draws by a seeded order of image ids (alft_cli/draws.py)."""

import numpy as np
import pytest

from alft_cli.draws import draw, mix64, order_keys, round_seed
from alft_cli.errors import OptionError
from alft_cli.strategies import QueryContext, select


def test_mix64_is_splitmix64():
    # SplitMix64 seeded with 0 (Vigna's splitmix64.c: x += golden; mix) first returns this.
    assert mix64(0) == 0xE220A8397B1DCDAF
    # The vectorised keys follow the plain-Python reference bit for bit, negative ids too.
    ids = np.array([0, 1, 2, 7, 2**40 + 3, -5, 2**63 - 1], dtype=np.int64)
    for seed in (0, 1, 12345, -3, 2**64 + 9):
        salt = mix64(seed & (2**64 - 1))
        expected = [mix64((int(i) & (2**64 - 1)) ^ salt) for i in ids]
        assert order_keys(ids, seed).tolist() == expected


def test_a_draw_is_the_smallest_keys_in_order():
    ids = np.arange(100, 160)
    for k in (0, 1, 7, 60, 80):
        got = draw(ids, k, seed=11)
        keys = order_keys(ids, 11)
        assert got.tolist() == np.argsort(keys)[:min(k, len(ids))].tolist()


def test_a_draw_does_not_depend_on_the_list_order():
    ids = np.random.default_rng(1).choice(10**6, 500, replace=False)
    shuffled = np.random.default_rng(2).permutation(ids)
    assert ids[draw(ids, 20, 4)].tolist() == shuffled[draw(shuffled, 20, 4)].tolist()


def test_removing_a_few_candidates_keeps_the_rest_of_the_draw():
    """Why the default's random part tracks random: the same seed over a list missing some
    images draws the same images, except where a missing one was drawn (then the next)."""
    ids = np.arange(1000)
    full = ids[draw(ids, 20, 9)].tolist()
    gone = set(full[::4]) | set(range(500, 520))
    left = np.array([i for i in ids if i not in gone])
    got = left[draw(left, 20, 9)].tolist()
    kept = [i for i in full if i not in gone]
    assert got[:len(kept)] == kept
    assert set(got[len(kept):]).isdisjoint(full)


def test_draws_are_uniform_over_seeds():
    """Every id equally likely, and pairs as often together as sampling without replacement
    says (a chi-square bound on the counts and the exact pair rate k(k-1) / (n(n-1)))."""
    ids = np.arange(30) * 7919 + 3  # spread-out ids: the hash must not care
    k, runs = 6, 6000
    picks = np.array([draw(ids, k, s) for s in range(runs)])
    counts = np.bincount(picks.ravel(), minlength=30)
    expected = runs * k / 30
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 58.3  # 29 degrees of freedom, p = 0.001
    together = np.mean([(0 in row) and (1 in row) for row in picks])
    assert together == pytest.approx(k * (k - 1) / (30 * 29), abs=0.01)


def test_round_seed_separates_rounds_and_repeats_a_round():
    assert round_seed(0, 1) == round_seed(0, 1)
    assert len({round_seed(0, r) for r in range(50)}) == 50
    ids = np.arange(2000)
    first, second = ids[draw(ids, 20, round_seed(0, 1))], ids[draw(ids, 20, round_seed(0, 2))]
    assert len(set(first) & set(second)) <= 2  # independent rounds share ~0.2 images


def test_random_strategy_draws_by_image_id():
    h = np.zeros((50, 2))
    ids = np.arange(50) * 3 + 1000
    sel = select("random", QueryContext(h=h, p=None, budget=5, seed=2, ids=ids))
    assert sel.indices.tolist() == draw(ids, 5, 2).tolist()
    with pytest.raises(OptionError, match="distinct"):
        select("random", QueryContext(h=h, p=None, budget=5, seed=2, ids=np.zeros(50, int)))
    with pytest.raises(OptionError, match="ids"):
        select("random", QueryContext(h=h, p=None, budget=5, seed=2, ids=ids[:10]))
