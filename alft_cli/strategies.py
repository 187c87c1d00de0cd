"""Query strategies: which unlabeled samples the annotator should label next.

Every strategy is a pure function of arrays (features ``h``, sigmoid probabilities ``p``, a
budget and a seed) that returns a :class:`Selection`; strategies are looked up by name in
:data:`STRATEGIES`, and :func:`select` is the one entry point that validates its input first.
Nothing here imports torch: the embedding pass (``embed.py``) hands over plain arrays, so the
strategies can be tested on hand-made inputs and reused outside a training run.

The default, ``mge-clustering``, is the query strategy of

    Möllenbrok, L. and Demir, B., "Active Learning Guided Fine-Tuning for Enhancing
    Self-Supervised Based Multi-Label Classification of Remote Sensing Images", IGARSS 2023:
    rank samples by the Magnitude of their (approximated) Gradient Embedding, MGE -- the norm
    of the loss gradient w.r.t. the classification head, computed with pseudo-labels, from
    Möllenbrok, Sumbul and Demir, "Deep Active Learning for Multi-Label Classification of
    Remote Sensing Images" (IEEE GRSL, 2023) -- keep the most uncertain candidates, cluster
    them with k-means++ and label the most uncertain sample of each cluster, so the batch is
    both uncertain and diverse.

Baselines: random, entropy, BADGE (Ash et al., ICLR 2020), core-set (Sener & Savarese, ICLR
2018), k-means (cold start) and TypiClust (Hacohen et al., ICML 2022).

All of them are multi-label: ``p`` holds one independent sigmoid probability per class.
Memory stays bounded by working on row blocks, so pools of 100k samples with 1024-d features
never create an extra N x D (or N x C*D) array.

One registry of pure functions, kept in one module on purpose (it is the one place to compare
the strategies); the scoring pass around them lives in :mod:`alft_cli.scoring`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from alft_cli import draws
from alft_cli.errors import OptionError

DEFAULT_STRATEGY = "mge-clustering"

# k-means settings shared by every clustering strategy; tests rebuild k-means with these.
KMEANS_N_INIT = 3
# Full-batch Lloyd costs N * k * D per iteration (20k x 1024 into 20 clusters: ~5 s on 2
# cores); above MINIBATCH_ABOVE = N * k (5k points into 20 clusters) MiniBatchKMeans takes
# over: 100k x 1024 into 20 clusters in about a second. scikit-learn's default batch size
# was also the fastest there. Pools of at most three batches stay full-batch, where
# mini-batches would gain nothing.
MINIBATCH_ABOVE = 100_000
MINIBATCH_SIZE = 1024
# mge-clustering keeps CANDIDATE_FACTOR * budget candidates before clustering (the paper's m).
CANDIDATE_FACTOR = 3
# TypiClust constants, as in Hacohen et al.'s reference implementation.
TYPICLUST_K = 20
TYPICLUST_MAX_CLUSTERS = 500
TYPICLUST_MIN_CLUSTER_SIZE = 5
# Typicality needs all pairwise distances inside a cluster (quadratic); a bigger cluster is
# scored on a seeded random subset of this many members to keep a 100k pool to seconds.
TYPICLUST_MAX_POOL = 3000
# Pseudo-count for the class frequencies of class-aware-mge (Laplace smoothing), so a class
# that no labeled sample has yet gets a large but finite weight.
CLASS_FREQ_SMOOTHING = 1.0

# Elements per temporary block (~32 MB in float64): bounds the memory of every chunked loop.
_CHUNK_ELEMS = 1 << 22
_ENTROPY_CLIP = 1e-12


@dataclass(frozen=True, eq=False)
class QueryContext:
    """Everything a strategy may look at to choose a batch.

    ``eq=False`` because comparing dataclasses of arrays element-wise is never what is meant.

    Attributes:
        h: (N, D) penultimate-layer features of the unlabeled candidate samples.
        p: (N, C) sigmoid probabilities of the same samples; ``None`` is allowed only for the
            strategies that need no classifier (not in :data:`NEEDS_MODEL`).
        budget: How many samples to query (B >= 1).
        seed: Seed of every random choice (numpy Generator, scikit-learn ``random_state``).
        candidates: m, the number of most uncertain samples that mge-clustering and
            class-aware-mge cluster (default ``3 * budget``, clipped to N; must exceed the
            budget when N > budget).
        labeled_h: (L, D) features of the samples labeled so far (core-set, TypiClust).
        labeled_y: (L, C) 0/1 labels of the samples labeled so far (class-aware-mge).
        model_f1: validation micro-F1 of the model that produced ``p`` (``auto-f1``), if known.
        n_labeled: how many samples are labeled so far (``hybrid`` evidence).
        share: the part of the batch ``auto`` gives MGE+Clustering (0..1), decided by
            :mod:`alft_cli.auto` from the project's labeled rounds; None = 0.5, no evidence.
        ids: (N,) the samples' image ids: random draws go by a seeded order of the ids
            (:mod:`alft_cli.draws`), not by row positions; None = the row positions.
    """

    h: np.ndarray
    p: np.ndarray | None
    budget: int
    seed: int = 0
    candidates: int | None = None
    labeled_h: np.ndarray | None = None
    labeled_y: np.ndarray | None = None
    model_f1: float | None = None
    n_labeled: int | None = None
    share: float | None = None
    ids: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Selection:
    """The batch a strategy chose.

    Attributes:
        indices: int64 (k,) unique row indices into ``ctx.h`` in rank order (rank 1 first):
            score-descending for the ranking strategies, pick order for the greedy or
            clustering ones (BADGE, core-set, k-means, TypiClust).
        scores: float64 (k,) the strategy's score of each chosen sample (higher = more
            wanted).
        clusters: int64 (k,) cluster id of each chosen sample; -1 if the strategy does not
            cluster.
    """

    indices: np.ndarray
    scores: np.ndarray
    clusters: np.ndarray


# --------------------------------------------------------------------------- helpers


def _row_blocks(n: int, width: int) -> Iterator[slice]:
    """Row slices whose blocks of ``width`` columns hold at most ``_CHUNK_ELEMS`` elements."""
    step = max(1, _CHUNK_ELEMS // max(1, width))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _row_sqnorms(x: np.ndarray) -> np.ndarray:
    """Squared row norms in float64, without a float64 copy of the whole array."""
    out = np.empty(len(x), dtype=np.float64)
    for rows in _row_blocks(len(x), x.shape[1]):
        block = x[rows].astype(np.float64)
        out[rows] = np.einsum("ij,ij->i", block, block)
    return out


def _clean_sq_dists(d2: np.ndarray, scale: np.ndarray | float, *dtypes: np.dtype) -> np.ndarray:
    """Zero the rounding noise of ``|x|^2 + |y|^2 - 2 x.y``.

    The expansion cancels catastrophically for (near-)duplicates; noise is proportional to
    the squared norms, so values below a few hundred ulps of ``scale`` are treated as 0.
    This keeps duplicates of a chosen point from looking "far" in BADGE and core-set.
    """
    # The least precise operand dtype sets the noise level.
    tol = 256 * max(np.finfo(dt).eps for dt in dtypes) * scale
    return np.where(d2 <= tol, 0.0, d2)


def _sq_dists_to(x: np.ndarray, x_sq: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squared distances from every row of ``x`` to the vector ``v``: (N,) float64.

    Uses ``|x|^2 + |v|^2 - 2 x.v`` so no (N, D) difference array is created; ``v`` is cast to
    ``x``'s dtype so numpy does not upcast all of ``x`` to float64 for the product.
    """
    v = np.asarray(v, dtype=x.dtype)
    v_sq = float(np.dot(v.astype(np.float64), v.astype(np.float64)))
    d2 = x_sq + v_sq - 2.0 * (x @ v).astype(np.float64)
    return _clean_sq_dists(d2, x_sq + v_sq, x.dtype)


