"""What auto and auto-f1 decide from, in projects with and without gold val labels (never
test labels): auto from its own split batches' labels (a probe ablation held out on val
labels, or cross-fitted on the random labels), auto-f1 (issue 9's rule) from the model's
validation F1, or the last query's suggestions checked against the labels people gave."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from alft_cli import api, auto
from alft_cli.labels import write_labels_csv
from alft_cli.metrics import multilabel_metrics


def _answer(project, tiny_archive, query_file, out):
    gold = {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}
    keys = [row["filename"] for row in csv.DictReader(open(query_file))]
    write_labels_csv(out, keys, np.stack([gold[k] for k in keys]), tiny_archive.classes)
    api.import_labels(project, out)
    return keys


@pytest.mark.slow
def test_auto_f1_without_val_labels_uses_answered_suggestions(tiny_archive, tmp_path):
    project = tmp_path / "proj"
    # No --labels: no gold val/test labels, so no validation F1 will ever exist.
    api.init_pool(tiny_archive.root, project, classes=list(tiny_archive.classes), initial=12,
                  image_size=32, seed=0)
    first = api.status(project)["rounds"][0]
    _answer(project, tiny_archive, project / first["query_file"], tmp_path / "a0.csv")
    api.finetune(project, epochs=2, batch_size=6, lr_step=0, backbone="resnet18",
                 device="cpu", seed=0)
    assert api.status(project)["rounds"][0]["metrics"].get("val") in (None, {})

    # Nothing answered from a model yet: auto has no evidence and stays random.
    r1 = api.query(project, budget=12, strategy="auto-f1", seed=1, device="cpu")
    note = next(n for n in r1.notes if n.startswith("auto-f1:"))
    assert "no answered model suggestions" in note and "0% of the batch by MGE" in note
    suggested = {row["filename"]: np.array([float(row[f"p_{c}"])
                                            for c in tiny_archive.classes])
                 for row in csv.DictReader(open(r1.query_file))}
    keys = _answer(project, tiny_archive, r1.query_file, tmp_path / "a1.csv")
    api.finetune(project, epochs=1, batch_size=6, lr_step=0, device="cpu", seed=0)

    # Now the round-0 model's suggestions on those 12 images are checked against the labels.
    gold = {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}
    want = multilabel_metrics(np.stack([gold[k] for k in keys]),
                              np.stack([suggested[k] for k in keys]),
                              tiny_archive.classes)["micro_f1"]
    r2 = api.query(project, budget=6, strategy="auto-f1", seed=2, device="cpu")
    note = next(n for n in r2.notes if n.startswith("auto-f1:"))
    assert "round 0's suggestions on the 12 images of round 1's query" in note, note
    assert f"micro-F1 {want:.3f}" in note, (note, want)


def test_auto_f1_reports_validation_evidence(project, tmp_path, tiny_archive):
    # The conftest project has gold val labels: auto-f1 uses the model's validation F1.
    first = api.status(project)["rounds"][0]
    _answer(project, tiny_archive, project / first["query_file"], tmp_path / "a0.csv")
    api.finetune(project, epochs=1, batch_size=5, lr_step=0, backbone="resnet18",
                 device="cpu", seed=0)
    val_f1 = api.status(project)["rounds"][0]["metrics"]["val"]["micro_f1"]
    r = api.query(project, budget=5, strategy="auto-f1", seed=1, device="cpu")
    note = next(n for n in r.notes if n.startswith("auto-f1:"))
    assert f"validation micro-F1 {val_f1:.3f} of round 0's model" in note, note


def _decision_from_scratch(project, seed, round_, earlier=()):
    """auto's decision recomputed from the saved project with the pure core: the parts from
    the query files' cluster column, features from the current model, combined with the
    ``earlier`` rounds' evidence."""
    import torch

    from alft_cli.auto import MGE, RANDOM, AutoEvidence, combine, decide
    from alft_cli.data import CachedImages
    from alft_cli.draws import round_seed
    from alft_cli.embed import infer
    from alft_cli.finetune import load_model
    from alft_cli.project import open_project
    from alft_cli.store import decode_y

    info = api.status(project)
    ids, parts = [], []
    p = open_project(project)
    key_ids, labels = p.store.ids_by_key(), p.store.labels()
    for r in info["rounds"]:
        for row in csv.DictReader(open(project / r["query_file"])):
            sid = key_ids[row["filename"]]
            if sid in labels:
                ids.append(sid)
                parts.append(MGE if r["strategy"] == "auto" and int(row["cluster"]) >= 0
                             else RANDOM)
    order = np.argsort(ids)  # the decision draws over the images in sample-id order
    ids, parts = np.array(ids)[order], np.array(parts)[order]
    model, _ = load_model(project / [r for r in info["rounds"] if r["model"]][-1]["model"])
    h, _ = infer(model, CachedImages(p.cache_path), ids, torch.device("cpu"),
                 probabilities=False)
    y = np.stack([decode_y(labels[i]) for i in ids])
    p.close()
    return combine(decide(AutoEvidence(h, y, parts), round_seed(seed, round_)), earlier)


