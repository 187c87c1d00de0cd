"""Query strategies: closed forms against autograd, known answers on hand-made pools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from alft_cli import strategies as st
from alft_cli.errors import OptionError
from alft_cli.strategies import (
    NEEDS_MODEL,
    STRATEGIES,
    QueryContext,
    badge_sq_distances,
    class_weights,
    mge_scores,
    select,
)

ALL = sorted(STRATEGIES)


def _pool(n=300, d=16, c=5, seed=0, n_labeled=20):
    """A random pool with features, probabilities and a small labeled set."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d)).astype(np.float32)
    p = rng.uniform(size=(n, c)).astype(np.float32)
    labeled_h = rng.normal(size=(n_labeled, d)).astype(np.float32)
    labeled_y = (rng.uniform(size=(n_labeled, c)) < 0.3).astype(np.int64)
    return h, p, labeled_h, labeled_y


def _ctx(h, p=None, budget=1, **kw):
    return QueryContext(
        h=np.asarray(h), p=None if p is None else np.asarray(p), budget=budget, **kw
    )


def _shuffled(points, seed=0):
    """Points in a fixed random order, and where each original row went."""
    points = np.asarray(points, dtype=np.float64)
    perm = np.random.default_rng(seed).permutation(len(points))
    where = np.empty(len(points), dtype=np.int64)
    where[perm] = np.arange(len(points))
    return points[perm], where


# --------------------------------------------------------------------------- MGE closed form


def test_mge_closed_form_equals_autograd_weight_gradient_with_pseudo_labels():
    torch.manual_seed(0)
    n, d, c = 40, 12, 7
    h = torch.randn(n, d, dtype=torch.float64)
    w = torch.randn(c, d, dtype=torch.float64) * 0.7
    b = torch.randn(c, dtype=torch.float64)
    with torch.no_grad():
        p = torch.sigmoid(h @ w.T + b)

    expected = np.empty(n)
    expected_with_bias = np.empty(n)
    for i in range(n):
        w_i = w.clone().requires_grad_(True)
        b_i = b.clone().requires_grad_(True)
        z = h[i] @ w_i.T + b_i
        # Pseudo-labels, not true labels: the query samples are unlabeled.
        y_hat = (torch.sigmoid(z) >= 0.5).to(torch.float64).detach()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y_hat, reduction="sum")
        g_w, g_b = torch.autograd.grad(loss, (w_i, b_i))
        expected[i] = torch.linalg.norm(g_w).item()
        expected_with_bias[i] = torch.sqrt(g_w.square().sum() + g_b.square().sum()).item()

    got = mge_scores(h.numpy(), p.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    # The documented bias variant: ||p - y_hat|| * sqrt(||h||^2 + 1); the score excludes it.
    a_norm = got / np.linalg.norm(h.numpy(), axis=1)
    h_sq = (h.numpy() ** 2).sum(axis=1)
    np.testing.assert_allclose(a_norm * np.sqrt(h_sq + 1), expected_with_bias, rtol=1e-6)
    assert not np.allclose(got, expected_with_bias, rtol=1e-6)


def test_class_aware_mge_equals_autograd_of_the_class_weighted_bce():
    # The documented loss: class c's BCE term weighted by sqrt(w_c), pseudo-labels.
    torch.manual_seed(1)
    n, d, c = 30, 9, 5
    h = torch.randn(n, d, dtype=torch.float64)
    w = torch.randn(c, d, dtype=torch.float64) * 0.7
    b = torch.randn(c, dtype=torch.float64)
    with torch.no_grad():
        p = torch.sigmoid(h @ w.T + b)
    labeled_y = np.array([[1, 0, 0, 1, 0], [1, 0, 1, 1, 0], [1, 0, 0, 1, 1], [0, 0, 0, 1, 0]])
    weights = torch.from_numpy(class_weights(p.numpy(), labeled_y))
    assert weights.std() > 0.3  # the weights really differ between classes
    expected = np.empty(n)
    for i in range(n):
        w_i = w.clone().requires_grad_(True)
        z = h[i] @ w_i.T + b
        y_hat = (torch.sigmoid(z) >= 0.5).to(torch.float64).detach()
        per_class = torch.nn.functional.binary_cross_entropy_with_logits(z, y_hat,
                                                                         reduction="none")
        (g_w,) = torch.autograd.grad((weights.sqrt() * per_class).sum(), (w_i,))
        expected[i] = torch.linalg.norm(g_w).item()
    got = st.class_aware_mge_scores(h.numpy(), p.numpy(), labeled_y)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=0)