def _min_sq_dists(x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distance from every row of ``x`` to its nearest row of ``centers``, blockwise."""
    centers = np.asarray(centers, dtype=x.dtype)
    c_sq = _row_sqnorms(centers)
    col_step = min(len(centers), 1024)
    out = np.full(len(x), np.inf)
    for rows in _row_blocks(len(x), col_step):
        for start in range(0, len(centers), col_step):
            cols = slice(start, start + col_step)
            prod = (x[rows] @ centers[cols].T).astype(np.float64)
            scale = x_sq[rows, None] + c_sq[None, cols]
            d2 = _clean_sq_dists(scale - 2.0 * prod, scale, x.dtype)
            np.minimum(out[rows], d2.min(axis=1), out=out[rows])
    return out


def _rank(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; ties go to the lower index, so ranking is reproducible."""
    return np.argsort(-scores, kind="stable")


def _selection(
    indices: np.ndarray | list[int],
    scores: np.ndarray | list[float],
    clusters: np.ndarray | list[int] | None = None,
) -> Selection:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if clusters is None:
        clusters = np.full(len(indices), -1, dtype=np.int64)
    return Selection(indices, scores, np.asarray(clusters, dtype=np.int64).reshape(-1))


def _empty() -> Selection:
    return _selection([], [], [])


def _kmeans_plusplus_float64(
    x: np.ndarray, n_clusters: int, random_state: np.random.RandomState
) -> np.ndarray:
    """k-means++ seeding on a float64 copy of the (small) initialization subsample.

    On float32 input scikit-learn computes the seeding distances through a slow blockwise
    upcast; MiniBatchKMeans seeds on only ``3 * batch_size`` rows, so copying those to
    float64 is cheap. Same centers here, and about a third less time for the whole fit
    (100k x 1024 into 20 or 120 clusters).
    """
    from sklearn.cluster import kmeans_plusplus

    centers, _ = kmeans_plusplus(x.astype(np.float64), n_clusters, random_state=random_state)
    return centers.astype(x.dtype)


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, object]:
    """Seeded k-means++ clustering of ``x`` into ``k`` clusters: (labels, centers, model)."""
    # scikit-learn is imported here, not at module level: it costs a second at start-up, and
    # `alft --help` or `alft status` should not pay it.
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    if len(x) * k > MINIBATCH_ABOVE and len(x) > 3 * MINIBATCH_SIZE:
        model = MiniBatchKMeans(
            n_clusters=k,
            init=_kmeans_plusplus_float64,
            n_init=KMEANS_N_INIT,
            batch_size=MINIBATCH_SIZE,
            random_state=seed,
        )
    else:
        model = KMeans(
            n_clusters=k,
            init="k-means++",
            n_init=KMEANS_N_INIT,
            random_state=seed,
        )
    with warnings.catch_warnings():
        # Duplicate features give fewer distinct clusters than asked; callers top the batch
        # up themselves, so the warning would only be noise in the CLI output.
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = model.fit_predict(x)
    return labels.astype(np.int64), np.asarray(model.cluster_centers_), model


