"""init-pool, import-labels and status: real runs whose saved state is reopened."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest

from alft_cli import api
from alft_cli.errors import AlftError, LabelFileError, OptionError, ProjectError
from alft_cli.project import open_project
from alft_cli.store import decode_y


def _db_snapshot(root: Path) -> dict:
    """Every table's rows (except the runs audit trail), to prove nothing changed."""
    conn = sqlite3.connect(root / "alft.db")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in tables if t != "runs"}
    finally:
        conn.close()


def _gold(tiny_archive) -> dict[str, np.ndarray]:
    return {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}


def _write_onehot(path: Path, classes, rows: dict[str, np.ndarray]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *classes])
        for key, y in rows.items():
            writer.writerow([key, *[int(v) for v in y]])
    return path


def _pending_keys(root: Path) -> list[str]:
    return api.status(root)["pending"]


# -- init-pool --------------------------------------------------------------------------------
def test_init_pool_splits_gold_and_initial_query(project, tiny_archive):
    p = open_project(project)
    try:
        counts = p.store.split_counts()
        assert counts == {"pool": 30, "val": 15, "test": 15}
        assert p.classes == list(tiny_archive.classes)
        # Gold labels are stored for val and test only, and equal the file's labels.
        gold = _gold(tiny_archive)
        keys = p.store.keys_by_id()
        for split in ("val", "test"):
            ids, y = p.store.gold(split)
            assert len(ids) == 15
            for sid, row in zip(ids, y):
                assert np.array_equal(row, gold[keys[int(sid)]])
        pool_ids = set(p.store.sample_ids("pool").tolist())
        gold_ids = set(p.store.gold("val")[0].tolist()) | set(p.store.gold("test")[0].tolist())
        assert not pool_ids & gold_ids
        assert p.store.count_labels() == 0  # pool labels only arrive through import-labels
        # The decode cache holds every image at the project size.
        cache = np.load(p.cache_path, mmap_mode="r")
        assert cache.shape == (60, 3, 32, 32) and cache.dtype == np.uint8
        assert cache.reshape(60, -1).max(axis=1).min() > 0
    finally:
        p.close()
    query = project / "rounds" / "round_000" / "query.csv"
    rows = list(csv.DictReader(open(query)))
    assert len(rows) == 10 and "filename" in rows[0]
    assert set(r["filename"] for r in rows) <= {keys[i] for i in pool_ids}


def test_init_pool_is_seeded(tiny_archive, tmp_path):
    a = api.init_pool(tiny_archive.root, tmp_path / "a", labels_file=tiny_archive.labels_csv,
                      initial=5, image_size=32, seed=7)
    b = api.init_pool(tiny_archive.root, tmp_path / "b", labels_file=tiny_archive.labels_csv,
                      initial=5, image_size=32, seed=7)
    c = api.init_pool(tiny_archive.root, tmp_path / "c", labels_file=tiny_archive.labels_csv,
                      initial=5, image_size=32, seed=8)
    assert a.query_file.read_text() == b.query_file.read_text()
    assert a.query_file.read_text() != c.query_file.read_text()


def test_init_pool_classes_without_labels_puts_everything_in_pool(tiny_archive, tmp_path):
    r = api.init_pool(tiny_archive.root, tmp_path / "p", classes="a,b,c", initial=3,
                      image_size=32)
    assert r.splits == {"pool": 60, "val": 0, "test": 0}
    assert r.classes == ["a", "b", "c"]


def test_init_pool_from_manifest(tiny_archive, tmp_path):
    manifest = tiny_archive.root / "manifest.csv"
    keys = tiny_archive.keys[:20]
    manifest.write_text("filename\n" + "\n".join(keys) + "\n")
    try:
        r = api.init_pool(manifest, tmp_path / "m", classes="x,y", initial=0, image_size=32)
    finally:
        manifest.unlink()
    assert r.indexed == 20
    p = open_project(tmp_path / "m")
    assert sorted(p.store.ids_by_key()) == sorted(keys)
    p.close()


@pytest.mark.parametrize("case", ["exists", "not-empty", "no-archive", "no-images",
                                  "fraction-without-labels", "bad-fraction", "no-classes",
                                  "negative-initial", "labels-unknown-file"])