@pytest.mark.slow
def test_auto_without_val_labels_judges_its_parts_on_the_random_labels(tiny_archive, tmp_path):
    project = tmp_path / "proj"
    api.init_pool(tiny_archive.root, project, classes=list(tiny_archive.classes), initial=12,
                  image_size=32, seed=0)
    _answer(project, tiny_archive, project / api.status(project)["rounds"][0]["query_file"],
            tmp_path / "a0.csv")
    api.finetune(project, epochs=2, batch_size=6, lr_step=0, backbone="resnet18",
                 device="cpu", seed=0)
    r1 = api.query(project, budget=12, seed=1, device="cpu")  # the default: auto
    assert r1.strategy == "auto"
    # The first batch: only the 2 MGE+Clustering picks the next query needs to judge them.
    assert any("no labeled MGE+Clustering picks to judge yet, and the first model has seen "
               "only random labels -> a first look at MGE+Clustering, the few picks the next "
               "query needs to judge it: 2 of 12 by MGE+Clustering, 10 random" in n
               for n in r1.notes), r1.notes
    clusters1 = [int(row["cluster"]) for row in csv.DictReader(open(r1.query_file))]
    assert min(clusters1[:2]) >= 0 and set(clusters1[2:]) == {-1}  # MGE picks first
    _answer(project, tiny_archive, r1.query_file, tmp_path / "a1.csv")
    api.finetune(project, epochs=1, batch_size=6, lr_step=0, device="cpu", seed=0)

    r2 = api.query(project, budget=10, seed=2, device="cpu")
    note = next(n for n in r2.notes if n.startswith("auto:"))
    want = _decision_from_scratch(project, 2, r2.round)
    assert want.heldout == "cross-fitted random labels" and want.n_heldout == 22
    assert want.n_mge == 2 and want.swapped == 2
    assert "scored on the 22 random labels, cross-fitted" in note, note
    assert f"{100 * want.gain:+.1f} points" in note and f"share {want.share:.2f}" in note, note
    k_u = round(want.share * 10)
    assert f"{k_u} of 10 by MGE+Clustering, {10 - k_u} random" in note, note
    clusters = [int(row["cluster"]) for row in csv.DictReader(open(r2.query_file))]
    assert sum(c >= 0 for c in clusters) == k_u
    # The round keeps its own evidence; the next query folds it into the share.
    assert _auto_rows(project) == [(r1.round, None, pytest.approx(2 / 12)),
                                   (r2.round, want.p_mge_better, want.share)]
    _answer(project, tiny_archive, r2.query_file, tmp_path / "a2.csv")
    api.finetune(project, epochs=1, batch_size=6, lr_step=0, device="cpu", seed=0)
    r3 = api.query(project, budget=10, seed=3, device="cpu")
    note = next(n for n in r3.notes if n.startswith("auto:"))
    want3 = _decision_from_scratch(project, 3, r3.round, [want.p_mge_better])
    assert want3.rounds == 2 and f"share {want3.share:.2f}" in note, note
    assert f"in {want3.p_sum:.1f} of 2 judged auto rounds" in note, note
    # The prior's rounds are named only where there are any (none now).
    assert ("in a prior" in note) == bool(auto.PRIOR_WINS), note
    assert _auto_rows(project)[-1] == (r3.round, want3.p_mge_better, want3.share)
    # Re-querying the unanswered round with another strategy drops its evidence.
    api.query(project, budget=10, strategy="random", seed=3, device="cpu", force=True)
    assert [r[0] for r in _auto_rows(project)] == [r1.round, r2.round]