def _top_up(picked: np.ndarray, preference: np.ndarray, k: int) -> np.ndarray:
    """Extend ``picked`` to ``k`` unique indices with the first unpicked of ``preference``.

    Clustering can come back with fewer non-empty clusters than asked (duplicate features);
    the batch must still hold exactly k samples.
    """
    if len(picked) >= k:
        return picked
    rest = preference[~np.isin(preference, picked)]
    return np.concatenate([picked, rest[: k - len(picked)]])


def _residual(p: np.ndarray) -> np.ndarray:
    """``p - y_hat`` with pseudo-labels ``y_hat = 1[p >= 0.5]``, float64 (N, C)."""
    p = p.astype(np.float64)
    return p - (p >= 0.5)


# --------------------------------------------------------------------------- scores


def mge_scores(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    """MGE, the gradient-norm uncertainty of Möllenbrok et al. (GRSL / IGARSS 2023), closed form.

    With logits ``z = W h + b``, ``p = sigmoid(z)``, pseudo-labels ``y_hat = 1[p >= 0.5]`` (the
    true labels are unknown for a query) and the multi-label BCE loss summed over classes,
    ``dL/dz = p - y_hat`` and ``dL/dW = (p - y_hat) h^T``, a rank-one matrix, so

        ||dL/dW||_F = ||p - y_hat||_2 * ||h||_2.

    No backward pass is needed: one pass producing ``h`` and ``p`` scores the whole pool.
    The bias ``b`` is NOT included; including it (the gradient w.r.t. ``[W, b]``) would turn
    the factor ``||h||`` into ``sqrt(||h||^2 + 1)``, which only matters for features of small
    norm.

    Args:
        h: (N, D) penultimate features.
        p: (N, C) sigmoid probabilities of the same samples.

    Returns:
        (N,) float64 scores; higher means more uncertain.
    """
    return np.sqrt(_row_sqnorms(_residual(p)) * _row_sqnorms(h))


def entropy_scores(p: np.ndarray) -> np.ndarray:
    """Mean binary entropy over classes, in bits (1 = every class at p = 0.5).

    Args:
        p: (N, C) sigmoid probabilities.

    Returns:
        (N,) float64 scores in [0, 1].
    """
    q = np.clip(p.astype(np.float64), _ENTROPY_CLIP, 1.0 - _ENTROPY_CLIP)
    return -(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q)).mean(axis=1)


def class_weights(p: np.ndarray, labeled_y: np.ndarray | None = None) -> np.ndarray:
    """Inverse class-frequency weights for class-aware-mge, normalized to mean 1.

    Frequencies come from the labeled set; before any labels exist they are estimated from
    the pseudo-labels ``1[p >= 0.5]`` of the pool. Both use Laplace smoothing, so a class
    seen zero times still gets a finite weight.

    Args:
        p: (N, C) sigmoid probabilities of the pool.
        labeled_y: (L, C) 0/1 labels of the labeled samples, or None.

    Returns:
        (C,) float64 weights with mean 1.
    """
    if labeled_y is not None and len(labeled_y) > 0:
        counts, total = labeled_y.astype(np.float64).sum(axis=0), len(labeled_y)
    else:
        counts, total = (p >= 0.5).sum(axis=0).astype(np.float64), len(p)
    a = CLASS_FREQ_SMOOTHING
    freq = (counts + a) / (total + 2.0 * a)
    w = 1.0 / (freq + 1e-12)
    return w / w.mean()


def class_aware_mge_scores(
    h: np.ndarray, p: np.ndarray, labeled_y: np.ndarray | None = None
) -> np.ndarray:
    """MGE with each class's squared gradient weighted by its inverse class frequency.

    ``score = sqrt(sum_c w_c (p_c - y_hat_c)^2) * ||h||`` with ``w`` from
    :func:`class_weights`, so uncertainty on a rare class counts more than the same
    uncertainty on a common one. This is exactly the norm of the last-layer weight gradient
    ``dL/dW`` of the BCE loss whose class ``c`` term is weighted by ``sqrt(w_c)``,
    ``L = sum_c sqrt(w_c) BCE(z_c, y_hat_c)`` (tested against autograd): the squared score
    ``sum_c w_c ||dBCE_c/dW_c||^2`` weights each class's squared gradient norm by ``w_c``.
    (Weighting the loss by ``w_c`` itself would square the weights, ``sum_c w_c^2 a_c^2``, and
    let one rare class dominate; the published comparison in docs/RESULTS.md section 3 used
    this form.) With all ``w_c = 1`` it equals :func:`mge_scores`.

    Args:
        h: (N, D) penultimate features.
        p: (N, C) sigmoid probabilities.
        labeled_y: (L, C) 0/1 labels of the labeled set, for the class frequencies.

    Returns:
        (N,) float64 scores.
    """
    w = class_weights(p, labeled_y)
    a = _residual(p)
    return np.sqrt((a * a) @ w * _row_sqnorms(h))