def test_init_pool_refusals_create_nothing(case, tiny_archive, tmp_path):
    root = tmp_path / "proj"
    kwargs = dict(labels_file=tiny_archive.labels_csv, image_size=32)
    archive = tiny_archive.root
    if case == "exists":
        api.init_pool(archive, root, **kwargs)
        before = _db_snapshot(root)
    elif case == "not-empty":
        root.mkdir()
        (root / "notes.txt").write_text("mine")
    elif case == "no-archive":
        archive = tmp_path / "missing"
    elif case == "no-images":
        archive = tmp_path / "empty"
        archive.mkdir()
        (archive / "readme.txt").write_text("x")
    elif case == "fraction-without-labels":
        kwargs = dict(classes="a,b", val_fraction=0.2, image_size=32)
    elif case == "bad-fraction":
        kwargs["val_fraction"] = 0.6
        kwargs["test_fraction"] = 0.5
    elif case == "no-classes":
        kwargs = dict(image_size=32)
    elif case == "negative-initial":
        kwargs["initial"] = -1
    elif case == "labels-unknown-file":
        bad = tmp_path / "gold.csv"
        text = tiny_archive.labels_csv.read_text().splitlines()
        text.append("nowhere/ghost.png," + ",".join(["0"] * len(tiny_archive.classes)))
        bad.write_text("\n".join(text) + "\n")
        kwargs["labels_file"] = bad
    with pytest.raises(AlftError) as err:
        api.init_pool(archive, root, **kwargs)
    assert "\n" not in err.value.message
    if case == "exists":
        assert _db_snapshot(root) == before
    elif case == "not-empty":
        assert [p.name for p in root.iterdir()] == ["notes.txt"]
    else:
        assert not root.exists()
    # No half-built temp project is left beside it either.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".alft-init-")]


def test_init_pool_skips_unreadable_files_with_report(archive_copy, tmp_path):
    (archive_copy / "images" / "broken.png").write_bytes(b"not an image at all")
    (archive_copy / "images" / "empty.jpg").write_bytes(b"")
    r = api.init_pool(archive_copy / "images", tmp_path / "p", classes="a,b", initial=0,
                      image_size=32)
    assert r.indexed == 60 and r.skipped == 2
    text = (tmp_path / "p" / "skipped.csv").read_text()
    assert "broken.png" in text and "empty.jpg" in text
    assert api.status(tmp_path / "p")["skipped"] == 2


# -- import-labels ----------------------------------------------------------------------------
def _initial_answers(project, tiny_archive) -> dict[str, np.ndarray]:
    gold = _gold(tiny_archive)
    return {k: gold[k] for k in _pending_keys(project)}


def test_import_onehot_then_status(project, tiny_archive, tmp_path):
    answers = _initial_answers(project, tiny_archive)
    f = _write_onehot(tmp_path / "answers.csv", tiny_archive.classes, answers)
    r = api.import_labels(project, f)
    assert (r.added, r.changed, r.unchanged) == (10, 0, 0)
    info = api.status(project)
    assert info["labeled"] == 10 and info["pending"] == []
    p = open_project(project)
    stored = {p.store.keys_by_id()[s]: decode_y(y) for s, y in p.store.labels().items()}
    p.close()
    assert set(stored) == set(answers)
    for key, y in answers.items():
        assert np.array_equal(stored[key], y)
    # Importing the same file again changes nothing, not even the import log.
    before = _db_snapshot(project)
    r2 = api.import_labels(project, f)
    assert (r2.added, r2.changed, r2.unchanged) == (0, 0, 10)
    assert _db_snapshot(project) == before


def test_import_list_csv_none_and_empty(project, tiny_archive, tmp_path):
    keys = _pending_keys(project)
    classes = tiny_archive.classes
    f = tmp_path / "list.csv"
    f.write_text("filename,labels\n" + f"{keys[0]},{classes[0]};{classes[2]}\n"
                 + f"{keys[1]},none\n{keys[2]}, - \n{keys[3]},\n{keys[4]}, ; \n")
    r = api.import_labels(project, f)
    assert (r.added, r.unanswered, r.pending_left) == (3, 2, 7)
    p = open_project(project)
    ids = p.store.ids_by_key()
    labels = p.store.labels()
    p.close()
    assert labels[ids[keys[0]]] == "101" + "0" * (len(classes) - 3)
    # "none" and "-" are the answer "no class present"; an empty cell is no answer at all.
    assert labels[ids[keys[1]]] == labels[ids[keys[2]]] == "0" * len(classes)
    assert ids[keys[3]] not in labels and ids[keys[4]] not in labels
    assert set(_pending_keys(project)) == set(keys[3:])


def test_an_untouched_initial_query_file_imports_nothing(project, cli):
    # Round 0 has no model, so its labels column starts empty: importing it unchanged used
    # to store every image as "no class present".
    query = project / "rounds" / "round_000" / "query.csv"
    before = _db_snapshot(project)
    r = cli("import-labels", query, "-p", project)
    assert r.code == 0, r.stderr
    assert "0 new" in r.stdout and "10 rows unanswered" in r.stdout, r.stdout
    assert "still pending: 10" in r.stdout
    assert "suggestions" not in r.stdout  # there were none
    after = _db_snapshot(project)
    assert after["labels"] == before["labels"] == [] and after["queries"] == before["queries"]


