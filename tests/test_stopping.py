"""The stop signal (issue #15, part 3): stabilizing predictions on a fixed stop set
(Bloodgood & Vijay-Shanker 2009), its math against scikit-learn, and its bookkeeping through
real fine-tuning rounds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from alft_cli import api, stopping
from alft_cli.labels import write_labels_csv
from alft_cli.project import open_project

# -------------------------------------------------------------------------------- pure math


@pytest.mark.parametrize("rate_a,rate_b,flip", [(0.5, 0.5, 0.1), (0.05, 0.1, 0.3),
                                                (0.9, 0.8, 0.02), (0.3, 0.3, 0.5)])
def test_class_kappas_equal_sklearn_cohen_kappa(rate_a, rate_b, flip):
    rng = np.random.default_rng(int(100 * rate_a + 10 * flip))
    a = rng.random((200, 6)) < rate_a
    b = np.where(rng.random((200, 6)) < flip, rng.random((200, 6)) < rate_b, a)
    got = stopping.class_kappas(a, b)
    want = [cohen_kappa_score(a[:, c], b[:, c]) for c in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_kappa_is_undefined_only_when_both_columns_are_the_same_constant():
    a = np.array([[0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]], dtype=bool)
    b = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]], dtype=bool)
    k = stopping.class_kappas(a, b)
    # Columns 0 (never) and 1 (always) agree trivially: no information, NaN.
    assert np.isnan(k[0]) and np.isnan(k[1])
    # Column 2: one rater constant, the other not -> kappa 0; column 3: opposite constants.
    assert k[2] == pytest.approx(cohen_kappa_score(a[:, 2], b[:, 2])) == pytest.approx(0.0)
    assert k[3] == pytest.approx(cohen_kappa_score(a[:, 3], b[:, 3])) == pytest.approx(0.0)
    assert np.isnan(stopping.class_kappas(np.zeros((0, 2)), np.zeros((0, 2)))).all()


def test_agreement_means_defined_classes_and_counts_changed_label_sets():
    prev = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    cur = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    got = stopping.agreement(prev, cur)
    k1 = cohen_kappa_score(prev[:, 1], cur[:, 1])
    assert got["per_class"][0] == pytest.approx(1.0) and got["per_class"][2] is None
    assert got["kappa"] == pytest.approx((1.0 + k1) / 2) and got["classes"] == 2
    assert got["changed"] == pytest.approx(1 / 4) and got["n"] == 4
    # Only the kept images are compared: leaving out the one that changed gives kappa 1.
    kept = stopping.agreement(prev, cur, keep=np.array([True, True, False, True]))
    assert kept["n"] == 3 and kept["changed"] == 0.0 and kept["kappa"] == pytest.approx(1.0)
    # A model that predicts nothing, twice, has no defined kappa at all.
    none = stopping.agreement(np.zeros((5, 3), bool), np.zeros((5, 3), bool))
    assert none["kappa"] is None and none["classes"] == 0 and none["changed"] == 0.0


def test_stop_rule_averages_a_window_of_consecutive_kappas():
    kappas = [None, 0.80, 0.995, 0.999, 0.97, 0.995, 0.998, 0.999]
    # Window 3 at 0.99: every window up to 4-6 averages below 0.99; 5-7 averages 0.9973.
    assert stopping.stop_point(kappas, 0.99, 3) == 7
    assert stopping.stop_point(kappas, 0.99, 1) == 2
    assert stopping.stop_point(kappas, 0.999, 3) is None
    # An undefined kappa inside the window never counts as stable.
    assert stopping.stop_point([None, 0.999, None, 0.999, 0.999], 0.99, 2) == 4
    rounds = [(r, 40 + 20 * r, k) for r, k in enumerate(kappas)]
    yes = stopping.recommendation(rounds, 0.99, 3, stop_set_size=500)
    assert yes["recommended"] and "rounds 5-7" in yes["reason"] and "180 labels" in yes["reason"]
    no = stopping.recommendation(rounds[:5], 0.99, 3)
    assert not no["recommended"] and "still change" in no["reason"]
    early = stopping.recommendation(rounds[:2], 0.99, 3)
    assert not early["recommended"] and "1 so far" in early["reason"]
    with pytest.raises(ValueError):
        stopping.stop_point(kappas, 0.99, 0)


def test_stop_set_draw_is_seeded_sorted_and_order_free():
    pool = np.arange(100, 1150)
    a = stopping.draw_stop_set(pool, seed=3)
    assert len(a) == stopping.STOP_SET_SIZE and np.all(np.diff(a) > 0)
    assert set(a) <= set(pool.tolist())
    np.testing.assert_array_equal(a, stopping.draw_stop_set(pool[::-1], seed=3))
    assert not np.array_equal(a, stopping.draw_stop_set(pool, seed=4))
    np.testing.assert_array_equal(stopping.draw_stop_set(pool[:40], seed=3), pool[:40])


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (500, 17), (13,)])
def test_packed_predictions_round_trip(shape):
    bits = np.random.default_rng(1).random(shape) < 0.3
    blob = stopping.pack(bits)
    assert len(blob) == -(-bits.size // 8)
    np.testing.assert_array_equal(stopping.unpack(blob, shape), bits)


# ------------------------------------------------------------------- through real rounds


def _answer(root: Path, archive, out: Path) -> None:
    """Answer the pending images with the gold labels (the oracle)."""
    pending = api.status(root)["pending"]
    index = {k: i for i, k in enumerate(archive.keys)}
    write_labels_csv(out, pending, archive.Y[[index[k] for k in pending]],
                     list(archive.classes))
    api.import_labels(root, out)


def _finetune(root: Path):
    # A head on frozen random resnet18 features: seconds, and predictions that differ
    # between images (so that kappas are defined).
    return api.finetune(root, epochs=5, batch_size=4, init="scratch", backbone="resnet18",
                        freeze_backbone=True, device="cpu", lr=0.5, lr_step=0)


def _predictions(root: Path, round_: int, ids: np.ndarray) -> np.ndarray:
    """The round's model on ``ids``, computed here from the saved model file."""
    import torch

    from alft_cli.data import CachedImages
    from alft_cli.finetune import load_model, predict

    project = open_project(root, readonly=True)
    try:
        model, _ = load_model(project.resolve(project.store.round(round_).model_file))
        p = predict(model, CachedImages(project.cache_path), ids, torch.device("cpu"))
    finally:
        project.close()
    return p >= 0.5