def badge_sq_distances(
    a: np.ndarray,
    h: np.ndarray,
    center: int,
    a_sq: np.ndarray | None = None,
    h_sq: np.ndarray | None = None,
) -> np.ndarray:
    """Squared distances between BADGE gradient embeddings without building them.

    The embedding ``g_i = a_i (x) h_i`` (outer product, C*D values) is never stored:
    ``<a_i (x) h_i, a_j (x) h_j> = (a_i . a_j)(h_i . h_j)``, so

        ||g_i - g_j||^2 = |a_i|^2 |h_i|^2 + |a_j|^2 |h_j|^2 - 2 (a_i . a_j)(h_i . h_j),

    which costs O(N (C + D)) time and memory per center instead of O(N C D).

    Args:
        a: (N, C) residuals ``p - y_hat``.
        h: (N, D) features.
        center: Row index j of the center.
        a_sq: Precomputed squared row norms of ``a`` (optional).
        h_sq: Precomputed squared row norms of ``h`` (optional).

    Returns:
        (N,) float64 squared distances to ``g_center``.
    """
    a_sq = _row_sqnorms(a) if a_sq is None else a_sq
    h_sq = _row_sqnorms(h) if h_sq is None else h_sq
    g_sq = a_sq * h_sq
    cross = (a @ a[center]).astype(np.float64) * (h @ h[center]).astype(np.float64)
    d2 = g_sq + g_sq[center] - 2.0 * cross
    return _clean_sq_dists(d2, g_sq + g_sq[center], a.dtype, h.dtype)


# --------------------------------------------------------------------------- strategies


def _uncertainty_clustering(
    h: np.ndarray, scores: np.ndarray, budget: int, candidates: int | None, seed: int
) -> Selection:
    """Möllenbrok & Demir's selection: top-m by score, k-means++ into B, best of each.

    Shared by mge-clustering and class-aware-mge, which differ only in ``scores``.
    """
    n = len(scores)
    order = _rank(scores)
    if n <= budget:
        # Every sample is taken; clustering n points into n clusters is the identity.
        return _selection(order, scores[order], np.arange(n))
    m = min(CANDIDATE_FACTOR * budget if candidates is None else candidates, n)
    if m <= budget:
        raise OptionError(
            f"candidates ({candidates}) must be larger than the budget ({budget}): "
            "clustering needs more candidates than clusters"
        )
    cand = order[:m]
    labels, _, _ = _kmeans(h[cand], budget, seed)
    # `cand` is in descending score order, so the first occurrence of each cluster id is
    # that cluster's most uncertain member; sorting the positions keeps the score order.
    _, first = np.unique(labels, return_index=True)
    picked = _top_up(np.sort(first), np.arange(m), budget)
    picked.sort()
    chosen = cand[picked]
    return _selection(chosen, scores[chosen], labels[picked])


def _mge_clustering(ctx: QueryContext) -> Selection:
    """Möllenbrok & Demir (IGARSS 2023): MGE uncertainty + k-means++ diversity."""
    scores = mge_scores(ctx.h, ctx.p)
    return _uncertainty_clustering(ctx.h, scores, ctx.budget, ctx.candidates, ctx.seed)


def _class_aware_mge(ctx: QueryContext) -> Selection:
    """mge-clustering on class-frequency-weighted gradient norms (rare classes count more)."""
    scores = class_aware_mge_scores(ctx.h, ctx.p, ctx.labeled_y)
    return _uncertainty_clustering(ctx.h, scores, ctx.budget, ctx.candidates, ctx.seed)


def _top_k(scores: np.ndarray, budget: int) -> Selection:
    top = _rank(scores)[:budget]
    return _selection(top, scores[top])


def _mge(ctx: QueryContext) -> Selection:
    """Top-B by MGE gradient norm (uncertainty only, no diversity)."""
    return _top_k(mge_scores(ctx.h, ctx.p), ctx.budget)


def _entropy(ctx: QueryContext) -> Selection:
    """Top-B by mean per-class binary entropy."""
    return _top_k(entropy_scores(ctx.p), ctx.budget)


def _ids(ctx: QueryContext) -> np.ndarray:
    return np.arange(len(ctx.h)) if ctx.ids is None else np.asarray(ctx.ids)


def _random(ctx: QueryContext) -> Selection:
    """Uniform sampling without replacement: the baseline every AL curve is compared to.
    The smallest keys of a seeded order of the image ids (:mod:`alft_cli.draws`)."""
    picked = draws.draw(_ids(ctx), ctx.budget, ctx.seed)
    return _selection(picked, np.zeros(len(picked)))