def test_mge_scores_use_pseudo_labels_not_distance_to_half():
    # p = 0.9 has pseudo-label 1, residual 0.1; p = 0.5 -> label 1, residual 0.5.
    h = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    p = np.array([[0.9], [0.5], [0.5]])
    np.testing.assert_allclose(mge_scores(h, p), [0.2, 1.0, 0.0])


# --------------------------------------------------------------------------- known answers


def test_entropy_picks_the_most_even_probabilities():
    p = np.array([[0.9, 0.1], [0.5, 0.5], [0.99, 0.01], [0.5, 0.99]])
    sel = select("entropy", _ctx(np.zeros((4, 3)), p, budget=3))
    assert sel.indices.tolist() == [1, 3, 0]
    assert sel.scores[0] == pytest.approx(1.0)
    assert sel.clusters.tolist() == [-1, -1, -1]


def test_mge_prefers_large_feature_norm_and_uncertainty():
    h = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 0.0], [1.0, 0.0]])
    p = np.array([[0.5], [0.99], [0.5], [0.5]])
    sel = select("mge", _ctx(h, p, budget=4))
    assert sel.indices.tolist() == [2, 3, 1, 0]
    np.testing.assert_allclose(sel.scores, [5.0, 0.5, 0.1, 0.0], atol=1e-9)


def _two_blobs_with_uncertainty():
    """Blob A holds the three most uncertain samples; blob B is less uncertain."""
    h = np.array(
        [[10, 0.1], [10, -0.1], [10, 0.0], [-10, 0.1], [-10, -0.1], [-10, 0.0]], dtype=np.float32
    )
    p = np.array([[0.6], [0.5], [0.7], [0.9], [0.75], [0.95]], dtype=np.float32)
    return h, p


def test_mge_clustering_takes_the_most_uncertain_of_each_blob():
    h, p = _two_blobs_with_uncertainty()
    sel = select("mge-clustering", _ctx(h, p, budget=2))
    assert sel.indices.tolist() == [1, 4]
    assert sel.clusters[0] != sel.clusters[1]
    # Uncertainty alone takes two samples of the same blob.
    assert select("mge", _ctx(h, p, budget=2)).indices.tolist() == [1, 0]


def test_class_aware_mge_prefers_uncertainty_on_a_rare_class():
    h = np.ones((4, 3), dtype=np.float32)
    # Rows 0 and 1 are equally uncertain, on the common class 1 and the rare class 0.
    p = np.array([[0.01, 0.45], [0.45, 0.01], [0.01, 0.99], [0.02, 0.98]], dtype=np.float32)
    labeled_y = np.array([[1, 1]] + [[0, 1]] * 9)
    mge = select("mge-clustering", _ctx(h, p, budget=1))
    aware = select("class-aware-mge", _ctx(h, p, budget=1, labeled_y=labeled_y))
    assert mge.indices.tolist() == [0]
    assert aware.indices.tolist() == [1]
    # Without labels the frequencies come from the pseudo-labels: class 1 is common there too.
    assert select("class-aware-mge", _ctx(h, p, budget=1)).indices.tolist() == [1]


def test_class_weights_are_inverse_smoothed_frequencies_with_mean_one():
    labeled_y = np.array([[1, 0, 1]] * 3 + [[0, 0, 1]])
    w = class_weights(np.zeros((1, 3)), labeled_y)
    freq = (np.array([3, 0, 4]) + 1) / (4 + 2)
    np.testing.assert_allclose(w, (1 / freq) / (1 / freq).mean())
    assert w.mean() == pytest.approx(1.0)
    assert w[1] > w[0] > w[2]