def test_finetune_records_stop_set_predictions_and_their_agreement(project, tiny_archive,
                                                                   tmp_path, one_thread):
    _answer(project, tiny_archive, tmp_path / "a0.csv")
    r0 = _finetune(project)
    assert r0.stability is None  # nothing to compare with yet
    p = open_project(project, readonly=True)
    stop_ids = p.store.stop_set()
    pool = p.store.sample_ids("pool")
    meta = json.loads(p.store.get_meta("stop_set"))
    p.close()
    # The tiny pool (30) is smaller than STOP_SET_SIZE: the stop set is all of it.
    np.testing.assert_array_equal(stop_ids, pool)
    assert meta == {"seed": 0, "size": len(pool), "pool": len(pool), "drawn_at_round": 0}

    # Stop-set images are queried like any pool image (here every query hits the stop set).
    api.query(project, budget=6, strategy="random", seed=1)
    _answer(project, tiny_archive, tmp_path / "a1.csv")
    r1 = _finetune(project)
    p = open_project(project, readonly=True)
    np.testing.assert_array_equal(p.store.stop_set(), stop_ids)  # never changes
    labeled = set(p.store.labels())
    p.close()
    unlabeled = np.array([int(s) not in labeled for s in stop_ids])
    assert r1.stability["compared_with"] == 0 and r1.stability["n"] == unlabeled.sum() == 14
    # Independently: both saved models on the stop set, compared with scikit-learn on the
    # images no round had labeled.
    before = _predictions(project, 0, stop_ids)[unlabeled]
    after = _predictions(project, 1, stop_ids)[unlabeled]
    kappas = []
    for c in range(before.shape[1]):
        if before[:, c].any() or after[:, c].any():
            if not (before[:, c].all() and after[:, c].all()):
                kappas.append(cohen_kappa_score(before[:, c], after[:, c]))
    assert r1.stability["classes"] == len(kappas) > 0
    assert r1.stability["kappa"] == pytest.approx(np.mean(kappas), abs=1e-9)
    assert r1.stability["changed"] == pytest.approx(np.any(before != after, axis=1).mean())

    info = api.status(project)
    assert info["rounds"][0]["stability"] is None
    assert info["rounds"][1]["stability"] == json.loads(json.dumps(r1.stability))
    assert info["stop"]["recommended"] is False and "1 so far" in info["stop"]["reason"], info
    assert {"kappa", "window"} <= set(info["stop"])