def _badge(ctx: QueryContext) -> Selection:
    """BADGE (Ash et al., ICLR 2020), multi-label: k-means++ seeding on gradient embeddings.

    The embedding of sample i is ``(p_i - y_hat_i) (x) h_i``, the per-sample gradient of the
    summed BCE loss w.r.t. the head weights (its norm is the MGE score). The first center is
    the largest embedding, as in the authors' code; each next one is drawn with probability
    proportional to the squared distance to the nearest chosen center (D^2 sampling, no
    Lloyd iterations). Distances use :func:`badge_sq_distances`, so memory is O(N (C + D)).
    """
    h = ctx.h
    n = len(h)
    k = min(ctx.budget, n)
    a = _residual(ctx.p)
    a_sq, h_sq = _row_sqnorms(a), _row_sqnorms(h)
    norms = np.sqrt(a_sq * h_sq)
    by_norm = _rank(norms)
    rng = np.random.default_rng(ctx.seed)

    chosen = [int(by_norm[0])]
    d2 = badge_sq_distances(a, h, chosen[0], a_sq, h_sq)
    d2[chosen[0]] = 0.0
    while len(chosen) < k:
        total = d2.sum()
        nxt = -1
        if total > 0.0 and np.isfinite(total):
            # Inverse-CDF draw; side="right" never lands on a zero-weight (chosen) sample.
            nxt = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right"))
        if not 0 <= nxt < n or d2[nxt] <= 0.0:
            # All remaining embeddings coincide with a center: fall back to norm order.
            nxt = int(by_norm[~np.isin(by_norm, chosen)][0])
        chosen.append(nxt)
        np.minimum(d2, badge_sq_distances(a, h, nxt, a_sq, h_sq), out=d2)
        d2[chosen] = 0.0
    chosen_arr = np.asarray(chosen)
    return _selection(chosen_arr, norms[chosen_arr])


def _coreset(ctx: QueryContext) -> Selection:
    """Core-set (Sener & Savarese, ICLR 2018): greedy k-center on the features.

    Each pick is the sample farthest from its nearest center; the labeled samples are the
    initial centers. With nothing labeled the first pick is the sample nearest the pool
    mean (deterministic; its score is its distance to the mean). Distances are computed
    blockwise from squared norms, so 100k x 1024 pools need no N x D temporary.
    Score = distance to the nearest center when picked.
    """
    h = ctx.h
    n = len(h)
    k = min(ctx.budget, n)
    h_sq = _row_sqnorms(h)
    chosen: list[int] = []
    scores: list[float] = []
    if ctx.labeled_h is not None and len(ctx.labeled_h) > 0:
        min_d2 = _min_sq_dists(h, h_sq, ctx.labeled_h)
    else:
        d2_mean = _sq_dists_to(h, h_sq, h.mean(axis=0, dtype=np.float64))
        first = int(np.argmin(d2_mean))
        chosen.append(first)
        scores.append(float(np.sqrt(d2_mean[first])))
        min_d2 = _sq_dists_to(h, h_sq, h[first])
    # -inf, not 0: duplicates of a center sit at 0 and must stay eligible once all else is.
    min_d2[chosen] = -np.inf
    while len(chosen) < k:
        nxt = int(np.argmax(min_d2))
        chosen.append(nxt)
        scores.append(float(np.sqrt(max(min_d2[nxt], 0.0))))
        np.minimum(min_d2, _sq_dists_to(h, h_sq, h[nxt]), out=min_d2)
        min_d2[nxt] = -np.inf
    return _selection(chosen, scores)