def test_class_aware_mge_with_uniform_classes_equals_mge_clustering():
    h, p, _, _ = _pool(n=120)
    labeled_y = np.array([[1] * 5, [0] * 5])  # every class seen once in two samples
    a = select("class-aware-mge", _ctx(h, p, budget=6, seed=3, labeled_y=labeled_y))
    b = select("mge-clustering", _ctx(h, p, budget=6, seed=3))
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-12)


def test_coreset_without_labels_starts_near_the_mean_then_goes_far():
    h = np.array([[0.0], [0.1], [0.2], [5.0], [11.0]])
    sel = select("coreset", _ctx(h, budget=3))
    assert sel.indices.tolist() == [3, 4, 0]
    np.testing.assert_allclose(sel.scores, [1.74, 6.0, 5.0], atol=1e-9)


def test_coreset_uses_labeled_samples_as_centers():
    h = np.array([[0.0], [0.1], [0.2], [5.0], [11.0]])
    sel = select("coreset", _ctx(h, budget=3, labeled_h=np.array([[0.0]])))
    assert sel.indices.tolist() == [4, 3, 2]
    np.testing.assert_allclose(sel.scores, [11.0, 5.0, 0.2], atol=1e-9)


def test_coreset_blockwise_distances_match_brute_force(monkeypatch):
    h, _, labeled_h, _ = _pool(n=200, d=8, n_labeled=37)
    whole = select("coreset", _ctx(h, budget=10, labeled_h=labeled_h))
    monkeypatch.setattr(st, "_CHUNK_ELEMS", 64)  # many tiny blocks
    blocks = select("coreset", _ctx(h, budget=10, labeled_h=labeled_h))
    assert whole.indices.tolist() == blocks.indices.tolist()
    # Independent greedy k-center with explicit distances.
    x, centers = h.astype(np.float64), labeled_h.astype(np.float64)
    d = np.linalg.norm(x[:, None] - centers[None], axis=2).min(axis=1)
    chosen = []
    for _ in range(10):
        j = int(np.argmax(d))
        chosen.append(j)
        d = np.minimum(d, np.linalg.norm(x - x[j], axis=1))
    assert whole.indices.tolist() == chosen