def test_status_recommends_stopping_when_kappa_held_over_the_window(project, tiny_archive,
                                                                    tmp_path, one_thread, cli):
    _answer(project, tiny_archive, tmp_path / "a0.csv")
    _finetune(project)
    # Rounds 1-3 with stored agreements (hand-made) instead of three more trainings.
    p = open_project(project)
    try:
        with p.store.transaction():
            for r, kappa in ((1, 0.995), (2, 0.992), (3, 0.999)):
                p.store.add_round(r, "random", 5, 0, r - 1, None)
                p.store.set_round_model(r, f"rounds/round_{r:03d}/model.pt", 10, {}, {})
                p.store.save_stop_predictions(r, b"", b"", 0, 0, {
                    "compared_with": r - 1, "kappa": kappa, "changed": 0.01, "n": 20,
                    "classes": 3, "per_class": []})
    finally:
        p.close()
    info = api.status(project)
    assert info["stop"]["recommended"] is True
    assert "rounds 1-3" in info["stop"]["reason"] and "0.9953" in info["stop"]["reason"]
    assert not api.status(project, stop_kappa=0.999)["stop"]["recommended"]
    assert api.status(project, stop_kappa=0.999, stop_window=1)["stop"]["recommended"]
    r = cli("status", "-p", project, "--stop-window", "4")
    assert r.code == 0 and "stop labeling? not yet" in r.stdout, r.stderr
    r = cli("status", "-p", project, "--json")
    assert json.loads(r.stdout)["stop"]["recommended"] is True
    r = cli("status", "-p", project, "--stop-kappa", "1.5")
    assert r.code == 1 and "--stop-kappa" in r.stderr and "Traceback" not in r.stderr


def test_projects_made_before_the_stop_set_draw_it_at_their_next_fine_tuning(
        project, tiny_archive, tmp_path, one_thread):
    _answer(project, tiny_archive, tmp_path / "a0.csv")
    _finetune(project)
    # Make it an older project: no stop-set tables, no meta.
    conn = sqlite3.connect(project / "alft.db")
    conn.executescript("DROP TABLE stop_predictions; DROP TABLE stop_set; "
                       "DELETE FROM meta WHERE key='stop_set';")
    conn.close()
    info = api.status(project)  # read-only open of a store without the tables
    assert info["rounds"][0]["stability"] is None and not info["stop"]["recommended"]
    api.query(project, budget=4, strategy="random", seed=1)
    _answer(project, tiny_archive, tmp_path / "a1.csv")
    r1 = _finetune(project)
    # Round 0's model has no stored predictions: no comparison, but the stop set now exists.
    assert r1.stability is None
    p = open_project(project, readonly=True)
    assert len(p.store.stop_set()) == 30 and json.loads(p.store.get_meta("stop_set"))[
        "drawn_at_round"] == 1
    p.close()
    api.query(project, budget=4, strategy="random", seed=2)
    _answer(project, tiny_archive, tmp_path / "a2.csv")
    assert _finetune(project).stability["compared_with"] == 1


