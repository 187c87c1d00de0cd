"""pretrain / finetune / query on tiny synthetic data: resume equivalence, learning, queries."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alft_cli import api, scoring
from alft_cli.checkpoints import load_safe
from alft_cli.errors import OptionError
from alft_cli.training import GracefulStop

TINY_BYOL = dict(backbone="resnet18", batch_size=16, hidden_dim=64, proj_dim=32, device="cpu")
TINY_FT = dict(batch_size=8, lr_step=0, device="cpu")


def _answer_pending(project: Path, tiny_archive, name: str = "answers.csv") -> Path:
    gold = {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}
    pending = api.status(project)["pending"]
    path = project.parent / name
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *tiny_archive.classes])
        for key in pending:
            writer.writerow([key, *[int(v) for v in gold[key]]])
    return path


def _stop_after(monkeypatch, calls: int) -> None:
    """Make the loop see a Ctrl-C after `calls` steps (a checkpoint is saved at that step)."""
    state = {"n": 0}

    def should_stop(self, device):
        state["n"] += 1
        return state["n"] >= calls

    monkeypatch.setattr(GracefulStop, "should_stop", should_stop)


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stop_at", [3, 4])  # 3 batches per epoch: end of epoch 1, mid epoch 2
def test_pretrain_resume_is_exact(stop_at, tiny_archive, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    api.init_pool(tiny_archive.root, straight, classes="a,b", initial=0, image_size=32)
    api.pretrain(straight, epochs=2, checkpoint_every=1, **TINY_BYOL)

    resumed = tmp_path / "resumed"
    api.init_pool(tiny_archive.root, resumed, classes="a,b", initial=0, image_size=32)
    with monkeypatch.context() as m:
        _stop_after(m, stop_at)
        r = api.pretrain(resumed, epochs=2, checkpoint_every=1, **TINY_BYOL)
    assert r.interrupted
    assert api.status(resumed)["pretrained"] is None  # not done: no backbone recorded
    with pytest.raises(OptionError, match="--resume"):
        api.pretrain(resumed, epochs=2, **TINY_BYOL)
    r2 = api.pretrain(resumed, epochs=2, checkpoint_every=1, resume=True, **TINY_BYOL)
    assert not r2.interrupted
    a = load_safe(straight / "pretrain" / "backbone.pt")["state_dict"]
    b = load_safe(resumed / "pretrain" / "backbone.pt")["state_dict"]
    assert _tensors_equal(a, b)
    ca = load_safe(straight / "pretrain" / "checkpoint.pt")
    cb = load_safe(resumed / "pretrain" / "checkpoint.pt")
    assert _tensors_equal(ca["model"], cb["model"])  # the EMA target too


@pytest.fixture(scope="module")
def trained(tiny_archive, tmp_path_factory):
    """A project with a 1-epoch BYOL backbone and a fine-tuned round 0 (10 labels)."""
    root = tmp_path_factory.mktemp("trained") / "proj"
    api.init_pool(tiny_archive.root, root, labels_file=tiny_archive.labels_csv, initial=10,
                  image_size=32, seed=0)
    api.pretrain(root, epochs=1, **TINY_BYOL)
    api.import_labels(root, _answer_pending(root, tiny_archive, "initial.csv"))
    api.finetune(root, epochs=2, **TINY_FT)
    return root


def test_finetune_records_metrics_that_match_sklearn(trained):
    from sklearn.metrics import f1_score

    from alft_cli.data import CachedImages
    from alft_cli.embed import infer
    from alft_cli.finetune import load_model
    from alft_cli.project import open_project

    info = api.status(trained)
    r0 = info["rounds"][0]
    assert r0["labeled"] == 10 and r0["model"]
    for split in ("val", "test"):
        assert {"micro_f1", "macro_f1", "mAP", "per_class"} <= set(r0["metrics"][split])
    model, meta = load_model(trained / r0["model"])
    assert meta["trained_on"] == 10
    p = open_project(trained)
    ids, y = p.store.gold("test")
    _, prob = infer(model, CachedImages(p.cache_path), ids, torch.device("cpu"))
    p.close()
    pred = (prob >= 0.5).astype(int)
    assert r0["metrics"]["test"]["micro_f1"] == pytest.approx(
        f1_score(y, pred, average="micro", zero_division=0), abs=1e-9)
    assert r0["metrics"]["test"]["macro_f1"] == pytest.approx(
        f1_score(y, pred, average="macro", zero_division=0), abs=1e-9)
    saved = json.loads((trained / "rounds" / "round_000" / "metrics.json").read_text())
    assert saved["test"]["micro_f1"] == r0["metrics"]["test"]["micro_f1"]


def test_finetune_resume_is_exact(tiny_archive, tmp_path, monkeypatch):
    def make(name: str) -> Path:
        root = tmp_path / name
        api.init_pool(tiny_archive.root, root, labels_file=tiny_archive.labels_csv,
                      initial=12, image_size=32, seed=1)
        api.import_labels(root, _answer_pending(root, tiny_archive, f"{name}.csv"))
        return root

    opts = dict(epochs=3, checkpoint_every=1, init="scratch", backbone="resnet18", **TINY_FT)
    a, b = make("a"), make("b")
    api.finetune(a, **opts)
    with monkeypatch.context() as m:
        _stop_after(m, 1)
        r = api.finetune(b, **opts)
    assert r.interrupted and api.status(b)["rounds"][0]["model"] is None
    api.finetune(b, resume=True, **opts)
    sa = load_safe(a / "rounds" / "round_000" / "model.pt")["state_dict"]
    sb = load_safe(b / "rounds" / "round_000" / "model.pt")["state_dict"]
    assert _tensors_equal(sa, sb)
    assert not (b / "rounds" / "round_000" / "finetune_checkpoint.pt").exists()


def _batchnorm_inputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every BatchNorm layer's input in one train-mode forward pass of ``images`` (a copy of
    the model, so its running statistics are left alone)."""
    import copy

    model = copy.deepcopy(model).train()
    seen: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.register_forward_hook(
                lambda mod, args, out, name=name: seen.__setitem__(name, args[0].detach()))
    with torch.no_grad():
        model(images)
    return seen