def _three_blobs():
    """Symmetric blobs (so each blob's mean is its center point) of 9, 5 and 5 points."""
    ring = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    big = [(0, 0)] + ring + [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    points = big + [(100 + x, y) for x, y in [(0, 0)] + ring]
    points += [(x, 100 + y) for x, y in [(0, 0)] + ring]
    h, where = _shuffled(points)
    centers = where[[0, 9, 14]]
    blob = np.repeat([0, 1, 2], [9, 5, 5])[np.argsort(where)]
    return h, centers, blob


def test_kmeans_picks_the_center_of_each_blob_largest_first():
    h, centers, _ = _three_blobs()
    sel = select("kmeans", _ctx(h, budget=3))
    assert sel.indices[0] == centers[0]
    assert set(sel.indices[1:].tolist()) == set(centers[1:].tolist())
    np.testing.assert_allclose(sel.scores, [9 / 19, 5 / 19, 5 / 19])
    assert len(set(sel.clusters.tolist())) == 3


def _force_minibatch(monkeypatch):
    """Make tiny pools take the MiniBatchKMeans path, and record that they did."""
    import sklearn.cluster

    used = []
    real = sklearn.cluster.MiniBatchKMeans

    def spy(**kw):
        used.append(kw)
        return real(**kw)

    monkeypatch.setattr(sklearn.cluster, "MiniBatchKMeans", spy)
    monkeypatch.setattr(st, "MINIBATCH_ABOVE", 5)
    monkeypatch.setattr(st, "MINIBATCH_SIZE", 6)
    return used


def test_kmeans_minibatch_path_still_finds_the_blobs(monkeypatch):
    used = _force_minibatch(monkeypatch)
    h, centers, _ = _three_blobs()
    sel = select("kmeans", _ctx(h, budget=3))
    assert used
    assert sorted(sel.indices.tolist()) == sorted(centers.tolist())


def _blob_with_dense_core(seed=0):
    """Blob A around (0, 0); blob B around (50, 0): a tight core of 10 and 10 stragglers."""
    rng = np.random.default_rng(seed)
    a = rng.normal(scale=1.0, size=(20, 2))
    core = np.array([50.0, 0.0]) + rng.normal(scale=0.01, size=(10, 2))
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    stragglers = np.array([50.0, 0.0]) + 3.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    h, where = _shuffled(np.concatenate([a, core, stragglers]), seed)
    return h, where[:20], where[20:30]


def test_typiclust_picks_a_dense_point_of_the_uncovered_cluster():
    h, blob_a, core = _blob_with_dense_core()
    sel = select("typiclust", _ctx(h, budget=1, labeled_h=np.array([[0.0, 0.0]])))
    assert sel.indices[0] in core
    # Without labels both blobs are uncovered: one pick each, B's from its core.
    sel = select("typiclust", _ctx(h, budget=2))
    picked = set(sel.indices.tolist())
    assert len(picked & set(blob_a.tolist())) == 1
    assert len(picked & set(core.tolist())) == 1
    assert len(set(sel.clusters.tolist())) == 2


def test_typiclust_subsampled_large_clusters_and_minibatch(monkeypatch):
    monkeypatch.setattr(st, "TYPICLUST_MAX_POOL", 12)
    used = _force_minibatch(monkeypatch)
    h, _, _ = _blob_with_dense_core()
    sel = select("typiclust", _ctx(h, budget=40, labeled_h=np.array([[0.0, 0.0]])))
    assert used
    assert sorted(sel.indices.tolist()) == list(range(40))  # cycles until all are taken


def test_typicality_matches_brute_force_knn(monkeypatch):
    monkeypatch.setattr(st, "_CHUNK_ELEMS", 50)
    x = np.random.default_rng(1).normal(size=(30, 4))
    got = st._typicality(x, 20)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    k = 15  # min(20, 30 // 2)
    expected = 1 / (np.sort(d, axis=1)[:, :k].mean(axis=1) + 1e-5)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_badge_takes_one_embedding_per_distinct_gradient_largest_first():
    # Three distinct gradient embeddings, four copies each.
    groups = [
        ([0.5, 0.5], [3.0, 0.0, 0.0]),  # |g| = 3 * |(-0.5, -0.5)| = 2.12
        ([0.2, 0.5], [0.0, 2.0, 0.0]),
        ([0.4, 0.9], [0.0, 0.0, 1.0]),
    ]
    p = np.array([g[0] for g in groups for _ in range(4)])
    h = np.array([g[1] for g in groups for _ in range(4)])
    perm = np.random.default_rng(0).permutation(12)
    p, h = p[perm], h[perm]
    group = np.repeat([0, 1, 2], 4)[perm]
    for seed in range(5):
        sel = select("badge", _ctx(h, p, budget=3, seed=seed))
        assert group[sel.indices[0]] == 0
        assert sorted(group[sel.indices].tolist()) == [0, 1, 2]
        np.testing.assert_allclose(sel.scores, mge_scores(h, p)[sel.indices])
    # A fourth pick can only repeat an embedding, but must still be a new sample.
    assert len(set(select("badge", _ctx(h, p, budget=4)).indices.tolist())) == 4


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_badge_light_distances_equal_explicit_outer_products(dtype, rtol):
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.5, 0.5, size=(25, 6))
    h = rng.normal(size=(25, 9)).astype(dtype)
    g = np.einsum("ic,id->icd", a, h.astype(np.float64)).reshape(25, -1)
    for center in (0, 7, 24):
        explicit = ((g - g[center]) ** 2).sum(axis=1)
        got = badge_sq_distances(a, h, center)
        np.testing.assert_allclose(got, explicit, rtol=rtol, atol=rtol * explicit.max())
        assert got[center] == 0.0