def test_a_half_filled_file_imports_its_answered_half(project, tiny_archive, tmp_path, cli):
    keys = _pending_keys(project)
    f = tmp_path / "half.csv"
    f.write_text("filename,labels\n" + "".join(
        f"{k},{tiny_archive.classes[1] if i < 4 else ''}\n" for i, k in enumerate(keys)))
    r = cli("import-labels", f, "-p", project)
    assert r.code == 0, r.stderr
    assert "4 new" in r.stdout and "6 rows unanswered" in r.stdout, r.stdout
    assert set(_pending_keys(project)) == set(keys[4:])


def test_one_hot_rows_of_zeros_are_answers_and_empty_rows_are_not(project, tiny_archive,
                                                                   tmp_path):
    keys = _pending_keys(project)
    n = len(tiny_archive.classes)
    f = tmp_path / "onehot.csv"
    f.write_text("filename," + ",".join(tiny_archive.classes) + "\n"
                 + f"{keys[0]}," + ",".join(["0"] * n) + "\n"
                 + f"{keys[1]}," + ",".join([""] * n) + "\n")
    r = api.import_labels(project, f)
    assert (r.added, r.unanswered) == (1, 1)
    assert set(_pending_keys(project)) == set(keys[1:])


def test_dry_run_changes_nothing(project, tiny_archive, tmp_path):
    f = _write_onehot(tmp_path / "a.csv", tiny_archive.classes,
                      _initial_answers(project, tiny_archive))
    before = _db_snapshot(project)
    r = api.import_labels(project, f, dry_run=True)
    assert r.dry_run and r.added == 10
    assert _db_snapshot(project) == before


def test_conflict_needs_overwrite(project, tiny_archive, tmp_path):
    answers = _initial_answers(project, tiny_archive)
    api.import_labels(project, _write_onehot(tmp_path / "a.csv", tiny_archive.classes, answers))
    key = next(iter(answers))
    flipped = {key: 1 - answers[key]}
    f = _write_onehot(tmp_path / "b.csv", tiny_archive.classes, flipped)
    before = _db_snapshot(project)
    with pytest.raises(LabelFileError) as err:
        api.import_labels(project, f)
    assert "--overwrite" in err.value.details[0] and "row 2" in err.value.details[0]
    assert _db_snapshot(project) == before
    r = api.import_labels(project, f, overwrite=True)
    assert r.changed == 1
    p = open_project(project)
    assert decode_y(p.store.labels()[p.store.ids_by_key()[key]]).tolist() == \
        (1 - answers[key]).tolist()
    p.close()


def _val_key(project) -> str:
    p = open_project(project)
    try:
        keys = p.store.keys_by_id()
        return keys[int(p.store.sample_ids("val")[0])]
    finally:
        p.close()


@pytest.mark.parametrize("case", ["unknown-file", "val-sample", "unknown-class", "not-01",
                                  "duplicate", "missing-filename", "empty", "header-only",
                                  "binary"])
def test_bad_label_files_import_nothing(case, project, tiny_archive, tmp_path):
    classes = list(tiny_archive.classes)
    good = _initial_answers(project, tiny_archive)
    first = next(iter(good))
    header = "filename," + ",".join(classes)
    zeros = ",".join(["0"] * len(classes))
    lines = [header] + [f"{k},{','.join(str(int(v)) for v in y)}" for k, y in good.items()]
    expect_row = None
    if case == "unknown-file":
        lines.append(f"nowhere/ghost.png,{zeros}")
        expect_row = f"row {len(lines)}"
    elif case == "val-sample":
        lines.append(f"{_val_key(project)},{zeros}")
        expect_row = f"row {len(lines)}"
    elif case == "unknown-class":
        lines = ["filename,labels", f"{first},{classes[0]};watr"]
        expect_row = "row 2"
    elif case == "not-01":
        lines.append(lines[1].rsplit(",", 1)[0] + ",2")
        lines.pop(1)
        expect_row = f"row {len(lines)}"
    elif case == "duplicate":
        lines.append(lines[1])
        expect_row = f"row {len(lines)}"
    elif case == "missing-filename":
        lines[0] = "name," + ",".join(classes)
    elif case == "empty":
        lines = []
    elif case == "header-only":
        lines = [header]
    f = tmp_path / "bad.csv"
    if case == "binary":
        f.write_bytes(bytes(range(256)) * 4)
    else:
        f.write_text("\n".join(lines) + ("\n" if lines else ""))
    before = _db_snapshot(project)
    with pytest.raises(LabelFileError) as err:
        api.import_labels(project, f)
    assert "bad.csv" in err.value.message and "\n" not in err.value.message
    if expect_row:
        assert any(expect_row in d for d in err.value.details), err.value.details
    assert _db_snapshot(project) == before