@pytest.mark.parametrize("precise_bn", [True, False])
def test_finetune_re_estimates_batchnorm_statistics_on_the_labeled_set(
        precise_bn, tiny_archive, tmp_path):
    """With precise BN (the default) each BatchNorm layer's running mean and variance are its
    input's mean and unbiased variance over the labeled images (one batch here), which a
    plain train-mode forward pass computes independently; without it they are the
    momentum averages of training, which trail them."""
    from alft_cli.data import CachedImages
    from alft_cli.finetune import load_model
    from alft_cli.project import open_project

    root = tmp_path / "p"
    api.init_pool(tiny_archive.root, root, labels_file=tiny_archive.labels_csv, initial=12,
                  image_size=32, seed=1)
    api.import_labels(root, _answer_pending(root, tiny_archive))
    api.finetune(root, epochs=2, init="scratch", backbone="resnet18", precise_bn=precise_bn,
                 **TINY_FT)
    model, _ = load_model(root / "rounds" / "round_000" / "model.pt")
    p = open_project(root)
    ids, _ = p.store.labeled_arrays()
    images = torch.from_numpy(CachedImages(p.cache_path).read(np.sort(ids))).float()
    p.close()
    inputs = _batchnorm_inputs(model, images)
    layers = dict(model.named_modules())
    assert len(inputs) == 20  # every BatchNorm of resnet18
    gaps = []
    for name, x in inputs.items():
        bn = layers[name]
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=True)
        gaps.append(max(float((bn.running_mean - mean).abs().max() / (mean.abs().max() + 1e-6)),
                        float((bn.running_var - var).abs().max() / var.abs().max())))
    if precise_bn:
        assert max(gaps) < 1e-4, gaps
    else:
        assert min(gaps) > 1e-2, gaps