def test_status_names_classes_without_positives_in_a_split(tmp_path, cli):
    from PIL import Image

    archive = tmp_path / "arch"
    archive.mkdir()
    rows = []
    for i in range(16):
        Image.new("RGB", (16, 16), (i * 10, 0, 0)).save(archive / f"i{i:02d}.png")
        # "rare" only on image 0, so at least one of val and test has none.
        rows.append(f"i{i:02d}.png,{int(i == 0)},{i % 2},1")
    (tmp_path / "gold.csv").write_text("filename,rare,odd,all\n" + "\n".join(rows) + "\n")
    gold = {r.split(",")[0]: [int(v) for v in r.split(",")[1:]] for r in rows}
    root = tmp_path / "p"
    api.init_pool(archive, root, labels_file=tmp_path / "gold.csv", initial=4, image_size=16,
                  val_fraction=0.25, test_fraction=0.25, seed=0)
    info = api.status(root)
    p = open_project(root, readonly=True)
    keys = p.store.keys_by_id()
    split_keys = {split: [keys[int(i)] for i in p.store.sample_ids(split)]
                  for split in ("val", "test")}
    p.close()
    missing = {}
    for split, names in split_keys.items():
        missing[split] = [c for j, c in enumerate(("rare", "odd", "all"))
                          if not any(gold[k][j] for k in names)]
    assert info["classes_without_positives"] == missing
    assert any(missing.values())
    r = cli("status", "-p", root)
    assert r.code == 0, r.stderr
    for split, names in missing.items():
        if names:
            assert f"the {split} split has no image of {', '.join(names)}" in r.stdout


# ------------------------------------------------------------------------- report's replay


def test_report_replays_the_rule_per_run_and_counts_labels_saved(tmp_path):
    from alft_cli.experiments.report import is_full, markdown, no_positive_notes
    from alft_cli.experiments.stops import stop_markdown, stop_table

    metrics = ("test_micro_f1", "test_macro_f1")
    rows = []
    kappas = {0: [None, 0.9, 0.995, 0.999, 0.999, 0.999],  # fires at round 4 (window 3)
              1: [None, 0.9, 0.95, 0.97, 0.98, 0.99]}  # never
    for seed, ks in kappas.items():
        for rnd, k in enumerate(ks):
            rows.append({"scenario": 1, "strategy": "random", "seed": seed, "round": rnd,
                         "labeled": 40 + 20 * rnd, "stop_kappa": k,
                         "test_micro_f1": 0.5 + 0.02 * rnd, "test_macro_f1": 0.3 + 0.01 * rnd,
                         "no_positives": {"test": ["ship"] if seed == 1 else []}})
    rows.append({"scenario": 1, "strategy": "full", "seed": 0, "round": 0, "labeled": 1050,
                 "stop_kappa": None, "test_micro_f1": 0.7, "test_macro_f1": 0.5})
    table = stop_table(rows, metrics, 0.99, 3, is_full)
    assert [(e["seed"], e["stop_round"], e["stop_labels"], e["labels_saved"]) for e in table] \
        == [(0, 4, 120, 20), (1, None, None, 0)]
    assert table[0]["test_micro_f1_at_stop"] == pytest.approx(0.58)
    assert table[0]["test_micro_f1_at_max"] == pytest.approx(0.60)
    text = "\n".join(stop_markdown(table, metrics, 0.99, 3))
    assert "| 1 | random | 0 | 120 | 58.00 / 60.00 | 34.00 / 35.00 | 20 | 0.999 |" in text
    assert "| 1 | random | 1 | never |" in text
    assert "| 1 | random | 1/2 | 10.0 | -2.00 | -1.00 |" in text
    notes = no_positive_notes(rows, "test")
    assert notes == ["seed 1: the test split has no image of ship; macro F1 counts each as "
                     "F1 0 (scikit-learn's definition), mAP leaves it out"]
    assert notes[0] in markdown({}, [], metrics, rows, split_notes=notes)