def test_status_json_contract(project, cli):
    r = cli("status", "-p", project, "--json")
    assert r.code == 0, r.stderr
    info = json.loads(r.stdout)
    for key in ("classes", "splits", "labeled", "pending", "rounds"):
        assert key in info
    assert info["splits"] == {"pool": 30, "val": 15, "test": 15}
    assert info["labeled"] == 0 and len(info["pending"]) == 10
    assert info["rounds"][0]["round"] == 0 and info["rounds"][0]["strategy"] == "random"
    assert set(info["rounds"][0]) >= {"round", "labeled", "strategy", "metrics", "stability"}
    # Issue 15: the stop signal and the classes a split has no image of.
    assert info["rounds"][0]["stability"] is None
    assert info["stop"]["recommended"] is False and isinstance(info["stop"]["reason"], str)
    assert set(info["classes_without_positives"]) == {"val", "test"}


def test_missing_project_is_one_line_error(tmp_path, cli):
    r = cli("status", "-p", tmp_path / "nope")
    assert r.code == 1
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_newer_schema_is_refused(project):
    conn = sqlite3.connect(project / "alft.db")
    conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ProjectError, match="newer alft"):
        api.status(project)


def test_query_options_are_checked_before_anything(project):
    with pytest.raises(OptionError):
        api.query(project, budget=0)
    with pytest.raises(OptionError, match="unknown"):
        api.query(project, budget=5, strategy="magic")


def test_four_band_project_keeps_every_band_through_training(tmp_path):
    """--in-channels 4 (e.g. RGB + NIR as RGBA): the cache keeps the 4th band and the
    backbone's first conv takes 4 inputs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    archive = tmp_path / "bands"
    archive.mkdir()
    rows = []
    for i in range(12):
        array = rng.integers(0, 255, (20, 20, 4), dtype=np.uint8)
        array[..., 3] = 10 * i  # the 4th band carries signal
        Image.fromarray(array, "RGBA").save(archive / f"t{i:02d}.png")
        rows.append(f"t{i:02d}.png,{i % 2},{(i // 2) % 2}")
    (tmp_path / "gold.csv").write_text("filename,wet,dry\n" + "\n".join(rows) + "\n")
    root = tmp_path / "p"
    api.init_pool(archive, root, labels_file=tmp_path / "gold.csv", in_channels=4,
                  image_size=16, initial=6, val_fraction=0.25, test_fraction=0)
    p = open_project(root)
    cache = np.load(p.cache_path)
    ids = p.store.ids_by_key()
    p.close()
    assert cache.shape[1] == 4
    assert int(cache[ids["t05.png"], 3].mean()) == 50
    pending = api.status(root)["pending"]
    answers = tmp_path / "a.csv"
    answers.write_text("filename,wet,dry\n" + "\n".join(
        r for r in rows if r.split(",")[0] in pending) + "\n")
    api.import_labels(root, answers)
    r = api.finetune(root, epochs=1, batch_size=3, init="scratch", backbone="resnet18",
                     device="cpu")
    assert r.model_file.exists() and "val" in r.metrics


def _plan(conn: sqlite3.Connection, sql: str, params: tuple) -> str:
    return " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


MARK_LABELED = "UPDATE queries SET state='labeled' WHERE sample_id=? AND state='pending'"


def test_marking_answers_looks_queries_up_by_sample(project):
    # Each answer closes its pending query; found through the state index alone, every one
    # scanned all pending queries and importing n answers took time quadratic in n
    # (30,000 answers: 32 s; bench/bench_import.py measures it).
    store = open_project(project).store
    try:
        plan = _plan(store.conn, MARK_LABELED, (1,))
    finally:
        store.close()
    assert "sample_id=?" in plan, plan


def test_a_store_without_the_query_index_gets_it_when_opened_for_writing(project):
    # A project written before the index existed: readable as it is, indexed once written to.
    db = project / "alft.db"
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX queries_sample")
    status = api.status(project)  # read-only: works without the index
    assert len(status["pending"]) == 10
    assert "sample_id=?" not in _plan(sqlite3.connect(db), MARK_LABELED, (1,))
    api.exclude_samples(project, [])  # any writing command
    assert "sample_id=?" in _plan(sqlite3.connect(db), MARK_LABELED, (1,))


@pytest.fixture()
def team_umask():
    """A team's umask: group members may read and write what a member creates."""
    previous = os.umask(0o002)
    yield 0o002
    os.umask(previous)


def test_models_and_checkpoints_follow_the_umask(team_umask, tmp_path):
    import torch

    from alft_cli.checkpoints import save_atomic

    path = tmp_path / "rounds" / "round_000" / "model.pt"
    save_atomic({"w": torch.zeros(2)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