def test_query_returns_unlabeled_pool_images_deterministically(trained, cli):
    r = cli("query", "-p", trained, "--budget", "6", "--seed", "3", "--device", "cpu")
    assert r.code == 0, r.stderr
    info = api.status(trained)
    q = info["rounds"][-1]
    assert q["round"] == 1 and q["strategy"] == "auto" and q["pending"] == 6  # the default
    rows = list(csv.DictReader(open(trained / q["query_file"])))
    names = [row["filename"] for row in rows]
    assert len(names) == len(set(names)) == 6
    from alft_cli.project import open_project

    p = open_project(trained)
    ids = p.store.ids_by_key()
    splits = p.store.split_of()
    labeled = set(p.store.labels())
    p.close()
    assert all(splits[ids[n]] == "pool" and ids[n] not in labeled for n in names)
    assert {"rank", "score", "cluster", "labels"} <= set(rows[0])
    assert any(k.startswith("p_") for k in rows[0])
    # auto's MGE+Clustering picks carry their cluster (0..k-1), its random picks -1; the
    # command says why it split the batch so (no MGE+Clustering labels yet: the 2 picks the
    # next query needs to judge them).
    assert ("note: auto: no labeled MGE+Clustering picks to judge yet, and the first model "
            "has seen only random labels -> a first look at MGE+Clustering, the few picks the "
            "next query needs to judge it: 2 of 6 by MGE+Clustering, 4 random") in r.stdout, (
        r.stdout)
    clustered = sorted(int(row["cluster"]) for row in rows if int(row["cluster"]) >= 0)
    assert clustered == list(range(len(clustered)))
    assert all(int(row["cluster"]) == -1 for row in rows[len(clustered):])
    # A second query while this one is pending needs --force; with it, the same seed
    # and model give the same images, and the round is replaced, not added.
    again = cli("query", "-p", trained, "--budget", "6", "--seed", "3", "--device", "cpu")
    assert again.code == 1 and "--force" in again.stderr
    forced = cli("query", "-p", trained, "--budget", "6", "--seed", "3", "--device", "cpu",
                 "--force", "--format", "label-studio")
    assert forced.code == 0, forced.stderr
    info2 = api.status(trained)
    assert len(info2["rounds"]) == 2
    rows2 = list(csv.DictReader(open(trained / info2["rounds"][-1]["query_file"])))
    assert [row["filename"] for row in rows2] == names
    query_file = trained / info2["rounds"][-1]["query_file"]
    assert query_file.name == "query-2.csv"  # the replaced query's file is kept intact
    tasks = json.loads(query_file.with_suffix(".label-studio.json").read_text())
    assert [t["data"]["alft_key"] for t in tasks] == names
    assert (trained / "rounds" / "round_001" / "label-studio-config.xml").exists()


@pytest.mark.slow
def test_pretrain_and_finetune_beat_the_untrained_model(tiny_archive, tmp_path):
    from alft_cli.data import CachedImages
    from alft_cli.finetune import build_classifier, evaluate
    from alft_cli.project import open_project

    root = tmp_path / "p"
    api.init_pool(tiny_archive.root, root, labels_file=tiny_archive.labels_csv, initial=30,
                  image_size=32, seed=0)
    api.pretrain(root, epochs=3, **TINY_BYOL)
    api.import_labels(root, _answer_pending(root, tiny_archive))
    result = api.finetune(root, epochs=15, lr=0.01, **TINY_FT)
    p = open_project(root)
    torch.manual_seed(0)
    untrained = build_classifier("resnet18", p.classes, 3, p.config.mean, p.config.std)
    base = evaluate(untrained, CachedImages(p.cache_path), {"test": p.store.gold("test")},
                    p.classes, torch.device("cpu"))
    p.close()
    trained_f1 = result.metrics["test"]["micro_f1"]
    assert trained_f1 > base["test"]["micro_f1"] + 0.05
    assert result.metrics["test"]["mAP"] > base["test"]["mAP"] + 0.05


