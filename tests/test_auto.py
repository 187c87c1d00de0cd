"""auto's decision core (alft_cli.auto): the probe and F1 against scikit-learn, known answers
on hand-made labeled sets where one part's labels are clearly the better ones."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import f1_score

from alft_cli import auto
from alft_cli.auto import MGE, RANDOM, AutoEvidence, decide, f1_micro_macro, part_of


def test_first_share_is_the_few_picks_needed_to_judge():
    """Before any MGE+Clustering label: MIN_PART picks, never under the floor or over the
    even split (round(share * k) picks, as strategies.uncertainty_share counts them)."""
    from alft_cli.strategies import uncertainty_share

    for k, picks in [(20, 2), (12, 2), (40, 4), (100, 10), (6, 2), (4, 2), (3, 2), (2, 1)]:
        assert uncertainty_share(auto.first_share(k), k, 1000, True) == picks, k
    assert auto.first_share(20) == auto.SHARE_MIN and auto.first_share(1) == auto.SHARE_PRIOR
    # Only a decision with no MGE+Clustering label and no judged round is a first batch.
    assert auto.for_batch(auto.prior(0, 40, "none", 0), 20).share == auto.SHARE_MIN
    assert auto.for_batch(auto.prior(1, 40, "none", 0), 20).share == auto.SHARE_PRIOR
    judged = auto.combine(auto.prior(0, 40, "none", 0), [0.9])
    assert auto.for_batch(judged, 20).share == judged.share


@pytest.mark.parametrize("n, d", [(30, 8), (12, 40)])  # primal and dual solves
def test_ridge_predict_equals_scikit_learn(n, d):
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(n, d)), rng.normal(size=(7, d))
    y = (rng.uniform(size=(n, 3)) < 0.4).astype(float)
    want = Ridge(alpha=0.05 * n).fit(x, y).predict(z)
    np.testing.assert_allclose(auto.ridge_predict(x, y, z, lam=0.05), want, atol=1e-8)


def test_f1_matches_scikit_learn_with_empty_classes():
    rng = np.random.default_rng(1)
    y = rng.uniform(size=(40, 6)) < 0.3
    pred = rng.uniform(size=(40, 6)) < 0.3
    y[:, 4] = pred[:, 4] = False  # a class nobody has and nobody predicts: F1 0, as sklearn
    micro, macro = f1_micro_macro(y, pred)
    assert micro == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert macro == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert f1_micro_macro(np.zeros((3, 2)), np.zeros((3, 2))) == (0.0, 0.0)


def test_parts_come_from_the_round_strategy_and_cluster():
    assert part_of("random", -1) == RANDOM
    assert part_of("mge-clustering", 3) == MGE
    assert part_of("auto", 0) == MGE and part_of("auto", -1) == RANDOM
    assert part_of("auto-f1", 2) == MGE and part_of("auto-f1", -1) == RANDOM
    assert part_of("coreset", -1) is None and part_of("typiclust", 4) is None


def test_no_or_too_little_evidence_keeps_the_even_split():
    assert decide(None).share == auto.SHARE_PRIOR and decide(None).p_mge_better is None
    h = np.eye(6)
    y = np.eye(6)[:, :2]
    one_mge = AutoEvidence(h, y, np.array([RANDOM] * 5 + [MGE]), h, y)
    d = decide(one_mge)
    assert d.share == auto.SHARE_PRIOR and (d.n_mge, d.n_random) == (1, 5)
    assert auto.swappable(1, 50, True) == 0 and auto.swappable(9, 50, True) == 9
    # Cross-fitting holds out a fifth of the random labels; fewer than 5 cannot be folded.
    assert auto.swappable(50, 10, False) == 8 and auto.swappable(50, 4, False) == 0


def _world(seed: int = 0):
    """Two classes on two directions of a 2-d feature plane, one label each; images near
    the boundary are rare in the pool and random draws almost never hit them."""
    rng = np.random.default_rng(seed)

    def images(n, spread, centre):
        angle = centre + rng.uniform(-spread, spread, n)
        h = np.c_[np.cos(angle), np.sin(angle), 0.05 * rng.normal(size=n)]
        # Class 1 on one side of the diagonal direction (angle pi/4), class 0 on the other.
        y = np.c_[angle < np.pi / 4, angle >= np.pi / 4].astype(float)
        return h, y

    return images


def test_share_follows_the_part_whose_labels_help_more():
    """Known answer: when the random labels are all from one class (a skewed pool), MGE
    picks that cover both classes must win the swap; when the MGE picks are mislabeled
    noise, random must win. Both with validation labels and by cross-fitting."""
    images = _world(0)
    h_r, y_r = images(40, 0.3, 0.2)           # random labels: almost all class 0
    h_r2, y_r2 = images(6, 0.3, 1.35)         # ... and a few of class 1
    h_u, y_u = images(40, 0.25, np.pi / 4)    # MGE picks straddle the boundary
    h_v, y_v = images(200, 0.8, np.pi / 4)    # held-out: the whole range
    h = np.r_[h_r, h_r2, h_u]
    y = np.r_[y_r, y_r2, y_u]
    part = np.r_[[RANDOM] * 46, [MGE] * 40]
    good = decide(AutoEvidence(h, y, part, h_v, y_v), seed=1)
    assert good.share == auto.SHARE_MAX and good.p_mge_better > 0.95 and good.gain > 0
    assert good.heldout == "validation" and good.n_heldout == 200 and good.swapped == 40

    # The same MGE images with their labels flipped: they can only hurt.
    bad = decide(AutoEvidence(h, np.r_[y_r, y_r2, 1 - y_u], part, h_v, y_v), seed=1)
    assert bad.share == auto.SHARE_MIN and bad.p_mge_better < 0.05 and bad.gain < 0
    cross = decide(AutoEvidence(h, np.r_[y_r, y_r2, 1 - y_u], part), seed=1)
    assert cross.heldout == "cross-fitted random labels" and cross.n_heldout == 46
    assert cross.share == auto.SHARE_MIN and cross.gain < 0


def test_same_evidence_and_seed_same_share():
    images = _world(3)
    h_r, y_r = images(30, 0.8, np.pi / 4)
    h_u, y_u = images(20, 0.1, np.pi / 4)
    ev = AutoEvidence(np.r_[h_r, h_u], np.r_[y_r, y_u], np.r_[[RANDOM] * 30, [MGE] * 20])
    assert decide(ev, seed=5) == decide(ev, seed=5)
    assert auto.SHARE_MIN <= decide(ev, seed=5).share <= auto.SHARE_MAX


@pytest.mark.parametrize("ps", [[0.7], [0.9, 0.9, 0.9], [0.6] * 8, [0.1, 0.9] * 4,
                                [1.0] * 30, [0.0] * 5, [0.55] * 40, [0.3, 0.8, 0.45]])
def test_accumulated_is_the_beta_posterior_tail(ps):
    from scipy.stats import beta

    wins = sum(ps)
    want = beta.sf(0.5, 1 + auto.PRIOR_WINS + wins, 1 + len(ps) - wins)
    assert auto.accumulated(ps) == pytest.approx(want, abs=1e-6)


def test_accumulated_starts_even_and_follows_lasting_evidence():
    assert auto.accumulated([]) == 0.5  # nothing judged: the first batch or the even split
    # No prior (issue 18, with precise BN the studies favour neither part): the evidence
    # alone decides, symmetrically for both parts...
    assert auto.PRIOR_WINS == 0
    assert auto.accumulated([0.0]) < 0.5 < auto.accumulated([1.0])
    assert auto.accumulated([0.9] * 6) == pytest.approx(1 - auto.accumulated([0.1] * 6))
    # ...evidence that flips from round to round keeps the split even...
    assert auto.accumulated([0.05, 0.95] * 3) == pytest.approx(0.5)
    # ...and evidence that keeps pointing one way takes the batch there, further the longer
    # it lasts.
    assert auto.accumulated([0.1] * 6) < auto.accumulated([0.1] * 2) < 0.5
    assert auto.accumulated([0.0] * 12) < auto.SHARE_MIN
    assert auto.accumulated([1.0] * 12) > auto.SHARE_MAX


def _decision(p):
    return auto.AutoDecision(min(auto.SHARE_MAX, max(auto.SHARE_MIN, p)), p, 0.01, 0.0, 0.02,
                             20, 60, 20, "validation", 100)


def test_combine_settles_where_the_evidence_keeps_pointing():
    # One round moves the share from the even split towards the part it favours, less far
    # than its own p (one swap of a few dozen labels is weak evidence).
    one = auto.combine(_decision(0.3), [])
    assert one.rounds == 1 and one.p_sum == pytest.approx(0.3)
    assert 0.3 < one.share < 0.5
    assert one.share == pytest.approx(max(auto.SHARE_MIN, one.p_accumulated))
    assert 0.5 < auto.combine(_decision(0.9), []).share < 0.9
    # Rounds that keep favouring one part bring the share to the floor or the cap.
    assert auto.combine(_decision(0.0), [0.0] * 11).share == auto.SHARE_MIN
    assert auto.combine(_decision(1.0), [1.0] * 11).share == auto.SHARE_MAX
    # Evidence that flips from round to round keeps the split near even, where the round's
    # own p would swing the share from the floor to the cap.
    flip = auto.combine(_decision(0.95), [0.05, 0.95, 0.05])
    assert 0.4 < flip.share < 0.6
    # The fields of this round's own evidence are kept for the note.
    assert (flip.p_mge_better, flip.gain, flip.swapped) == (0.95, 0.01, 20)


def test_combine_without_evidence_keeps_the_prior_and_uses_earlier_rounds_alone():
    none = auto.prior(1, 5, "validation", 10)
    assert auto.combine(none, []) == none
    earlier = auto.combine(none, [0.3, 0.4, 0.3, 0.4, 0.3])
    assert earlier.rounds == 5 and earlier.p_mge_better is None
    assert earlier.share == pytest.approx(auto.accumulated([0.3, 0.4, 0.3, 0.4, 0.3]))
    assert auto.SHARE_MIN < earlier.share < auto.SHARE_MAX


def test_the_readme_and_query_help_state_the_code_s_numbers():
    """The README's query row and `alft query --help` write the prior, the first batch's picks
    and the floor as literals (cli.py does not import the decision core at start-up), so a
    change of the constants must change them too."""
    from pathlib import Path

    import typer

    from alft_cli.cli import app

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `alft query "))
    query = typer.main.get_command(app).commands["query"]
    help_text = next(p.help for p in query.params if p.name == "strategy")
    prior = (f"prior of {auto.PRIOR_WINS} rounds won by MGE+Clustering" if auto.PRIOR_WINS
             else "from an even prior")
    assert prior in row and prior in " ".join(help_text.split())
    assert f"only the {auto.MIN_PART} MGE+Clustering picks" in row
    assert f"only {auto.MIN_PART} MGE+Clustering picks in the first batch" in help_text
    assert f"never less than {round(auto.SHARE_MIN * 100)}% of either" in row
