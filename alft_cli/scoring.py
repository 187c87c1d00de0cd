"""Pool scoring and selection: what ``alft query`` picks, and from which evidence.

:func:`choose` runs the one inference pass a strategy needs over the unlabeled pool and hands
its features h and probabilities p to the pure strategy (:mod:`alft_cli.strategies`).
Strategies that only ever pick among the top rows of a per-sample score (mge, entropy,
mge-clustering's top-m) are scored in one streaming pass that keeps features for those rows
only, so memory does not grow with the pool. ``auto`` splits each batch between
MGE+Clustering and random draws; :func:`auto_decision` reads which labeled image came from
which part and lets :mod:`alft_cli.auto` measure whose labels helped more (features of the
labeled and validation images only). ``auto-f1`` (issue 9's rule) mixes by how good the model
is (:func:`model_evidence`). Under torchrun every rank scores a shard of the pool and only
rank 0 selects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alft_cli.auto import PRIOR_WINS, SHARE_MAX, SHARE_MIN, for_batch, is_first
from alft_cli.errors import OptionError
from alft_cli.project import Project


@dataclass
class Choice:
    """The images a query picked, in rank order (sample ids), and why."""

    ids: np.ndarray
    scores: np.ndarray
    clusters: np.ndarray
    probabilities: np.ndarray | None  # of the chosen images (their suggestions), or None
    notes: list[str] = field(default_factory=list)
    # auto's evidence to keep with the round: (this round's p or None, the share), else None.
    auto: tuple[float | None, float] | None = None


def rank_device(dev: Any) -> Any:
    """Under torchrun: join the process group; each rank scores on its own GPU."""
    from alft_cli import distributed

    info = distributed.env_info()
    if not info.enabled:
        return dev
    distributed.init(dev)
    if dev.type == "cuda":
        import torch

        return torch.device("cuda", info.local_rank)
    return dev


def choose(project: Project, model_rec: Any, strategy: str, unlabeled: np.ndarray,
           labeled: set[int], budget: int, candidates: int | None, seed: int, dev: Any,
           batch_size: int, round_: int) -> Choice | None:
    """Pick ``budget`` of the ``unlabeled`` sample ids with ``strategy`` for round ``round_``.

    ``model_rec`` is the round whose model scores the pool (None before any fine-tuning:
    the pretrained backbone gives features, and there are no probabilities). Returns None
    on torchrun ranks other than 0, which only take part in the scoring pass.
    """
    from alft_cli import distributed
    from alft_cli.strategies import QueryContext, select

    # scikit-learn takes ~1 s to import: do it while the pool is being scored, and wait
    # for it before selecting (two threads importing one package can see it half-made).
    # auto selects inside its own pass, so it imports when it gets there.
    importing = (_import_in_background("sklearn.cluster")
                 if strategy not in ("random", *SPLIT) else None)
    notes: list[str] = []
    evidence: tuple[float | None, float] | None = None
    if strategy in SPLIT:
        model = scoring_model(project, model_rec) if model_rec is not None else None
        share, note, evidence = _split_share(project, model_rec, model, strategy, unlabeled,
                                             budget, seed, dev, batch_size, round_)
        selection, chosen_p = _auto_selection(project, model, unlabeled, budget, candidates,
                                              seed, share, dev, batch_size)
        notes.append(note)
    else:
        rows, h, p, labeled_h, labeled_y, candidates = _score_pool(
            project, model_rec, strategy, unlabeled, labeled, budget, candidates, dev,
            batch_size)
    if importing is not None:
        importing.join()
    if not distributed.env_info().is_main:
        return None
    if strategy in SPLIT:
        chosen = unlabeled[selection.indices]
    else:
        ctx = QueryContext(h=h, p=p, budget=budget, seed=seed, candidates=candidates,
                           labeled_h=labeled_h, labeled_y=labeled_y, n_labeled=len(labeled),
                           ids=unlabeled[rows])
        selection = select(strategy, ctx)
        chosen_p = None if p is None else p[selection.indices]
        chosen = unlabeled[rows[selection.indices]]
    return Choice(chosen, np.asarray(selection.scores), np.asarray(selection.clusters),
                  chosen_p, notes, evidence)


# The strategies that split each batch between MGE+Clustering and random draws.
SPLIT = ("auto", "auto-f1")


def _split_share(project: Project, model_rec: Any, model: Any, strategy: str,
                 unlabeled: np.ndarray, budget: int, seed: int, dev: Any, batch_size: int,
                 round_: int) -> tuple[float, str, tuple[float | None, float] | None]:
    """The MGE+Clustering share of a split batch, the query note that says why and, for
    ``auto``, the evidence the round keeps: (this round's p, the share)."""
    from alft_cli.strategies import auto_weight, uncertainty_share

    k = min(budget, len(unlabeled))
    if model_rec is None:
        return 0.0, f"{strategy}: no trained model yet, so the whole batch is random", (
            (None, 0.0) if strategy == "auto" else None)
    if strategy == "auto-f1":
        model_f1, evidence = model_evidence(project, model_rec)
        share = auto_weight(model_f1)
        return share, (f"auto-f1: {evidence} -> {share:.0%} of the batch by MGE+Clustering, "
                       f"{1 - share:.0%} random"), None
    decision = for_batch(auto_decision(project, model, seed, dev, batch_size, round_), k)
    k_u = uncertainty_share(decision.share, budget, len(unlabeled), True)
    return (decision.share, "auto: " + explain(decision, k_u, k),
            (decision.p_mge_better, decision.share))


def auto_decision(project: Project, model: Any, seed: int, dev: Any, batch_size: int,
                  round_: int) -> Any:
    """``auto``'s share for round ``round_``: this round's evidence
    (:func:`alft_cli.auto.decide`, from the project's labeled split batches: features of
    those images and of up to ``MAX_HELDOUT`` gold validation images from the current model)
    combined with the earlier auto rounds' (:func:`alft_cli.auto.combine`); under torchrun
    rank 0 decides and tells the others."""
    from alft_cli import distributed
    from alft_cli.auto import (
        MAX_HELDOUT,
        MGE,
        RANDOM,
        AutoEvidence,
        combine,
        decide,
        part_of,
        prior,
        swappable,
    )
    from alft_cli.store import decode_y

    store = project.store
    # The p of every earlier auto round that could judge, oldest first.
    earlier = [d["p"] for r, d in store.auto_decisions().items()
               if r < round_ and d["p"] is not None]
    labels = store.labels()
    parts: dict[int, int] = {}
    queried: dict[int, int | None] = {}
    for sid, strategy, cluster in store.labeled_queries():
        queried[int(sid)] = part = part_of(strategy, cluster)
        if part is not None and sid in labels:
            parts[int(sid)] = part
    ids = np.array(sorted(parts), dtype=np.int64)
    vid, vy = store.gold("val")
    # Answers routed to val (--val-from-answers) were queried: only the random draws among
    # them are a fair sample of the pool to judge the parts on.
    fair = np.array([queried.get(int(v), RANDOM) == RANDOM for v in vid], dtype=bool)
    vid, vy = vid[fair], vy[fair]
    if len(vid) > MAX_HELDOUT:
        keep = np.sort(np.random.default_rng(seed).choice(len(vid), MAX_HELDOUT, replace=False))
        vid, vy = vid[keep], vy[keep]
    n_mge = sum(part == MGE for part in parts.values())
    n_random = len(parts) - n_mge
    if not swappable(n_mge, n_random, len(vid) > 0):
        return combine(prior(n_mge, n_random, "validation" if len(vid) else
                             "cross-fitted random labels", len(vid) if len(vid) else n_random),
                       earlier)
    from alft_cli.data import CachedImages

    model.to(dev)
    h, _ = _score(model, CachedImages(project.cache_path), np.concatenate([ids, vid]), dev,
                  batch_size, with_p=False)
    decision = None
    if distributed.env_info().is_main:
        ev = AutoEvidence(h=h[:len(ids)], y=np.stack([decode_y(labels[int(i)]) for i in ids]),
                          part=np.array([parts[int(i)] for i in ids]),
                          heldout_h=h[len(ids):] if len(vid) else None,
                          heldout_y=vy if len(vid) else None)
        decision = combine(decide(ev, seed), earlier)
    return _from_rank0(decision)


def _from_rank0(obj: Any) -> Any:
    """``obj`` as rank 0 has it, on every rank (itself without torchrun)."""
    from alft_cli import distributed

    if not distributed.env_info().enabled:
        return obj
    import torch

    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def explain(d: Any, k_u: int, k: int) -> str:
    """Why ``auto`` split the batch as it did, in one sentence of the query note."""
    split = f"{k_u} of {k} by MGE+Clustering, {k - k_u} random"
    clipped = "" if d.p_accumulated is None or d.share == d.p_accumulated else (
        f", kept within {SHARE_MIN:g}..{SHARE_MAX:g} so both parts stay measured")
    rounds = "round" if d.rounds == 1 else "rounds"
    # The prior's rounds are named only where there are any (none since issue 18's even start).
    prior = f"; after {PRIOR_WINS} won by MGE+Clustering in a prior" if PRIOR_WINS else ""
    accumulated = "" if d.p_accumulated is None else (
        f"MGE+Clustering's labels helped more in {d.p_sum:.1f} of {d.rounds} judged auto "
        f"{rounds} (each counted by its probability{prior}), "
        f"so they help more often than not with "
        f"posterior probability {d.p_accumulated:.2f} -> share {d.share:.2f}{clipped}: {split}")
    if d.p_mge_better is None:
        if is_first(d):
            return (f"no labeled MGE+Clustering picks to judge yet, and the first model has "
                    f"seen only random labels -> a first look at MGE+Clustering, the few "
                    f"picks the next query needs to judge it: {split}")
        if d.n_mge == 0:
            why = "no labeled MGE+Clustering picks to judge yet"
        else:
            why = (f"too few labels to judge yet ({d.n_mge} from MGE+Clustering, "
                   f"{d.n_random} random, held out: {d.heldout})")
        if d.p_accumulated is None:
            return f"{why} -> the prior even split: {split}"
        return f"{why} in this round; over the earlier ones {accumulated}"
    held = (f"the {d.n_heldout} validation images" if d.heldout == "validation"
            else f"the {d.n_heldout} random labels, cross-fitted")
    return (f"a ridge probe on the model's features scored on {held} changed F1 by "
            f"{100 * d.gain:+.1f} points (micro {100 * d.gain_micro:+.1f}, macro "
            f"{100 * d.gain_macro:+.1f}) when {d.swapped} of the {d.n_random} random labels "
            f"were swapped for MGE+Clustering picks ({d.n_mge} labeled), and raised it in "
            f"{d.p_mge_better:.0%} of the draws; {accumulated}")


def model_evidence(project: Project, model_rec: Any) -> tuple[float | None, str]:
    """``auto-f1``'s evidence: how good the current model is, from what is known at query
    time (never test labels):
    its validation micro-F1 when the project has val labels; otherwise the micro-F1 of the
    latest query's suggestions against the labels people gave those images since
    (:func:`alft_cli.evidence.last_answered_suggestions`)."""
    from alft_cli.evidence import last_answered_suggestions

    val = (model_rec.metrics or {}).get("val") or {}
    if val.get("micro_f1") is not None:
        return float(val["micro_f1"]), (f"validation micro-F1 {val['micro_f1']:.3f} of "
                                        f"round {model_rec.round}'s model")
    evidence = last_answered_suggestions(project)
    if evidence is None:
        return None, "no validation labels and no answered model suggestions yet"
    return evidence.micro_f1, f"no validation labels; {evidence.describe()}"


def _score_pool(project: Project, model_rec: Any, strategy: str, unlabeled: np.ndarray,
                labeled: set[int], budget: int, candidates: int | None, dev: Any,
                batch_size: int) -> tuple:
    """One inference pass over the unlabeled pool: what the strategy looks at.

    Returns (rows, h, p, labeled_h, labeled_y, candidates); ``rows`` index ``unlabeled``
    (all of them, or only the top-m kept by a streamed pass).
    """
    from alft_cli.data import CachedImages
    from alft_cli.embed import infer_top

    store = project.store
    cache = CachedImages(project.cache_path)
    model = scoring_model(project, model_rec) if strategy != "random" else None
    h = p = labeled_h = labeled_y = None
    rows = np.arange(len(unlabeled))
    if model is not None and model_rec is not None and strategy in STREAMED:
        # Only the top-m rows by score can be chosen: keep just their features.
        keep = _kept_rows(strategy, budget, candidates)
        model.to(dev)
        rows, h, p_all, _ = infer_top(model, cache, unlabeled, dev, STREAMED[strategy], keep,
                                      batch_size)
        p = p_all[rows]
        if strategy == "mge-clustering":
            candidates = min(keep, len(rows)) if len(rows) > budget else None
    elif model is not None:
        h, p = _score(model, cache, unlabeled, dev, batch_size, with_p=model_rec is not None)
        if strategy in ("coreset", "typiclust", "hybrid") and labeled:
            lab_ids, labeled_y = store.labeled_arrays()
            labeled_h, _ = _score(model, cache, lab_ids, dev, batch_size, with_p=False)
        elif strategy == "class-aware-mge":
            _, labeled_y = store.labeled_arrays()
    else:
        h = np.zeros((len(unlabeled), 1), np.float32)
    return rows, h, p, labeled_h, labeled_y, candidates


def _auto_selection(project: Project, model: Any, unlabeled: np.ndarray, budget: int,
                    candidates: int | None, seed: int, share: float, dev: Any,
                    batch_size: int) -> tuple[Any, np.ndarray | None]:
    """A split batch (``auto``, ``auto-f1``) without holding the pool's features: its
    MGE+Clustering share comes from one streamed pass that keeps only the top-m rows, its
    random share needs no features at all (an all-random batch costs no pool pass), and
    probabilities are computed for the chosen images only, for their suggestions. ``model``
    is the current round's classifier, or None before any. Picks exactly what
    ``strategies.split_batch`` picks on the full (h, p) (tested). Returns (selection over
    ``unlabeled``, probabilities of the chosen); under torchrun the other ranks take part in
    the passes and return (None, None)."""
    from alft_cli import distributed
    from alft_cli.data import CachedImages
    from alft_cli.embed import infer_top
    from alft_cli.strategies import (
        QueryContext,
        Selection,
        append_random,
        select,
        share_candidates,
        uncertainty_share,
    )

    n = len(unlabeled)
    k = min(budget, n)
    k_u = uncertainty_share(share, budget, n, model is not None)
    cache = CachedImages(project.cache_path)
    first = Selection(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    p_all = None
    if k_u:
        keep = _kept_rows("mge-clustering", k_u, share_candidates(k_u, candidates))
        model.to(dev)
        rows, h, p_all, _ = infer_top(model, cache, unlabeled, dev, _mge, keep, batch_size)
        if not distributed.env_info().is_main:
            return None, None  # only rank 0 received the top rows
        part = select("mge-clustering", QueryContext(
            h=h, p=p_all[rows], budget=k_u, seed=seed,
            candidates=min(keep, len(rows)) if len(rows) > k_u else None))
        first = Selection(rows[part.indices], part.scores, part.clusters)
    selection = append_random(first, unlabeled, k - k_u, seed)
    if p_all is not None:
        return selection, p_all[selection.indices]
    if model is None:
        return selection, None
    _, p = _score(model, cache, unlabeled[selection.indices], dev, batch_size, with_p=True)
    return selection, p


def _mge(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    from alft_cli.strategies import mge_scores

    return mge_scores(h, p)


def _entropy(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    from alft_cli.strategies import entropy_scores

    return entropy_scores(p)


# Strategies that only ever pick among the top rows of a per-sample score: the pool is
# scored in one streaming pass that keeps features for those rows only.
STREAMED = {"mge-clustering": _mge, "mge": _mge, "entropy": _entropy}


def _kept_rows(strategy: str, budget: int, candidates: int | None) -> int:
    from alft_cli.strategies import CANDIDATE_FACTOR

    if strategy == "mge-clustering":
        return candidates if candidates is not None else CANDIDATE_FACTOR * budget
    return budget


def _import_in_background(module: str) -> Any:
    import importlib
    import threading

    thread = threading.Thread(target=importlib.import_module, args=(module,), daemon=True)
    thread.start()
    return thread


def scoring_model(project: Project, model_rec: Any) -> Any:
    """The latest round's classifier, or (before any) the pretrained backbone for features."""
    from alft_cli.finetune import load_round_model
    from alft_cli.routes import pretrained_classifier

    if model_rec is not None:
        model, _ = load_round_model(
            project.root, model_rec.model_file, model_rec.round,
            f"train the current round again with: alft finetune -p {project.root} (or query "
            "without a model: --strategy random)")
        return model
    pretrained = json.loads(project.store.get_meta("pretrained") or "null")
    if pretrained is None:
        raise OptionError("no trained model and no pretrained backbone to take features "
                          "from: run alft pretrain (or use --strategy random)")
    return pretrained_classifier(project, pretrained)


def _score(model: Any, cache: Any, ids: np.ndarray, device: Any, batch_size: int,
           with_p: bool) -> tuple[np.ndarray, np.ndarray | None]:
    from alft_cli.embed import infer

    model.to(device)
    h, p = infer(model, cache, ids, device, batch_size, probabilities=with_p)
    return h, p


# --------------------------------------------------------------------------------------------