def _auto_rows(project):
    # What alft status --json says of each auto round (the others have "auto": null).
    rounds = api.status(project)["rounds"]
    assert all(r["auto"] is None for r in rounds if r["strategy"] != "auto")
    return [(r["round"], r["auto"]["p"], r["auto"]["share"]) for r in rounds if r["auto"]]


@pytest.mark.slow
def test_auto_judges_on_the_random_draws_among_answers_routed_to_val(tiny_archive, tmp_path,
                                                                     monkeypatch):
    """--val-from-answers sends queried images to val: the MGE+Clustering picks among them
    are no fair sample of the pool, so auto holds out only the random draws."""
    import alft_cli.auto as auto_core
    from alft_cli.project import open_project

    project = tmp_path / "proj"
    api.init_pool(tiny_archive.root, project, classes=list(tiny_archive.classes), initial=16,
                  image_size=32, seed=0, val_from_answers=0.3)
    _answer(project, tiny_archive, project / api.status(project)["rounds"][0]["query_file"],
            tmp_path / "a0.csv")
    api.finetune(project, epochs=1, batch_size=6, lr_step=0, backbone="resnet18",
                 device="cpu", seed=0)
    # A first auto batch takes only 2 MGE+Clustering picks; an mge-clustering round (its
    # labels count for that part too) sends enough of them to val to be sure some go there.
    r1 = api.query(project, budget=16, strategy="mge-clustering", seed=1, device="cpu")
    _answer(project, tiny_archive, r1.query_file, tmp_path / "a1.csv")
    api.finetune(project, epochs=1, batch_size=6, lr_step=0, device="cpu", seed=0)

    p = open_project(project)
    val = set(p.store.sample_ids("val").tolist())
    parts = {sid: auto_core.part_of(s, c) for sid, s, c in p.store.labeled_queries()}
    p.close()
    fair = [v for v in val if parts[v] == auto_core.RANDOM]
    assert len(fair) < len(val)  # some MGE+Clustering picks went to val, and are left out
    seen = []
    decide = auto_core.decide
    monkeypatch.setattr(auto_core, "decide",
                        lambda ev, seed: seen.append(ev) or decide(ev, seed))
    api.query(project, budget=6, seed=2, device="cpu")
    assert len(seen) == 1 and len(seen[0].heldout_y) == len(fair)


def test_projects_made_before_auto_kept_its_evidence(project, tiny_archive, tmp_path):
    import sqlite3

    first = api.status(project)["rounds"][0]
    _answer(project, tiny_archive, project / first["query_file"], tmp_path / "a0.csv")
    # No model yet: the whole batch is random, and the round says so.
    r1 = api.query(project, budget=4, seed=1, device="cpu")
    assert api.status(project)["rounds"][r1.round]["auto"] == {"p": None, "share": 0.0}
    # An older project has no table: status (a read-only open) shows no evidence ...
    conn = sqlite3.connect(project / "alft.db")
    conn.execute("DROP TABLE auto_decisions")
    conn.commit()
    conn.close()
    assert all(r["auto"] is None for r in api.status(project)["rounds"])
    # ... and the next query (a writing open) creates it and keeps its round's evidence.
    r2 = api.query(project, budget=4, seed=2, device="cpu", force=True)
    assert r2.round == r1.round
    assert api.status(project)["rounds"][r2.round]["auto"] == {"p": None, "share": 0.0}