def _own_center_sq_dists(x: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distance of every row to the center of its own cluster, blockwise."""
    centers = centers.astype(x.dtype, copy=False)
    out = np.empty(len(x), dtype=np.float64)
    for rows in _row_blocks(len(x), x.shape[1]):
        diff = (x[rows] - centers[labels[rows]]).astype(np.float64)
        out[rows] = np.einsum("ij,ij->i", diff, diff)
    return out


def _kmeans_strategy(ctx: QueryContext) -> Selection:
    """Cold start, diversity only: k-means++ on the features, the sample nearest each centroid.

    Needs no labels and no classifier, so it can choose the very first batch. Score = the
    share of the pool in the sample's cluster; picks are ranked by it (a representative of a
    large cluster covers more of the pool).
    """
    h = ctx.h
    n = len(h)
    if n <= ctx.budget:
        return _selection(np.arange(n), np.full(n, 1.0 / n), np.arange(n))
    labels, centers, _ = _kmeans(h, ctx.budget, ctx.seed)
    d2 = _own_center_sq_dists(h, labels, centers)
    # Sorted by (cluster, distance): the first row of each cluster is its medoid-like point.
    by_cluster = np.lexsort((d2, labels))
    ids, first = np.unique(labels[by_cluster], return_index=True)
    sizes = np.bincount(labels, minlength=ctx.budget)
    reps = by_cluster[first][np.lexsort((ids, -sizes[ids]))]
    reps = _top_up(reps, np.argsort(d2, kind="stable"), ctx.budget)
    return _selection(reps, sizes[labels[reps]] / n, labels[reps])


def _typicality(x: np.ndarray, k_nn: int) -> np.ndarray:
    """TypiClust typicality: 1 / (mean Euclidean distance to the k_nn nearest neighbours)."""
    n = len(x)
    k_nn = min(k_nn, n // 2)
    if k_nn < 1:
        # A singleton has no neighbours to measure density with.
        return np.zeros(n)
    # float64: clusters are tight by construction, and float32 cancellation in the distance
    # expansion would swamp the small distances typicality is made of (x is <= 3000 rows).
    x = x.astype(np.float64)
    x_sq = _row_sqnorms(x)
    out = np.empty(n, dtype=np.float64)
    for rows in _row_blocks(n, n):
        scale = x_sq[rows, None] + x_sq[None, :]
        d2 = _clean_sq_dists(scale - 2.0 * (x[rows] @ x.T).astype(np.float64), scale, x.dtype)
        d2[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = np.inf
        nearest = np.partition(d2, k_nn - 1, axis=1)[:, :k_nn]
        # + 1e-5 as in the reference code: exact duplicates get a large, finite typicality.
        out[rows] = 1.0 / (np.sqrt(nearest).mean(axis=1) + 1e-5)
    return out


def _typiclust(ctx: QueryContext) -> Selection:
    """TypiClust (Hacohen et al., ICML 2022): the most typical sample of uncovered clusters.

    The pool is clustered into L + B clusters (L labeled, capped at 500), the labeled
    samples are assigned to their nearest centroid, and clusters are visited by fewest
    labeled members first, then largest first (clusters of at most 5 members last). From each
    the unlabeled sample with the highest typicality (inverse mean distance to its 20
    nearest neighbours inside the cluster) is taken; if the budget outlasts the clusters
    they are visited again. Deviations from the reference code, for CPU memory: the labeled
    features are assigned to clusters rather than clustered with the pool, typicality uses
    Euclidean (the paper) rather than squared distances, and clusters above 3000 members are
    scored on a seeded subset of 3000.
    Score = typicality; clusters = cluster id.
    """
    h = ctx.h
    n = len(h)
    k = min(ctx.budget, n)
    n_labeled = 0 if ctx.labeled_h is None else len(ctx.labeled_h)
    n_clusters = min(n_labeled + ctx.budget, TYPICLUST_MAX_CLUSTERS, n)
    labels, _, model = _kmeans(h, n_clusters, ctx.seed)
    sizes = np.bincount(labels, minlength=n_clusters)
    covered = np.zeros(n_clusters, dtype=np.int64)
    if n_labeled:
        assigned = model.predict(np.asarray(ctx.labeled_h, dtype=h.dtype))
        covered = np.bincount(assigned, minlength=n_clusters)
    small = sizes <= TYPICLUST_MIN_CLUSTER_SIZE
    ids = np.arange(n_clusters)
    visit = np.lexsort((ids, -sizes, covered, small))
    visit = visit[sizes[visit] > 0]

    queues: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    cursor = dict.fromkeys(visit.tolist(), 0)
    chosen: list[int] = []
    scores: list[float] = []
    clusters: list[int] = []
    while len(chosen) < k:
        for c in visit.tolist():
            if len(chosen) == k:
                break
            if c not in queues:
                queues[c] = _typical_order(h, np.flatnonzero(labels == c), ctx.seed, c)
            members, typ = queues[c]
            if cursor[c] < len(members):
                chosen.append(int(members[cursor[c]]))
                scores.append(float(typ[cursor[c]]))
                clusters.append(c)
                cursor[c] += 1
    return _selection(chosen, scores, clusters)


def _typical_order(
    h: np.ndarray, members: np.ndarray, seed: int, cluster: int
) -> tuple[np.ndarray, np.ndarray]:
    """A cluster's members by descending typicality, with their typicality."""
    rest = members[:0]
    if len(members) > TYPICLUST_MAX_POOL:
        rng = np.random.default_rng([seed, cluster])
        keep = np.zeros(len(members), dtype=bool)
        keep[rng.choice(len(members), TYPICLUST_MAX_POOL, replace=False)] = True
        # Unscored members go last (typicality 0): only reached if the budget exceeds the
        # subset, and then every member is still eligible.
        members, rest = members[keep], members[~keep]
    typ = _typicality(h[members], TYPICLUST_K)
    order = _rank(typ)
    return (
        np.concatenate([members[order], rest]),
        np.concatenate([typ[order], np.zeros(len(rest))]),
    )


# hybrid: uncertainty's share of the batch grows linearly with the labeled-set size and is
# whole at HYBRID_FULL_AT labels (the paper's budgets end at 220).
HYBRID_FULL_AT = 200
# auto-f1 (issue 9's default, kept for the record): below AUTO_F1_LOW validation micro-F1 the
# model's uncertainty is not trusted at all (issue 9's CPU regime, F1 ~0.66, lost to random);
# from AUTO_F1_HIGH on (the paper's regime, F1 ~0.8, where MGE+Clustering won) it picks the
# whole batch; linear in between. Issue 18 showed the level does not carry over.
AUTO_F1_LOW = 0.70
AUTO_F1_HIGH = 0.80


def uncertainty_share(weight: float, budget: int, n: int, has_model: bool) -> int:
    """How many of the batch (``min(budget, n)``) the uncertainty part of a mixed strategy
    picks: ``round(weight * k)``, none without a model."""
    return int(round(min(max(weight, 0.0), 1.0) * min(budget, n))) if has_model else 0