@pytest.mark.slow
def test_pretrain_under_torchrun_with_two_gloo_processes(tiny_archive, tmp_path):
    root = tmp_path / "ddp"
    api.init_pool(tiny_archive.root, root, classes="a,b", initial=0, image_size=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALFT_LOCK_TIMEOUT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port=29517", "-m", "alft_cli", "pretrain", "-p", str(root),
         "--backbone", "resnet18", "--epochs", "2", "--batch-size", "16", "--hidden-dim", "64",
         "--proj-dim", "32", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = api.status(root)
    assert info["pretrained"]["backbone"] == "resnet18"
    ckpt = load_safe(root / "pretrain" / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["generators"]) == 2  # one per rank
    assert np.isfinite(ckpt["losses"]).all()


def test_streamed_pool_scoring_picks_what_the_full_pass_picks(trained):
    """mge-clustering/mge/entropy keep features only for the top-m rows while scoring the
    pool; the query must equal the strategy run on the full (h, p) of every image."""
    from alft_cli.data import CachedImages
    from alft_cli.draws import round_seed
    from alft_cli.embed import infer
    from alft_cli.finetune import load_model
    from alft_cli.project import open_project
    from alft_cli.strategies import QueryContext, select

    p = open_project(trained)
    labeled = set(p.store.labels())
    unlabeled = np.array([int(i) for i in p.store.sample_ids("pool") if int(i) not in labeled])
    model, _ = load_model(trained / p.store.rounds()[0].model_file)
    cache = CachedImages(p.cache_path)
    p.close()
    h, prob = infer(model, cache, unlabeled, torch.device("cpu"))
    for strategy in ("mge-clustering", "mge", "entropy"):
        r = api.query(trained, budget=5, strategy=strategy, seed=7, force=True, device="cpu")
        expected = unlabeled[select(strategy, QueryContext(
            h=h, p=prob, budget=5, seed=round_seed(7, r.round))).indices]
        p = open_project(trained)
        got = p.store.queried_ids(p.store.current_round())
        p.close()
        assert got == expected.tolist(), strategy


@pytest.mark.slow
def test_query_under_torchrun_matches_one_process(trained):
    """Two gloo processes score halves of the pool; rank 0 selects exactly what a single
    process selects (same model, same seed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALFT_LOCK_TIMEOUT": "1"}
    picked = []
    for launcher in (["-m", "torch.distributed.run", "--nproc_per_node=2",
                      "--master_port=29531", "-m", "alft_cli"], ["-m", "alft_cli"]):
        for strategy in ("mge-clustering", "coreset", "auto"):
            proc = subprocess.run(
                [sys.executable, *launcher, "query", "-p", str(trained), "--budget", "5",
                 "--seed", "11", "--strategy", strategy, "--force", "--device", "cpu"],
                capture_output=True, text=True, env=env, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            from alft_cli.project import open_project

            p = open_project(trained)
            picked.append(p.store.queried_ids(p.store.current_round()))
            p.close()
    assert picked[:3] == picked[3:]
    assert len(set(picked[0])) == 5


def test_streamed_auto_picks_what_the_pure_strategy_picks(trained, monkeypatch):
    """auto and auto-f1 query without holding the pool's features (top-m pass for the MGE
    share, no pass at all for an all-random batch); every share must equal the pure
    strategy on the full (h, p), and the suggestions must be the chosen images'
    probabilities."""
    from dataclasses import replace

    from alft_cli.auto import prior
    from alft_cli.data import CachedImages
    from alft_cli.draws import round_seed
    from alft_cli.embed import infer
    from alft_cli.finetune import load_model
    from alft_cli.project import open_project
    from alft_cli.strategies import AUTO_F1_HIGH, AUTO_F1_LOW, QueryContext, select

    p = open_project(trained)
    labeled = set(p.store.labels())
    unlabeled = np.array([int(i) for i in p.store.sample_ids("pool") if int(i) not in labeled])
    model, _ = load_model(trained / p.store.rounds()[0].model_file)
    cache = CachedImages(p.cache_path)
    keys = p.store.keys_by_id()
    p.close()
    h, prob = infer(model, cache, unlabeled, torch.device("cpu"))
    mid = AUTO_F1_LOW + 0.4 * (AUTO_F1_HIGH - AUTO_F1_LOW)
    cases = [("auto-f1", {"model_f1": f1}) for f1 in (0.3, mid, 0.95)]
    cases += [("auto", {"share": share}) for share in (0.1, 0.5, 0.9)]
    for strategy, evidence in cases:
        f1, share = evidence.get("model_f1"), evidence.get("share")
        monkeypatch.setattr(scoring, "model_evidence", lambda *_, f1=f1: (f1, "test"))
        monkeypatch.setattr(scoring, "auto_decision", lambda *_, share=share: replace(
            prior(2, 5, "none", 0), share=share))  # MGE labels exist: the share stands
        r = api.query(trained, budget=6, strategy=strategy, seed=5, force=True, device="cpu")
        expected = select(strategy, QueryContext(h=h, p=prob, budget=6, ids=unlabeled,
                                                 seed=round_seed(5, r.round), **evidence))
        p = open_project(trained)
        got = p.store.queried_ids(p.store.current_round())
        p.close()
        assert got == unlabeled[expected.indices].tolist(), (strategy, evidence)
        rows = list(csv.DictReader(open(r.query_file)))
        for row, i in zip(rows, expected.indices):
            assert row["filename"] == keys[int(unlabeled[i])]
            assert float(row["p_" + api.status(trained)["classes"][0]]) == pytest.approx(
                float(prob[i, 0]), abs=1e-4)


AUTO_WRAPPER = """import sys
from alft_cli import scoring
f1 = float(sys.argv.pop(1))
scoring.model_evidence = lambda *_: (f1, "evidence forced by the test")
from alft_cli.cli import main
main()
"""


@pytest.mark.slow
def test_auto_under_torchrun_matches_one_process_in_every_regime(trained, tmp_path):
    """A split batch's MGE share comes from a streamed pass whose top rows only rank 0
    receives; the other ranks must take part in the pass and leave the selection to rank 0.
    auto-f1's evidence is forced (0.95: all MGE+Clustering, 0.75: mixed), since a tiny
    model's own val F1 would only ever reach the random regime."""
    wrapper = tmp_path / "auto_with_evidence.py"
    wrapper.write_text(AUTO_WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALFT_LOCK_TIMEOUT": "1"}
    for f1 in ("0.95", "0.75"):
        picked = []
        for launcher in (["-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_port=29532"], []):
            proc = subprocess.run(
                [sys.executable, *launcher, str(wrapper), f1, "query", "-p", str(trained),
                 "--budget", "5", "--seed", "11", "--strategy", "auto-f1", "--force",
                 "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            from alft_cli.project import open_project

            p = open_project(trained)
            picked.append(p.store.queried_ids(p.store.current_round()))
            p.close()
        assert picked[0] == picked[1] and len(set(picked[0])) == 5, f1


def test_ctrl_c_is_acknowledged_at_once():
    # A fine-tuning epoch can take minutes: without a word, people press Ctrl-C again and
    # lose the checkpoint the first one asked for.
    import signal

    from alft_cli.progress import Reporter, set_reporter

    rep = Reporter()
    previous = set_reporter(rep)
    try:
        with GracefulStop("epoch") as stopper:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # Python runs the handler between bytecodes
                if stopper.requested:
                    break
            assert stopper.requested
            assert rep.messages == [("warn", "Ctrl-C: stopping after this epoch, then saving "
                                     "a checkpoint (Ctrl-C again stops at once, without a "
                                     "checkpoint)")]
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    pass
    finally:
        set_reporter(previous)


@pytest.mark.slow
def test_auto_evidence_under_torchrun_matches_one_process(trained, tiny_archive, tmp_path):
    """With labeled MGE+Clustering and random parts, auto scores their features (sharded
    under torchrun), rank 0 decides the share and tells the other ranks: the query and its
    note are the same as in one process."""
    import shutil

    root = tmp_path / "proj"
    shutil.copytree(trained, root)
    api.query(root, budget=8, strategy="auto", seed=3, force=True, device="cpu")
    api.import_labels(root, _answer_pending(root, tiny_archive, "r1.csv"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALFT_LOCK_TIMEOUT": "1"}
    picked, notes = [], []
    for launcher in (["-m", "torch.distributed.run", "--nproc_per_node=2",
                      "--master_port=29533", "-m", "alft_cli"], ["-m", "alft_cli"]):
        proc = subprocess.run(
            [sys.executable, *launcher, "query", "-p", str(root), "--budget", "5", "--seed",
             "2", "--force", "--device", "cpu"], capture_output=True, text=True, env=env,
            timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        notes.append(next(line for line in proc.stdout.splitlines() if "auto:" in line))
        from alft_cli.project import open_project

        p = open_project(root)
        picked.append(p.store.queried_ids(p.store.current_round()))
        p.close()
    assert "a ridge probe on the model's features scored on the" in notes[1], notes
    assert notes[0] == notes[1] and picked[0] == picked[1] and len(set(picked[0])) == 5
