"""Issue 17: labels and project state that cannot go silently wrong, and a loop that works
without gold labels - answers equal to the suggestions are questioned, a validation set can
grow from the answers, the evidence without gold labels is shown, interrupted or stale work
is never silently dropped or reused, a deleted model's error names the fix, and a moved
archive is reported once and re-pointed only to the same files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from alft_cli import api
from alft_cli.errors import CheckpointError, OptionError
from alft_cli.labels import write_labels_csv
from alft_cli.project import open_project
from alft_cli.training import GracefulStop

FT = dict(epochs=1, batch_size=6, lr_step=0, device="cpu", seed=0)


def _gold(tiny_archive) -> dict[str, np.ndarray]:
    return {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}


def _answer(tiny_archive, keys: list[str], out: Path) -> Path:
    gold = _gold(tiny_archive)
    write_labels_csv(out, keys, np.stack([gold[k] for k in keys]), tiny_archive.classes)
    return out


def _pending(project: Path) -> list[str]:
    return api.status(project)["pending"]


@pytest.fixture()
def no_gold(tiny_archive, tmp_path):
    """A project without gold labels (every image in the pool); round 0 answered."""
    root = tmp_path / "proj"
    api.init_pool(tiny_archive.root, root, classes=list(tiny_archive.classes), initial=12,
                  image_size=32, seed=0)
    api.import_labels(root, _answer(tiny_archive, _pending(root), tmp_path / "a0.csv"))
    return root


@pytest.fixture()
def trained(no_gold):
    api.finetune(no_gold, backbone="resnet18", init="scratch", **FT)
    return no_gold


# --------------------------------------------------------------------------------------------
# answers that equal the suggestions; the evidence without gold labels
# --------------------------------------------------------------------------------------------
def test_answers_all_equal_to_the_suggestions_are_questioned(trained, tiny_archive, tmp_path,
                                                             cli):
    query = api.query(trained, budget=8, strategy="entropy", seed=1, device="cpu")
    edited = tmp_path / "edited.csv"
    shutil.copy(query.query_file, edited)
    # Unchanged: every row is the model's suggestion.
    r = cli("import-labels", query.query_file, "-p", trained, "--dry-run")
    assert r.code == 0, r.stderr
    assert "8 of 8 rows equal the model's suggestions: were they reviewed?" in r.stdout
    assert "8 new" in r.stdout  # "none" suggestions are answers too, none stay pending
    # One answer corrected: no question.
    rows = list(csv.reader(open(edited, newline="")))
    rows[1][4] = ";".join(c for c in tiny_archive.classes
                          if c not in rows[1][4].split(";")) or "none"
    with open(edited, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    r = cli("import-labels", edited, "-p", trained)
    assert r.code == 0, r.stderr
    assert "were they reviewed" not in r.stdout and "pre-filled" in r.stdout


def test_status_and_finetune_show_the_evidence_of_the_last_suggestions(trained, tiny_archive,
                                                                       tmp_path, cli):
    assert api.status(trained)["suggestions"] is None  # no query with suggestions answered
    query = api.query(trained, budget=8, strategy="entropy", seed=1, device="cpu")
    keys = [row["filename"] for row in csv.DictReader(open(query.query_file))]
    api.import_labels(trained, _answer(tiny_archive, keys, tmp_path / "a1.csv"))

    from alft_cli.metrics import multilabel_metrics

    gold = _gold(tiny_archive)
    p = {row["filename"]: [float(row[f"p_{c}"]) for c in tiny_archive.classes]
         for row in csv.DictReader(open(query.query_file))}
    y_true = np.stack([gold[k] for k in keys])
    y_score = np.array([p[k] for k in keys])
    want = multilabel_metrics(y_true, y_score, tiny_archive.classes)["micro_f1"]
    exact = int(((y_score >= 0.5) == y_true).all(axis=1).sum())

    info = json.loads(cli("status", "-p", trained, "--json").stdout)
    assert info["suggestions"] == {"round": 1, "model_round": 0, "answered": 8,
                                   "micro_f1": pytest.approx(want), "exact": exact}
    text = cli("status", "-p", trained).stdout
    assert f"micro F1 {want:.3f}" in text and "8 answered images of round 1" in text
    r = cli("finetune", "-p", trained, "--epochs", "1", "--batch-size", "6", "--device", "cpu")
    assert r.code == 0, r.stderr
    assert f"micro F1 {want:.3f}, {exact} exactly as answered" in r.stdout


# --------------------------------------------------------------------------------------------
# a validation set grown from the answers
# --------------------------------------------------------------------------------------------
def test_val_from_answers_routes_a_seeded_share_to_val(tiny_archive, tmp_path):
    def make(name: str) -> Path:
        root = tmp_path / name
        api.init_pool(tiny_archive.root, root, classes=list(tiny_archive.classes),
                      initial=12, image_size=32, seed=0, val_from_answers=0.25)
        return root

    root = make("a")
    answers = _answer(tiny_archive, _pending(root), tmp_path / "a0.csv")
    dry = api.import_labels(root, answers, dry_run=True)
    assert (dry.added, dry.to_val, dry.labeled_total) == (12, 3, 9)
    r = api.import_labels(root, answers)
    assert (r.added, r.to_val, r.labeled_total, r.pending_left) == (12, 3, 9, 0)
    info = api.status(root)
    assert info["splits"]["val"] == 3 and info["val_from_answers"] == 3
    assert info["labeled"] == 9 and info["pending"] == []
    assert api.doctor(root).ok, api.doctor(root).problems
    # The same choice in a project with the same history (seeded), and the answers are
    # the gold labels of val now: evaluated on, never trained on.
    other = make("b")
    api.import_labels(other, answers)
    project = open_project(root, readonly=True)
    val_ids, val_y = project.store.gold("val")
    train_ids = set(project.store.labels())
    project.close()
    project = open_project(other, readonly=True)
    assert np.array_equal(project.store.gold("val")[0], val_ids)
    project.close()
    assert not set(val_ids.tolist()) & train_ids
    gold = _gold(tiny_archive)
    keys = api.status(root)["pending"]
    assert keys == []
    # Importing the same file again changes nothing.
    again = api.import_labels(root, answers)
    assert (again.added, again.changed, again.unchanged, again.to_val) == (0, 0, 12, 0)
    result = api.finetune(root, backbone="resnet18", init="scratch", **FT)
    assert result.metrics["val"]["n"] == 3
    # A query never picks them again.
    query = api.query(root, budget=10, strategy="random", seed=0, device="cpu")
    project = open_project(root, readonly=True)
    keys_by_id = project.store.keys_by_id()
    project.close()
    picked = {row["filename"] for row in csv.DictReader(open(query.query_file))}
    assert not picked & {keys_by_id[int(s)] for s in val_ids}
    assert all(k in gold for k in picked)


def test_val_from_answers_keeps_the_share_over_small_batches(tiny_archive, tmp_path):
    root = tmp_path / "proj"
    api.init_pool(tiny_archive.root, root, classes=list(tiny_archive.classes), initial=10,
                  image_size=32, seed=0)
    keys = _pending(root)
    routed = 0
    for i in range(5):  # batches of 2 at a share of 0.2: round(0.4) would route none
        r = api.import_labels(root, _answer(tiny_archive, keys[2 * i:2 * i + 2],
                                            tmp_path / f"b{i}.csv"), val_from_answers=0.2)
        routed += r.to_val
    assert routed == 2 == api.status(root)["val_from_answers"]


def test_val_from_answers_refuses_to_mix_with_gold_val(project, tiny_archive, tmp_path):
    with pytest.raises(OptionError, match="without gold val labels"):
        api.init_pool(tiny_archive.root, tmp_path / "p2", labels_file=tiny_archive.labels_csv,
                      val_from_answers=0.2, image_size=32)
    answers = _answer(tiny_archive, _pending(project), tmp_path / "a.csv")
    with pytest.raises(OptionError, match="has 15 gold val images"):
        api.import_labels(project, answers, val_from_answers=0.2)
    with pytest.raises(OptionError, match=r"\[0, 1\)"):
        api.import_labels(project, answers, val_from_answers=1.5)


# --------------------------------------------------------------------------------------------
# interrupted and stale work
# --------------------------------------------------------------------------------------------
def test_an_interrupted_finetune_is_never_started_over_silently(no_gold, monkeypatch, cli):
    opts = dict(FT, epochs=3, checkpoint_every=1, backbone="resnet18", init="scratch")
    with monkeypatch.context() as m:
        m.setattr(GracefulStop, "should_stop", lambda self, device: True)
        assert api.finetune(no_gold, **opts).interrupted
    checkpoint = no_gold / "rounds" / "round_000" / "finetune_checkpoint.pt"
    saved = checkpoint.read_bytes()
    info = api.status(no_gold)
    assert info["next"].startswith(f"alft finetune -p {no_gold} --resume"), info["next"]
    r = cli("finetune", "-p", no_gold, "--epochs", "3", "--device", "cpu")
    assert r.code == 1 and "--resume continues it, --restart starts over" in r.stderr
    assert checkpoint.read_bytes() == saved  # not touched
    with pytest.raises(OptionError, match="give one of them"):
        api.finetune(no_gold, resume=True, restart=True, **opts)
    api.finetune(no_gold, restart=True, **opts)
    assert not checkpoint.exists() and api.status(no_gold)["rounds"][0]["model"]
    with pytest.raises(OptionError, match="no interrupted fine-tuning to continue"):
        api.finetune(no_gold, resume=True, **opts)


def test_query_and_status_say_when_the_model_is_older_than_the_labels(trained, tiny_archive,
                                                                      tmp_path):
    project = open_project(trained, readonly=True)
    labeled = {project.store.keys_by_id()[s] for s in project.store.labels()}
    project.close()
    extra = [k for k in tiny_archive.keys if k not in labeled][:5]
    api.import_labels(trained, _answer(tiny_archive, extra, tmp_path / "extra.csv"))
    info = api.status(trained)
    assert info["next"] == (f"alft finetune -p {trained}   (round 0's model was trained on "
                            "12 labels; 5 labeled since are not in it)"), info["next"]
    r = api.query(trained, budget=4, strategy="entropy", seed=0, device="cpu")
    assert any("the model of round 0 chooses, trained on 12 labels: the 5 labeled since are "
               "not in it" in n for n in r.notes), r.notes


def test_a_deleted_round_model_names_the_fix(trained, tiny_archive, tmp_path):
    (trained / "rounds" / "round_000" / "model.pt").unlink()
    with pytest.raises(CheckpointError, match=r"round 0's model .* is missing .*alft finetune"):
        api.query(trained, budget=4, strategy="entropy", device="cpu")
    with pytest.raises(CheckpointError, match="train the round again: alft finetune"):
        api.export(trained)
    # The next round warm-starts from the deleted model: say how to start without it.
    query = api.query(trained, budget=4, strategy="random", seed=0, device="cpu")
    keys = [row["filename"] for row in csv.DictReader(open(query.query_file))]
    api.import_labels(trained, _answer(tiny_archive, keys, tmp_path / "a1.csv"))
    with pytest.raises(CheckpointError, match="--init pretrained"):
        api.finetune(trained, **FT)
    api.finetune(trained, init="scratch", backbone="resnet18", **FT)
    with pytest.raises(CheckpointError, match=r"alft export -p .* --round 1"):
        api.export(trained, round_=0)


# --------------------------------------------------------------------------------------------
# projects that move and teams that share
# --------------------------------------------------------------------------------------------
@pytest.fixture()
def team(archive_copy, tmp_path):
    base = tmp_path / "team"
    base.mkdir()
    shutil.move(archive_copy, base / "archive")
    api.init_pool(base / "archive" / "images", base / "proj", classes="a,b", initial=4,
                  image_size=32)
    return base


def test_project_and_archive_moved_together_keep_working(team, tmp_path):
    moved = tmp_path / "moved-team"
    team.rename(moved)
    report = api.doctor(moved / "proj")
    assert report.ok, report.problems[:3]
    assert api.status(moved / "proj")["archive_found"]


def test_a_moved_archive_is_reported_once_and_relocated(team, tmp_path, cli):
    new = tmp_path / "new-disk" / "archive"
    new.parent.mkdir()
    shutil.move(team / "archive", new)
    r = cli("doctor", "-p", team / "proj")
    assert r.code == 1
    problems = [line for line in r.stdout.splitlines() if line.startswith("problem:")]
    assert problems == [f"problem: archive folder not found: {(team / 'archive' / 'images')}"
                        f" (moved? point the project at its new place with: alft relocate "
                        f"-p {team / 'proj'} NEW_PATH)"], r.stdout
    info = json.loads(cli("status", "-p", team / "proj", "--json").stdout)
    assert info["archive_found"] is False
    assert "archive folder not found" in cli("status", "-p", team / "proj").stdout
    r = cli("relocate", "-p", team / "proj", new / "images")
    assert r.code == 0, r.stderr
    assert "60 images checked by size and SHA-256" in r.stdout
    assert cli("doctor", "-p", team / "proj").code == 0


def test_relocate_to_other_files_is_one_error_and_changes_nothing(team, tmp_path, cli):
    other = tmp_path / "other"
    shutil.copytree(team / "archive", other)
    next(iter(sorted((other / "images").rglob("*.png")))).unlink()
    before = (team / "proj" / "config.json").read_text()
    r = cli("relocate", "-p", team / "proj", other / "images")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.code == 1 and len(errors) == 1 and "1 of 60" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert (team / "proj" / "config.json").read_text() == before


def test_the_project_folder_follows_the_umask(tiny_archive, tmp_path):
    previous = os.umask(0o002)
    try:
        root = tmp_path / "shared"
        api.init_pool(tiny_archive.root, root, classes="a,b", initial=4, image_size=32)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(root.stat().st_mode) == 0o775  # was drwx------ whatever the umask