def share_candidates(k_u: int, candidates: int | None) -> int | None:
    """m for the uncertainty part of a mixed batch (more than its k_u picks)."""
    return None if candidates is None else max(candidates, k_u + 1)


def append_random(first: Selection, ids: np.ndarray, k_rest: int, seed: int) -> Selection:
    """``first`` (rows of a pool whose image ids are ``ids``), then ``k_rest`` rows drawn
    uniformly among the others by the order :func:`_random` draws in: random's batch less
    ``first``, topped up with the next in its order. A caller that never held the pool's
    features (a streamed query) picks what the pure strategy picks."""
    rest = np.setdiff1d(np.arange(len(ids)), first.indices)
    drawn = rest[draws.draw(np.asarray(ids)[rest], k_rest, seed)]
    k = len(drawn)
    return _selection(np.concatenate([first.indices, drawn]),
                      np.concatenate([first.scores, np.zeros(k)]),
                      np.concatenate([first.clusters, np.full(k, -1)]))


def _uncertainty_part(ctx: QueryContext, k_u: int) -> Selection:
    if not k_u:
        return _empty()
    return _mge_clustering(replace(ctx, budget=k_u,
                                   candidates=share_candidates(k_u, ctx.candidates)))


def _mixed(ctx: QueryContext, weight: float, diversity: Callable[[QueryContext], Selection]
           ) -> Selection:
    """``round(weight * k)`` samples by mge-clustering, the rest by ``diversity`` among the
    samples not yet picked. Uncertainty picks come first in rank order."""
    k = min(ctx.budget, len(ctx.h))
    k_u = uncertainty_share(weight, ctx.budget, len(ctx.h), ctx.p is not None)
    first = _uncertainty_part(ctx, k_u)
    if k == k_u:
        return first
    rest = np.setdiff1d(np.arange(len(ctx.h)), first.indices)
    sub = replace(ctx, h=ctx.h[rest], p=None if ctx.p is None else ctx.p[rest], budget=k - k_u,
                  ids=_ids(ctx)[rest])
    second = diversity(sub)
    return _selection(np.concatenate([first.indices, rest[second.indices]]),
                      np.concatenate([first.scores, second.scores]),
                      np.concatenate([first.clusters, np.full(len(second.indices), -1)]))


def hybrid_weight(n_labeled: int | None) -> float:
    """Share of the batch chosen by uncertainty in ``hybrid``: 0 with no labels, 1 from
    :data:`HYBRID_FULL_AT` labels on."""
    return 0.0 if not n_labeled else min(1.0, n_labeled / HYBRID_FULL_AT)


def auto_weight(model_f1: float | None) -> float:
    """Share of the batch ``auto-f1`` gives to MGE+Clustering, from the model's validation F1.

    Only evidence available at query time is used (never test labels): the query command
    passes the validation micro-F1, or without val labels the micro-F1 of the last answered
    suggestions. Without evidence the weight is 0: the batch is random, which cannot do worse
    than random.
    """
    if model_f1 is None:
        return 0.0
    return float(min(1.0, max(0.0, (model_f1 - AUTO_F1_LOW) / (AUTO_F1_HIGH - AUTO_F1_LOW))))


def _hybrid(ctx: QueryContext) -> Selection:
    """Diversity (TypiClust) early, uncertainty (MGE+Clustering) as labels accumulate."""
    return _mixed(ctx, hybrid_weight(ctx.n_labeled), _typiclust)


def split_batch(ctx: QueryContext, weight: float) -> Selection:
    """``round(weight * k)`` picks by MGE+Clustering (cluster ids >= 0, first in rank order),
    the rest drawn uniformly among the other rows (cluster -1): the two parts stay apart in
    the query, so a later query can tell which part each labeled image came from."""
    k_u = uncertainty_share(weight, ctx.budget, len(ctx.h), ctx.p is not None)
    return append_random(_uncertainty_part(ctx, k_u), _ids(ctx),
                         min(ctx.budget, len(ctx.h)) - k_u, ctx.seed)


def _auto_f1(ctx: QueryContext) -> Selection:
    """Issue 9's rule: random while the model's validation F1 is low, MGE+Clustering once it
    is high (the regime where the paper measured a gain), a mix in between."""
    return split_batch(ctx, auto_weight(ctx.model_f1))


def _auto(ctx: QueryContext) -> Selection:
    """The default: the batch split between MGE+Clustering (``ctx.share`` of it) and random
    draws; :mod:`alft_cli.auto` moves the share towards the part whose labels measurably
    helped more in this project. Without a model the batch is random."""
    return split_batch(ctx, 0.5 if ctx.share is None else ctx.share)


STRATEGIES: dict[str, Callable[[QueryContext], Selection]] = {
    "mge-clustering": _mge_clustering,
    "mge": _mge,
    "random": _random,
    "entropy": _entropy,
    "badge": _badge,
    "coreset": _coreset,
    "kmeans": _kmeans_strategy,
    "typiclust": _typiclust,
    "class-aware-mge": _class_aware_mge,
    "hybrid": _hybrid,
    "auto": _auto,
    "auto-f1": _auto_f1,
}
"""Query strategies by name. Call them through :func:`select`, which validates the input."""