def test_random_is_uniform_without_replacement():
    h = np.zeros((1000, 2))
    a = select("random", _ctx(h, budget=10, seed=0))
    b = select("random", _ctx(h, budget=10, seed=1))
    assert len(set(a.indices.tolist())) == 10
    assert a.indices.tolist() != b.indices.tolist()
    assert (a.scores == 0).all() and (a.clusters == -1).all()
    # Over many seeds every sample is about equally likely (10 / 1000 per draw).
    counts = np.bincount(
        np.concatenate(
            [select("random", _ctx(h[:20], budget=5, seed=s)).indices for s in range(400)]
        ),
        minlength=20,
    )
    assert counts.min() > 60 and counts.max() < 140  # expected 100 each


# --------------------------------------------------------------------------- mge-clustering


@pytest.mark.parametrize("candidates", [None, 50])
def test_mge_clustering_takes_the_most_uncertain_member_of_each_cluster(candidates):
    h, p, _, _ = _pool(n=200, d=8, c=5, seed=4)
    budget, seed = 7, 11
    sel = select("mge-clustering", _ctx(h, p, budget=budget, seed=seed, candidates=candidates))
    m = candidates or 3 * budget
    scores = mge_scores(h, p)
    top_m = np.argsort(-scores, kind="stable")[:m]

    assert len(sel.indices) == budget and len(set(sel.indices.tolist())) == budget
    assert set(sel.indices.tolist()) <= set(top_m.tolist())
    assert (np.diff(sel.scores) <= 0).all()
    np.testing.assert_allclose(sel.scores, scores[sel.indices])

    km = KMeans(
        n_clusters=budget,
        init="k-means++",
        n_init=st.KMEANS_N_INIT,
        random_state=seed,
    )
    labels = km.fit_predict(h[top_m])
    assert sorted(sel.clusters.tolist()) == list(range(budget))  # one per cluster
    for idx, cluster in zip(sel.indices, sel.clusters, strict=True):
        members = top_m[labels == cluster]
        assert idx in members
        assert scores[idx] == scores[members].max()


def test_mge_clustering_rejects_too_few_candidates():
    h, p, _, _ = _pool(n=50)
    with pytest.raises(OptionError, match="candidates"):
        select("mge-clustering", _ctx(h, p, budget=5, candidates=5))
    # When the pool is no bigger than the budget, everything is taken anyway.
    sel = select("mge-clustering", _ctx(h[:4], p[:4], budget=5, candidates=2))
    assert sorted(sel.indices.tolist()) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- every strategy


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_query(name):
    h, p, labeled_h, labeled_y = _pool()
    ctx = _ctx(h, p, budget=12, seed=5, labeled_h=labeled_h, labeled_y=labeled_y)
    a, b = select(name, ctx), select(name, ctx)
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.clusters, b.clusters)
    assert a.indices.dtype == np.int64 and a.clusters.dtype == np.int64
    assert a.scores.dtype == np.float64
    assert len(set(a.indices.tolist())) == 12
    assert a.indices.min() >= 0 and a.indices.max() < len(h)


@pytest.mark.parametrize("name", ALL)
def test_budget_above_pool_returns_every_sample(name):
    h, p, labeled_h, labeled_y = _pool(n=8)
    sel = select(name, _ctx(h, p, budget=20, labeled_h=labeled_h, labeled_y=labeled_y))
    assert sorted(sel.indices.tolist()) == list(range(8))


@pytest.mark.parametrize("name", ALL)
def test_identical_samples_still_give_a_full_batch(name):
    h = np.ones((10, 4), dtype=np.float32)
    p = np.full((10, 3), 0.5, dtype=np.float32)
    sel = select(name, _ctx(h, p, budget=4))
    assert len(set(sel.indices.tolist())) == 4


