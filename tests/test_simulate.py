"""A tiny oracle simulation (2 strategies x 2 seeds x 2 query rounds) and its report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from alft_cli import api
from alft_cli.experiments import api as experiments
from alft_cli.experiments import simulate
from alft_cli.project import open_project
from alft_cli.store import decode_y

STRATEGIES = ("mge-clustering", "random")


@pytest.fixture(scope="module")
def sim(tiny_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "sim"
    mp = pytest.MonkeyPatch()
    # The tiny pool (30 images) cannot lose 20/40 images per class; scale scenario 3 down.
    mp.setattr(simulate, "SCENARIO_REMOVALS", {1: 0, 2: 2, 3: 3})
    try:
        experiments.simulate(tiny_archive.root, tiny_archive.labels_csv, out,
                     strategies=",".join(STRATEGIES), seeds="2", scenarios="1,3", initial=6,
                     budget=4, max_labels=14, image_size=32, full_supervision=True,
                     device="cpu",
                     pretrain={"backbone": "resnet18", "epochs": 1, "batch_size": 16,
                               "hidden_dim": 64, "proj_dim": 32},
                     finetune={"epochs": 1, "batch_size": 8, "lr_step": 0})
    finally:
        mp.undo()
    return out


def _runs(sim):
    return sorted(p for p in (sim / "runs").glob("s*/*/seed*"))


@pytest.mark.slow
def test_every_run_reaches_the_budget_through_real_rounds(sim):
    runs = _runs(sim)
    assert len(runs) == 2 * 2 * 3  # scenarios x seeds x (2 strategies + full)
    for run in runs:
        info = api.status(run)
        if run.parts[-2] == "full":
            assert len(info["rounds"]) == 1 and info["labeled"] == info["splits"]["pool"]
            continue
        assert [r["labeled"] for r in info["rounds"]] == [6, 10, 14]
        assert all(r["metrics"]["test"]["micro_f1"] >= 0 for r in info["rounds"])
        assert info["rounds"][0]["strategy"] == "random"
        assert {r["strategy"] for r in info["rounds"][1:]} == {run.parts[-2]}
        assert info["pending"] == []


@pytest.mark.slow
def test_oracle_reveals_only_queried_labels(sim, tiny_archive):
    gold = {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}
    for run in _runs(sim):
        if run.parts[-2] == "full":
            continue
        p = open_project(run)
        try:
            keys = p.store.keys_by_id()
            labels = p.store.labels()
            queried = {sid for r in p.store.rounds() for sid in p.store.queried_ids(r.round)}
            assert set(labels) == queried
            for sid, y in labels.items():
                assert np.array_equal(decode_y(y), gold[keys[sid]])
            if run.parts[-3] == "s1":
                assert p.store.split_counts()["pool"] == 30
        finally:
            p.close()


@pytest.mark.slow
def test_same_seed_runs_share_split_removals_and_initial_set(sim):
    for scenario in ("s1", "s3"):
        for seed in ("seed0", "seed1"):
            firsts = []
            for strategy in STRATEGIES:
                p = open_project(sim / "runs" / scenario / strategy / seed)
                try:
                    keys = p.store.keys_by_id()
                    firsts.append((
                        sorted(keys[i] for i in p.store.queried_ids(0)),
                        sorted(keys[int(i)] for i in p.store.sample_ids("test")),
                        sorted(keys[int(i)] for i in p.store.sample_ids("excluded"))))
                finally:
                    p.close()
            assert firsts[0] == firsts[1]
        # Round 0 models are identical too (same data, same seed): paired comparisons.
        a = api.status(sim / "runs" / scenario / STRATEGIES[0] / "seed0")["rounds"][0]
        b = api.status(sim / "runs" / scenario / STRATEGIES[1] / "seed0")["rounds"][0]
        assert a["metrics"]["test"]["micro_f1"] == b["metrics"]["test"]["micro_f1"]


@pytest.mark.slow
def test_scenario_removes_pool_images_of_three_minority_classes(sim, tiny_archive):
    classes = list(tiny_archive.classes)
    gold = {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}
    for seed in (0, 1):
        p = open_project(sim / "runs" / "s3" / "random" / f"seed{seed}")
        try:
            keys = p.store.keys_by_id()
            excluded = [keys[int(i)] for i in p.store.sample_ids("excluded")]
            counts = p.store.split_counts()
            pool_before = [keys[int(i)] for i in p.store.sample_ids("pool")] + excluded
        finally:
            p.close()
        chosen = simulate.minority_classes(classes, gold, seed)
        assert len(chosen) == 3
        # Each chosen class lost 3 pool images (or all it had).
        for name in chosen:
            c = classes.index(name)
            having = sum(int(gold[k][c]) for k in pool_before)
            assert sum(int(gold[k][c]) for k in excluded) >= min(3, having)
        assert 3 <= len(excluded) <= 9
        assert counts["pool"] + len(excluded) == 30
        assert counts["val"] == counts["test"] == 15


def test_ucm_minority_classes_never_pair_dock_and_ship():
    classes = list(simulate.UCM_MINORITY) + ["buildings", "trees"]
    gold = {"x": np.ones(len(classes), dtype=np.uint8)}
    for seed in range(200):
        chosen = set(simulate.minority_classes(classes, gold, seed))
        assert len(chosen) == 3 and chosen <= set(simulate.UCM_MINORITY)
        assert not {"dock", "ship"} <= chosen


@pytest.mark.slow
def test_report_files_agree_with_stored_metrics(sim):
    report = sim / "report"
    for name in ("curves.csv", "curves.md", "paired.csv", "paired_mean.csv", "class_hist.csv",
                 "rounds.csv", "curves_s1.png", "curves_s3.png", "paired_s1.png", "classes_s1.png"):
        assert (report / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(report / "curves.csv")))
    for row in rows:
        if row["strategy"] == "full":
            continue
        values = []
        for seed in ("seed0", "seed1"):
            info = api.status(sim / "runs" / f"s{row['scenario']}" / row["strategy"] / seed)
            r = next(r for r in info["rounds"] if r["labeled"] == int(row["labeled"]))
            values.append(r["metrics"]["test"]["micro_f1"])
        assert float(row["test_micro_f1_mean"]) == pytest.approx(np.mean(values), abs=1e-4)
        assert float(row["test_micro_f1_std"]) == pytest.approx(np.std(values, ddof=1),
                                                                 abs=1e-4)
    paired = list(csv.DictReader(open(report / "paired.csv")))
    assert {p["strategy"] for p in paired} == {"mge-clustering"}
    # paired_mean.csv: each seed's differences averaged over the budgets after the initial
    # set, so its mean is the mean of paired.csv's rows past the initial budget.
    for row in csv.DictReader(open(report / "paired_mean.csv")):
        assert row["strategy"] == "mge-clustering" and int(row["n"]) == 2
        per_budget = [float(p["test_micro_f1_diff"]) for p in paired
                      if p["scenario"] == row["scenario"]
                      and int(p["labeled"]) >= int(row["budgets"].split("-")[0])]
        assert len(per_budget) == int(row["n_budgets"])
        assert float(row["test_micro_f1_mean_diff"]) == pytest.approx(np.mean(per_budget),
                                                                      abs=2e-4)
    assert "Scenario 3" in (report / "curves.md").read_text()
    assert "each seed's mean over the budgets" in (report / "curves.md").read_text()
    # Resuming a finished simulation does nothing new and keeps the settings.
    settings = json.loads((sim / "simulation.json").read_text())
    assert settings["max_labels"] == 14


@pytest.mark.slow
def test_report_stop_table_replays_the_stored_stop_set_agreements(sim, tmp_path, cli):
    # A loose rule (window 1) so that it fires in these 3-round runs; the expected stop is
    # recomputed here from what status says about every round.
    out = tmp_path / "r"
    r = cli("report", sim, "-o", out, "--stop-kappa", "0.2", "--stop-window", "1")
    assert r.code == 0, r.stderr
    table = list(csv.DictReader(open(out / "stop.csv")))
    assert len(table) == 2 * 2 * 2  # scenarios x seeds x strategies (full left out)
    fired = 0
    for row in table:
        info = api.status(sim / "runs" / f"s{row['scenario']}" / row["strategy"] /
                          f"seed{row['seed']}")
        trained = [x for x in info["rounds"] if x["metrics"]]
        assert trained[0]["stability"] is None  # round 0 has nothing to compare with
        kappas = [(x["stability"] or {}).get("kappa") for x in trained]
        want = next((i for i, k in enumerate(kappas) if k is not None and k >= 0.2), None)
        if want is None:
            assert row["stop_labels"] == "" and row["labels_saved"] == "0"
            continue
        fired += 1
        assert int(row["stop_labels"]) == trained[want]["labeled"]
        assert int(row["labels_saved"]) == trained[-1]["labeled"] - trained[want]["labeled"]
        assert float(row["test_micro_f1_at_stop"]) == pytest.approx(
            trained[want]["metrics"]["test"]["micro_f1"], abs=1e-4)
    assert "When to stop" in (out / "curves.md").read_text()
    # The default rule (0.99 over 3 rounds) cannot fire in 3 rounds (2 comparisons).
    default = list(csv.DictReader(open(sim / "report" / "stop.csv")))
    assert default and all(row["stop_labels"] == "" for row in default)


def test_time_boxed_simulation_stops_with_exit_75_and_continues(tiny_archive, tmp_path, cli):
    out = tmp_path / "boxed"
    args = ["simulate", tiny_archive.root, "--labels", tiny_archive.labels_csv, "-o", out,
            "--seeds", "1", "--initial", "6", "--budget", "4", "--max-labels", "10",
            "--image-size", "32", "--backbone", "resnet18", "--pretrain-epochs", "1",
            "--pretrain-batch-size", "16", "--hidden-dim", "32", "--proj-dim", "16",
            "--finetune-epochs", "1", "--lr-step", "0", "--strategies", "random",
            "--device", "cpu"]
    r = cli(*args, "--max-minutes", "0.0001")
    assert r.code == 75 and "not finished" in r.stdout, r.stderr
    r = cli(*args, "--max-steps", "2")
    assert r.code == 75
    r = cli(*args)
    assert r.code == 0, r.stderr
    info = api.status(out / "runs" / "s1" / "random" / "seed0")
    assert [x["labeled"] for x in info["rounds"]] == [6, 10]
    # Different settings in the same folder are refused instead of mixing results...
    r = cli(*[a if a != "4" else "3" for a in args])
    assert r.code == 1 and "other settings (budget)" in r.stderr
    r = cli(*[a if a != "10" else "8" for a in args])
    assert r.code == 1 and "max_labels (it may only grow)" in r.stderr
    # ...but a bigger budget continues every run to it.
    r = cli(*[a if a != "10" else "14" for a in args])
    assert r.code == 0, r.stderr
    info = api.status(out / "runs" / "s1" / "random" / "seed0")
    assert [x["labeled"] for x in info["rounds"]] == [6, 10, 14]
    # A folder made before precise BN was fine-tuned without it: it continues only so.
    path = out / "simulation.json"
    settings = json.loads(path.read_text())
    assert settings["finetune"].pop("precise_bn") is True
    path.write_text(json.dumps(settings))
    args = [a if a != "10" else "14" for a in args]
    r = cli(*args)
    assert r.code == 1 and "precise BN is off: --finetune-precise-bn / --no-finetune" \
        in " ".join(r.stderr.split()), r.stderr
    r = cli(*args, "--no-finetune-precise-bn")
    assert r.code == 0, r.stderr
    assert json.loads(path.read_text())["finetune"]["precise_bn"] is False


@pytest.mark.slow
def test_report_compares_simulations_paired_by_seed(sim, tmp_path, cli):
    # The same simulation under two names: every b: curve equals its a: twin, b:random
    # minus a:random is exactly 0, and b:mge-clustering's paired difference equals the
    # single-folder one (pairing across folders goes by seed).
    out = tmp_path / "cmp"
    r = cli("report", f"a={sim}", f"b={sim}", "-o", out)
    assert r.code == 0, r.stderr
    paired = {(p["scenario"], p["strategy"], p["labeled"]): p
              for p in csv.DictReader(open(out / "paired.csv"))}
    single = {(p["scenario"], p["strategy"], p["labeled"]): p
              for p in csv.DictReader(open(sim / "report" / "paired.csv"))}
    assert {k[1] for k in paired} == {"a:mge-clustering", "b:mge-clustering", "b:random"}
    for (scenario, strategy, labeled), p in paired.items():
        if strategy == "b:random":
            assert float(p["test_micro_f1_diff"]) == 0.0
        else:
            want = single[(scenario, "mge-clustering", labeled)]
            assert p["test_macro_f1_diff"] == want["test_macro_f1_diff"]
    text = (out / "curves.md").read_text()
    assert "strategy minus a:random" in text and "differ in" not in text
    for name in ("curves_s1.png", "paired_s3.png", "classes_s1.png"):
        assert (out / name).stat().st_size > 0
    # Another baseline by name.
    r = cli("report", f"a={sim}", f"b={sim}", "-o", out, "--baseline", "b:mge-clustering")
    assert r.code == 0, r.stderr
    assert "strategy minus b:mge-clustering" in (out / "curves.md").read_text()
    # Only some runs: seed 1 of the random runs (bare name matches every source).
    r = cli("report", f"a={sim}", f"b={sim}", "-o", out, "--seeds", "1",
            "--strategies", "random", "--scenario", "3")
    assert r.code == 0, r.stderr
    kept = {(row["strategy"], row["seed"], row["scenario"])
            for row in csv.DictReader(open(out / "rounds.csv"))}
    assert kept == {("a:random", "1", "3"), ("b:random", "1", "3")}
    r = cli("report", f"a={sim}", f"b={sim}", "-o", out, "--strategies", "a:mge-clustering")
    assert r.code == 0 and "strategy minus" not in (out / "curves.md").read_text()
    assert {row["strategy"] for row in csv.DictReader(open(out / "rounds.csv"))} == {
        "a:mge-clustering"}
    r = cli("report", str(sim), "-o", out, "--seeds", "7")
    assert r.code == 1 and "no runs left" in r.stderr


@pytest.mark.slow
def test_report_compares_new_runs_with_an_earlier_reports_rounds_csv(sim, tmp_path, cli):
    # The simulation against its own archived report: old:random minus new:random is exactly
    # 0 (the rows round-trip through the CSV), old:mge-clustering's paired difference is the
    # single-folder one, and the note says pairing with the file is not checked.
    archived = sim / "report" / "rounds.csv"
    out = tmp_path / "vs-archive"
    r = cli("report", f"new={sim}", f"old={archived}", "-o", out)
    assert r.code == 0, r.stderr
    paired = {(p["scenario"], p["strategy"], p["labeled"]): p
              for p in csv.DictReader(open(out / "paired.csv"))}
    single = {(p["scenario"], p["strategy"], p["labeled"]): p
              for p in csv.DictReader(open(sim / "report" / "paired.csv"))}
    assert {k[1] for k in paired} == {"new:mge-clustering", "old:mge-clustering", "old:random"}
    for (scenario, strategy, labeled), p in paired.items():
        if strategy == "old:random":
            assert float(p["test_micro_f1_diff"]) == 0.0
            assert float(p["test_macro_f1_diff"]) == 0.0
        else:
            want = single[(scenario, "mge-clustering", labeled)]
            assert p["test_macro_f1_diff"] == want["test_macro_f1_diff"]
    assert "old: rows of an earlier report" in (out / "curves.md").read_text()
    # A comparison's rows keep the names that report gave them.
    assert cli("report", f"a={sim}", f"b={sim}", "-o", tmp_path / "cmp").code == 0
    r = cli("report", f"new={sim}", f"arch={tmp_path / 'cmp' / 'rounds.csv'}", "-o", out,
            "--baseline", "a:random")
    assert r.code == 0, r.stderr
    names = {row["strategy"] for row in csv.DictReader(open(out / "rounds.csv"))}
    assert names == {f"{source}:{strategy}" for source in ("new", "a", "b")
                     for strategy in ("random", "mge-clustering", "full")}
    # A broken row is a one-line error naming the file and row.
    bad = tmp_path / "bad.csv"
    lines = archived.read_text().splitlines()
    cols = lines[2].split(",")
    lines[2] = ",".join([*cols[:2], "x", *cols[3:]])  # the seed column
    bad.write_text("\n".join(lines) + "\n")
    r = cli("report", f"new={sim}", f"old={bad}", "-o", tmp_path / "r")
    assert r.code == 1 and f"{bad}, row 3" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_report_refuses_simulations_that_are_not_paired(tmp_path, cli):
    settings = {"archive": "arch", "labels": "gold.csv", "val_fraction": 0.25,
                "test_fraction": 0.25, "initial": 40, "pretrain": {"method": "byol"}}
    for name, initial in (("one", 40), ("two", 20)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "simulation.json").write_text(json.dumps({**settings,
                                                                    "initial": initial}))
    (tmp_path / "project").mkdir()
    cases = [
        ([tmp_path / "one", tmp_path / "two", "-o", tmp_path / "r"], "differ in initial"),
        ([tmp_path / "one", tmp_path / "one", "-o", tmp_path / "r"], "two sources are named"),
        ([tmp_path / "one", tmp_path / "project", "-o", tmp_path / "r"], "not a simulation"),
        ([tmp_path / "one", f"x={tmp_path / 'one'}"], "give --out"),
        ([f"x={tmp_path / 'nowhere'}", tmp_path / "one", "-o", tmp_path / "r"], "does not exist"),
        ([tmp_path / "one", tmp_path / "one" / "simulation.json", "-o", tmp_path / "r"],
         "rounds.csv"),
        ([tmp_path / "rounds.csv"], "give --out"),
    ]
    (tmp_path / "rounds.csv").write_text("scenario,strategy,seed,round,labeled\n")
    for args, message in cases:
        r = cli("report", *args)
        assert r.code == 1 and message in r.stderr and "Traceback" not in r.stderr, (args, r)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "r").exists()


def test_simulation_without_pretraining_still_warm_starts_rounds(tiny_archive, tmp_path):
    # The no-pretraining route must follow the same AL protocol as the others: round 0 from
    # random weights, every later round from the previous round's model.
    out = tmp_path / "none"
    experiments.simulate(tiny_archive.root, tiny_archive.labels_csv, out, strategies="random",
                 seeds="1", initial=6, budget=4, max_labels=14, image_size=32, device="cpu",
                 pretrain={"backbone": "resnet18", "epochs": 0},
                 finetune={"epochs": 1, "batch_size": 8, "lr_step": 0, "backbone": "resnet18"},
                 write_report=False)
    project = open_project(out / "runs" / "s1" / "random" / "seed0")
    try:
        inits = [(r.train_config["init_used"], r.train_config["backbone"])
                 for r in project.store.rounds()]
    finally:
        project.close()
    assert inits == [("scratch", "resnet18"), ("previous (round 0)", "resnet18"),
                     ("previous (round 1)", "resnet18")]