NEEDS_MODEL: set[str] = {"mge-clustering", "mge", "entropy", "badge", "class-aware-mge"}
"""Strategies that need the classifier's probabilities ``p`` (a fine-tuned model)."""


# --------------------------------------------------------------------------- entry point


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _validate(name: str, ctx: QueryContext) -> QueryContext:
    """Check shapes, ranges and options; return the context with arrays as ndarrays."""
    if not _is_int(ctx.budget) or ctx.budget < 1:
        raise OptionError(f"budget must be a whole number >= 1, got {ctx.budget!r}")
    if not _is_int(ctx.seed):
        raise OptionError(f"seed must be a whole number, got {ctx.seed!r}")
    if ctx.candidates is not None and (not _is_int(ctx.candidates) or ctx.candidates < 1):
        raise OptionError(f"candidates must be a whole number >= 1, got {ctx.candidates!r}")

    h = np.asarray(ctx.h)
    if h.ndim != 2:
        raise OptionError(f"features must be a 2-D array (samples x dims), got shape {h.shape}")
    if not np.issubdtype(h.dtype, np.floating):
        h = h.astype(np.float32)
    # A float64 sum propagates any NaN/inf without a temporary mask the size of h.
    if h.size and not np.isfinite(h.sum(dtype=np.float64)):
        raise OptionError("features contain NaN or infinite values")

    p = ctx.p
    if p is None:
        if name in NEEDS_MODEL:
            raise OptionError(
                f"strategy '{name}' needs a trained model's predictions: run `alft finetune` "
                "first, or choose one of: " + ", ".join(sorted(set(STRATEGIES) - NEEDS_MODEL))
            )
    else:
        p = np.asarray(p)
        if p.ndim != 2 or len(p) != len(h):
            raise OptionError(
                f"probabilities must be a 2-D array with one row per feature row: "
                f"got {p.shape} for features {h.shape}"
            )
        if not np.issubdtype(p.dtype, np.floating):
            p = p.astype(np.float32)
        # min/max are NaN if any value is, and NaN fails both comparisons.
        if p.size and not (p.min() >= 0.0 and p.max() <= 1.0):
            raise OptionError("probabilities must lie in [0, 1] (sigmoid outputs), without NaN")

    labeled_h = ctx.labeled_h
    if labeled_h is not None:
        labeled_h = np.asarray(labeled_h)
        if labeled_h.ndim != 2 or labeled_h.shape[1] != h.shape[1]:
            raise OptionError(
                f"labeled features must have shape (L, {h.shape[1]}), got {labeled_h.shape}"
            )
        if labeled_h.size and not np.isfinite(labeled_h.sum(dtype=np.float64)):
            raise OptionError("labeled features contain NaN or infinite values")

    labeled_y = ctx.labeled_y
    if labeled_y is not None:
        labeled_y = np.asarray(labeled_y)
        if labeled_y.ndim != 2 or (p is not None and labeled_y.shape[1] != p.shape[1]):
            n_classes = "C" if p is None else p.shape[1]
            raise OptionError(f"labels must have shape (L, {n_classes}), got {labeled_y.shape}")
        if labeled_h is not None and len(labeled_h) != len(labeled_y):
            raise OptionError(
                f"{len(labeled_h)} labeled feature rows but {len(labeled_y)} label rows"
            )
        if not np.isin(labeled_y, (0, 1)).all():
            raise OptionError("labels must be 0/1")

    ids = None if ctx.ids is None else np.asarray(ctx.ids)
    if ids is not None and (ids.shape != (len(h),) or not np.issubdtype(ids.dtype, np.integer)
                            or len(np.unique(ids)) != len(ids)):
        raise OptionError(f"ids must be {len(h)} distinct whole numbers, one per feature row")
    return replace(ctx, h=h, p=p, labeled_h=labeled_h, labeled_y=labeled_y, ids=ids)


def select(name: str, ctx: QueryContext) -> Selection:
    """Run the strategy ``name`` on ``ctx`` after validating it.

    Args:
        name: A key of :data:`STRATEGIES`, e.g. ``"mge-clustering"``.
        ctx: The pool's features (and predictions), budget and seed.

    Returns:
        Exactly ``min(budget, N)`` unique samples in rank order.

    Raises:
        OptionError: Unknown strategy, impossible budget or candidates, arrays of the wrong
            shape or range, or a model-based strategy without predictions.

    Example:
        >>> ctx = QueryContext(h=features, p=probs, budget=20, seed=0)
        >>> select("mge-clustering", ctx).indices
    """
    if name not in STRATEGIES:
        raise OptionError(
            f"unknown query strategy '{name}'; known: " + ", ".join(sorted(STRATEGIES))
        )
    ctx = _validate(name, ctx)
    if len(ctx.h) == 0:
        return _empty()
    sel = STRATEGIES[name](ctx)
    k = min(ctx.budget, len(ctx.h))
    if len(sel.indices) != k or len(np.unique(sel.indices)) != k:
        raise RuntimeError(f"bug: strategy '{name}' chose {sel.indices!r}, wanted {k} unique")
    return sel