@pytest.mark.parametrize("name", ALL)
def test_empty_pool_gives_empty_selection(name):
    sel = select(name, _ctx(np.zeros((0, 4)), np.zeros((0, 3)), budget=3))
    assert sel.indices.shape == sel.scores.shape == sel.clusters.shape == (0,)
    assert sel.indices.dtype == np.int64


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - NEEDS_MODEL))
def test_model_free_strategies_need_no_probabilities(name):
    h, _, labeled_h, _ = _pool(n=60)
    sel = select(name, _ctx(h, None, budget=5, labeled_h=labeled_h))
    assert len(set(sel.indices.tolist())) == 5


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("budget", [0, -1, 2.5, True])
def test_bad_budget_is_an_option_error(budget):
    h, p, _, _ = _pool(n=10)
    with pytest.raises(OptionError, match="budget"):
        select("mge-clustering", QueryContext(h=h, p=p, budget=budget))


def test_unknown_strategy_lists_the_known_ones():
    h, p, _, _ = _pool(n=10)
    with pytest.raises(OptionError) as err:
        select("uncertainty-magic", _ctx(h, p, budget=2))
    for name in STRATEGIES:
        assert name in err.value.message


@pytest.mark.parametrize("name", sorted(NEEDS_MODEL))
def test_model_strategies_without_predictions_say_to_finetune(name):
    h, _, _, _ = _pool(n=10)
    with pytest.raises(OptionError, match="alft finetune"):
        select(name, _ctx(h, None, budget=2))


@pytest.mark.parametrize(
    "h,p,extra",
    [
        (np.zeros(5), np.full((5, 2), 0.5), {}),  # 1-D features
        (np.zeros((5, 3)), np.full((4, 2), 0.5), {}),  # row mismatch
        (np.zeros((5, 3)), np.full(5, 0.5), {}),  # 1-D probabilities
        (np.zeros((5, 3)), np.full((5, 2), 1.5), {}),  # not a probability
        (np.zeros((5, 3)), np.full((5, 2), np.nan), {}),
        (np.full((5, 3), np.inf), np.full((5, 2), 0.5), {}),
        (np.zeros((5, 3)), np.full((5, 2), 0.5), {"labeled_h": np.zeros((2, 4))}),
        (np.zeros((5, 3)), np.full((5, 2), 0.5), {"labeled_y": np.full((2, 2), 2)}),
        (np.zeros((5, 3)), np.full((5, 2), 0.5), {"labeled_y": np.zeros((2, 3))}),
        (np.zeros((5, 3)), np.full((5, 2), 0.5), {"candidates": 0}),
    ],
)
def test_malformed_inputs_are_option_errors(h, p, extra):
    with pytest.raises(OptionError):
        select("mge-clustering", QueryContext(h=h, p=p, budget=2, **extra))


# --------------------------------------------------------------------------- hybrid / auto


def _toy(n: int = 80, d: int = 6, c: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype(np.float32),
            rng.uniform(size=(n, c)).astype(np.float32))


def test_auto_weight_follows_validation_f1():
    from alft_cli.strategies import AUTO_F1_HIGH, AUTO_F1_LOW, auto_weight

    assert auto_weight(None) == 0.0
    assert auto_weight(AUTO_F1_LOW - 0.1) == 0.0
    assert auto_weight(AUTO_F1_HIGH + 0.1) == 1.0
    mid = auto_weight((AUTO_F1_LOW + AUTO_F1_HIGH) / 2)
    assert mid == pytest.approx(0.5)


def test_auto_f1_is_random_for_a_weak_model_and_mge_clustering_for_a_good_one():
    h, p = _toy()
    weak = select("auto-f1", QueryContext(h=h, p=p, budget=10, seed=4, model_f1=0.5))
    rand = select("random", QueryContext(h=h, p=p, budget=10, seed=4))
    assert sorted(weak.indices.tolist()) == sorted(rand.indices.tolist())
    good = select("auto-f1", QueryContext(h=h, p=p, budget=10, seed=4, model_f1=0.95))
    mge = select("mge-clustering", QueryContext(h=h, p=p, budget=10, seed=4))
    assert good.indices.tolist() == mge.indices.tolist()
    # No model at all (cold start): random too, and p is not needed.
    cold = select("auto-f1", QueryContext(h=h, p=None, budget=10, seed=4))
    assert sorted(cold.indices.tolist()) == sorted(rand.indices.tolist())


def test_auto_f1_mix_in_between_takes_both_kinds():
    from alft_cli.strategies import AUTO_F1_HIGH, AUTO_F1_LOW

    h, p = _toy()
    f1 = AUTO_F1_LOW + 0.3 * (AUTO_F1_HIGH - AUTO_F1_LOW)
    sel = select("auto-f1", QueryContext(h=h, p=p, budget=10, seed=1, model_f1=f1))
    assert len(set(sel.indices.tolist())) == 10
    assert (sel.clusters >= 0).sum() == 3  # 30% by MGE+Clustering (clustered)
    assert (sel.clusters == -1).sum() == 7  # the rest random


@pytest.mark.parametrize("share, n_mge", [(None, 5), (0.1, 1), (0.78, 8), (0.9, 9)])
def test_auto_splits_the_batch_by_its_share(share, n_mge):
    """auto's MGE+Clustering part (clustered, first) is round(share * k) of the batch, the
    even split without a share; it is mge-clustering's choice for that many picks, and the
    random part is drawn among the other rows as the random strategy draws: random's own
    batch less the MGE+Clustering picks, topped up with the next in random's order."""
    h, p = _toy()
    ids = np.random.default_rng(0).permutation(10 * len(h))[:len(h)]  # image ids, any order
    sel = select("auto", QueryContext(h=h, p=p, budget=10, seed=3, share=share, ids=ids))
    assert len(set(sel.indices.tolist())) == 10
    assert sel.clusters[:n_mge].min() >= 0 and (sel.clusters[n_mge:] == -1).all()
    part = select("mge-clustering", QueryContext(h=h, p=p, budget=n_mge, seed=3))
    assert sel.indices[:n_mge].tolist() == part.indices.tolist()
    rest = np.setdiff1d(np.arange(len(h)), part.indices)
    drawn = select("random", QueryContext(h=h[rest], p=None, budget=10 - n_mge, seed=3,
                                          ids=ids[rest]))
    assert sel.indices[n_mge:].tolist() == rest[drawn.indices].tolist()
    # The same draw seen from random's side: its whole order over the pool, MGE picks skipped.
    order = select("random", QueryContext(h=h, p=None, budget=len(h), seed=3, ids=ids))
    expected = [i for i in order.indices.tolist() if i not in set(part.indices.tolist())]
    assert sel.indices[n_mge:].tolist() == expected[:10 - n_mge]


def test_auto_without_a_model_is_random():
    h, p = _toy()
    cold = select("auto", QueryContext(h=h, p=None, budget=10, seed=4, share=0.9))
    rand = select("random", QueryContext(h=h, p=None, budget=10, seed=4))
    assert cold.indices.tolist() == rand.indices.tolist()


def test_hybrid_moves_from_typicality_to_uncertainty():
    h, p = _toy()
    start = select("hybrid", QueryContext(h=h, p=p, budget=8, seed=2, n_labeled=0))
    typi = select("typiclust", QueryContext(h=h, p=p, budget=8, seed=2))
    assert start.indices.tolist() == typi.indices.tolist()
    late = select("hybrid", QueryContext(h=h, p=p, budget=8, seed=2, n_labeled=400))
    mge = select("mge-clustering", QueryContext(h=h, p=p, budget=8, seed=2))
    assert late.indices.tolist() == mge.indices.tolist()
    half = select("hybrid", QueryContext(h=h, p=p, budget=8, seed=2, n_labeled=100))
    assert (half.clusters >= 0).sum() == 4 and len(set(half.indices.tolist())) == 8
