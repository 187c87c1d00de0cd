"""The CUDA path's faults (issue 19), each checked on the CPU where a CPU can show it:
resuming a checkpoint written on another device type, CUDA RNG states for GPUs that are not
there, the head in fp32 under bf16 autocast, SyncBatchNorm under DDP, host syncs in the hot
loops, onnxruntime's CUDA provider options, ``--device cuda:N``."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alft_cli import api, checkpoints, distributed
from alft_cli.checkpoints import load_safe, save_atomic
from alft_cli.errors import OptionError
from alft_cli.progress import Reporter, set_reporter
from alft_cli.training import GracefulStop

# Tiny models: one intra-op thread (see conftest's one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

TINY_FT = dict(batch_size=8, lr_step=0, device="cpu", init="scratch", backbone="resnet18")
TINY_BYOL = dict(backbone="resnet18", batch_size=16, hidden_dim=64, proj_dim=32, device="cpu")
# What a CUDA generator's get_state() returns: Philox seed and offset, 16 bytes.
CUDA_STATE = torch.arange(16, dtype=torch.uint8)


def _labeled_project(tiny_archive, root: Path, initial: int = 12) -> Path:
    api.init_pool(tiny_archive.root, root, labels_file=tiny_archive.labels_csv,
                  initial=initial, image_size=32, seed=1)
    gold = {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}
    answers = root.parent / f"{root.name}-answers.csv"
    with open(answers, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *tiny_archive.classes])
        for key in api.status(root)["pending"]:
            writer.writerow([key, *[int(v) for v in gold[key]]])
    api.import_labels(root, answers)
    return root


def _stop_after(monkeypatch, calls: int) -> None:
    state = {"n": 0}

    def should_stop(self, device):
        state["n"] += 1
        return state["n"] >= calls

    monkeypatch.setattr(GracefulStop, "should_stop", should_stop)


def _state(path: Path) -> dict:
    return load_safe(path)["state_dict"]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ generator device on resume
def test_restore_generator_same_device_continues_the_stream():
    g = torch.Generator().manual_seed(5)
    torch.rand(3, generator=g)
    saved = checkpoints.generator_state(g)
    want = torch.rand(4, generator=g)
    other = torch.Generator().manual_seed(99)
    assert checkpoints.restore_generator(other, saved, [0], "test")
    assert torch.equal(torch.rand(4, generator=other), want)
    # A bare state tensor (checkpoints written before the device was saved) works too.
    other.manual_seed(99)
    assert checkpoints.restore_generator(other, saved["state"], [0], "test")
    assert torch.equal(torch.rand(4, generator=other), want)


@pytest.mark.parametrize("saved", [{"device": "cuda", "state": CUDA_STATE}, CUDA_STATE],
                         ids=["with-device", "bare-16-bytes"])
def test_restore_generator_from_a_cuda_checkpoint_reseeds_deterministically(saved):
    rep = Reporter()
    previous = set_reporter(rep)
    try:
        draws = []
        for _ in range(2):
            g = torch.Generator()
            assert not checkpoints.restore_generator(g, saved, [3, 0, 2, 1], "--resume of x")
            draws.append(torch.rand(5, generator=g))
    finally:
        set_reporter(previous)
    assert torch.equal(draws[0], draws[1])  # the same resume draws the same stream
    reference = torch.Generator().manual_seed(checkpoints.derived_seed([3, 0, 2, 1]))
    assert torch.equal(draws[0], torch.rand(5, generator=reference))
    warnings = [m for kind, m in rep.messages if kind == "warn"]
    assert len(warnings) == 2 and "was on cuda, this run is on cpu" in warnings[0]


def test_derived_seed_is_a_pure_function_of_its_values():
    assert checkpoints.derived_seed([1, 2]) == checkpoints.derived_seed([1, 2])
    assert checkpoints.derived_seed([1, 2]) != checkpoints.derived_seed([2, 1])
    assert checkpoints.derived_seed([-1]) >= 0


def _as_if_written_on_a_gpu(path: Path, key: str) -> None:
    """Rewrite a CPU checkpoint's generator state(s) as a CUDA run saves them."""
    state = load_safe(path)
    if key == "generators":
        state[key] = [{"device": "cuda", "state": CUDA_STATE} for _ in state[key]]
    else:
        state[key] = {"device": "cuda", "state": CUDA_STATE}
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 3  # three GPUs there
    save_atomic(state, path)


def test_finetune_resumes_a_gpu_checkpoint_on_the_cpu(tiny_archive, tmp_path, monkeypatch):
    opts = dict(epochs=3, checkpoint_every=1, **TINY_FT)
    models = []
    for name in ("a", "b"):
        root = _labeled_project(tiny_archive, tmp_path / name)
        with monkeypatch.context() as m:
            _stop_after(m, 1)
            assert api.finetune(root, **opts).interrupted
        ckpt = root / "rounds" / "round_000" / "finetune_checkpoint.pt"
        assert load_safe(ckpt)["generator"]["device"] == "cpu"  # the device is saved
        _as_if_written_on_a_gpu(ckpt, "generator")
        rep = Reporter()
        previous = set_reporter(rep)
        try:
            result = api.finetune(root, resume=True, **opts)
        finally:
            set_reporter(previous)
        assert not result.interrupted
        assert any("reseeded it deterministically" in m for _, m in rep.messages)
        models.append(_state(root / "rounds" / "round_000" / "model.pt"))
    assert _equal(*models)  # two such resumes agree


def test_pretrain_resumes_a_gpu_checkpoint_on_the_cpu(tiny_archive, tmp_path, monkeypatch):
    backbones = []
    for name in ("a", "b"):
        root = tmp_path / name
        api.init_pool(tiny_archive.root, root, classes="a,b", initial=0, image_size=32)
        with monkeypatch.context() as m:
            _stop_after(m, 2)
            assert api.pretrain(root, epochs=1, **TINY_BYOL).interrupted
        ckpt = root / "pretrain" / "checkpoint.pt"
        assert load_safe(ckpt)["generators"][0]["device"] == "cpu"
        _as_if_written_on_a_gpu(ckpt, "generators")
        result = api.pretrain(root, epochs=1, resume=True, **TINY_BYOL)
        assert not result.interrupted
        backbones.append(_state(root / "pretrain" / "backbone.pt"))
    assert _equal(*backbones)


def test_cuda_rng_states_are_trimmed_to_the_gpus_present(monkeypatch):
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    assert checkpoints.cuda_states_present(states, 2) == states[:2]
    assert checkpoints.cuda_states_present(states, 0) == []
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: calls.append((s, i)))
    cpu = torch.get_rng_state()
    checkpoints.set_rng_state({"cpu": cpu, "cuda": states})
    assert [(int(s[0]), i) for s, i in calls] == [(0, 0)]


# ------------------------------------------------------------------------- head in fp32
def _confident_classifier():
    from alft_cli.models import Classifier

    torch.manual_seed(0)
    model = Classifier("resnet18", 6).eval()
    with torch.no_grad():  # logits of 4..12: 1 - p between 6e-6 and 2e-2
        model.head.weight.mul_(0.0)
        model.head.bias.copy_(torch.linspace(4.0, 12.0, 6))
        model.head.weight[:, 0] = 0.05
    return model


def test_head_runs_in_fp32_under_bf16_autocast():
    model = _confident_classifier()
    x = torch.rand(4, 3, 32, 32) * 255
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, h = model.forward_with_features(x)
            bf16_logits = model.head(h)  # what the head gave before: the fault
        assert h.dtype == torch.bfloat16 and logits.dtype == torch.float32
        reference = torch.nn.functional.linear(h.double(), model.head.weight.double(),
                                               model.head.bias.double())
    one_minus = 1 - torch.sigmoid(reference)
    err = ((1 - torch.sigmoid(logits.double())) - one_minus).abs() / one_minus
    bf16_err = ((1 - torch.sigmoid(bf16_logits.double())) - one_minus).abs() / one_minus
    assert err.max() < 1e-4
    assert bf16_err.max() > 1e-3  # the error the fp32 head removes is real


def test_scoring_pass_gives_fp32_probabilities_under_bf16_autocast(monkeypatch, tiny_archive,
                                                                  tmp_path):
    import contextlib

    from alft_cli import embed
    from alft_cli.data import CachedImages

    root = tmp_path / "p"
    api.init_pool(tiny_archive.root, root, classes="a,b", initial=0, image_size=32)
    cache = CachedImages(root / "cache" / "images.npy")
    model = _confident_classifier()
    monkeypatch.setattr(embed, "autocast", lambda device: (
        torch.autocast("cpu", dtype=torch.bfloat16) if device.type == "cpu"
        else contextlib.nullcontext()))
    ids = np.arange(20)
    h, p = embed.infer(model, cache, ids, torch.device("cpu"), batch_size=8)
    with torch.no_grad():
        want = torch.sigmoid(model.head(torch.from_numpy(h).double().float())).numpy()
    assert p.dtype == np.float32
    np.testing.assert_allclose(1 - p, 1 - want, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------- SyncBatchNorm
def test_byol_batchnorms_become_syncbatchnorm_on_cuda_only():
    from alft_cli.byol import BYOL
    from alft_cli.models import build_backbone

    def fresh():
        backbone, dim = build_backbone("resnet18", 3)
        return BYOL(backbone, dim, hidden_dim=32, proj_dim=16)

    plain = fresh()
    bn = [m for m in plain.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert distributed.sync_batchnorm(plain, torch.device("cpu")) is plain  # gloo: unchanged
    keys = plain.state_dict().keys()
    synced = distributed.sync_batchnorm(fresh(), torch.device("cuda"))
    sync = [m for m in synced.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    left = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and not isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(sync) == len(bn) > 0 and not left  # target networks and heads included
    assert synced.state_dict().keys() == keys
    # A backbone trained that way loads into the plain model fine-tuning builds.
    target, _ = build_backbone("resnet18", 3)
    target.load_state_dict(synced.backbone.state_dict(), strict=True)


# ------------------------------------------------------------------ host syncs in hot loops
class _Reads:
    """Counts alft's reads of tensor values by the host (on a GPU each waits for the device).

    Reads inside torch itself are not counted: e.g. Adam reads its step counts, which live
    on the host whatever the device.
    """

    def __init__(self, monkeypatch):
        self.n = 0
        for name in ("__float__", "item", "tolist", "cpu", "numpy"):
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                caller = sys._getframe(1).f_globals.get("__name__", "")
                self.n += caller.startswith("alft_cli")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_finetune_reads_the_loss_once_per_epoch(tiny_archive, tmp_path, monkeypatch):
    from alft_cli import finetune as ft
    from alft_cli.config import FinetuneConfig
    from alft_cli.data import CachedImages

    root = _labeled_project(tiny_archive, tmp_path / "p", initial=24)
    from alft_cli.project import open_project

    project = open_project(root)
    ids, y = project.store.labeled_arrays()
    cache = CachedImages(project.cache_path)
    project.close()
    model = ft.build_classifier("resnet18", tiny_archive.classes, 3, [0.5] * 3, [0.25] * 3)
    cfg = FinetuneConfig(epochs=3, batch_size=4, lr_step=0, checkpoint_every=0, device="cpu")
    with monkeypatch.context() as m:
        reads = _Reads(m)
        ft.train(model, cache, ids, y, cfg, tmp_path, torch.device("cpu"))
    steps = 3 * 6  # 24 labels at batch 4
    assert reads.n <= 3, f"{reads.n} host reads in {steps} steps"


def test_pretrain_reads_the_loss_once_per_epoch(tiny_archive, tmp_path, monkeypatch):
    root = tmp_path / "p"
    api.init_pool(tiny_archive.root, root, classes="a,b", initial=0, image_size=32)
    with monkeypatch.context() as m:
        reads = _Reads(m)
        api.pretrain(root, epochs=2, batch_size=8, backbone="resnet18", hidden_dim=32,
                     proj_dim=16, device="cpu", checkpoint_every=0)
    assert reads.n <= 2, f"{reads.n} host reads in 2 x 7 steps"


def test_resident_labeled_set_trains_exactly_like_the_streamed_one(tiny_archive, tmp_path,
                                                                   monkeypatch):
    from alft_cli import finetune as ft

    models = []
    for name, limit in (("resident", ft.RESIDENT_BYTES), ("streamed", 0)):
        root = _labeled_project(tiny_archive, tmp_path / name)
        monkeypatch.setattr(ft, "RESIDENT_BYTES", limit)
        api.finetune(root, epochs=2, **TINY_FT)
        models.append(_state(root / "rounds" / "round_000" / "model.pt"))
    assert _equal(*models)


def test_scoring_copies_to_the_host_in_blocks_with_the_same_result(trained_model, monkeypatch):
    from alft_cli import embed

    model, cache, ids = trained_model
    device = torch.device("cpu")
    blocks = embed.infer_top(model, cache, ids, device, embed_mge, keep=7, batch_size=8)
    h_all, p_all = embed.infer(model, cache, ids, device, batch_size=8)
    copies = {"n": 0}
    original = embed._DeviceBlocks.take

    def take(self):
        copies["n"] += bool(self.parts)
        return original(self)

    monkeypatch.setattr(embed._DeviceBlocks, "take", take)
    embed.infer_top(model, cache, ids, device, embed_mge, keep=7, batch_size=8)
    assert copies["n"] == 1  # 40 rows in 5 batches: one copy to the host
    monkeypatch.setattr(embed, "FLUSH_BYTES", 1)  # a copy per batch, as before
    per_batch = embed.infer_top(model, cache, ids, device, embed_mge, keep=7, batch_size=8)
    h_b, p_b = embed.infer(model, cache, ids, device, batch_size=8)
    for a, b in zip(blocks, per_batch):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(h_all, h_b)
    np.testing.assert_array_equal(p_all, p_b)


def embed_mge(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    from alft_cli.strategies import mge_scores

    return mge_scores(h, p)


@pytest.fixture()
def trained_model(tiny_archive, tmp_path):
    from alft_cli.data import CachedImages
    from alft_cli.models import Classifier

    root = tmp_path / "p"
    api.init_pool(tiny_archive.root, root, classes="a,b", initial=0, image_size=32)
    torch.manual_seed(0)
    return (Classifier("resnet18", 2), CachedImages(root / "cache" / "images.npy"),
            np.arange(5, 45))


# ------------------------------------------------------------------------- devices
def test_resolve_device_checks_the_gpu_number(monkeypatch):
    from alft_cli.data import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(OptionError, match=r"has 1 GPU \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:1")
    for bad in ("cuda:x", "cuda:", "cuda:-1"):
        with pytest.raises(OptionError, match="cuda:N"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="no CUDA GPU"):
        resolve_device("cuda:0")


def test_onnxruntime_cuda_provider_gets_the_heuristic_algorithm_search(monkeypatch, tmp_path):
    from alft_cli import onnxrun

    seen = []

    def try_session(ort, path, options, providers):
        seen.append(providers)
        return None, "no session in this test"

    model = tmp_path / "m.onnx"
    model.write_bytes(b"not used")
    monkeypatch.setattr(onnxrun, "_cuda_problem", lambda ort: None)
    monkeypatch.setattr(onnxrun, "_try_session", try_session)
    with pytest.raises(OptionError, match="--device cuda"):
        onnxrun.open_session(model, "cuda")
    assert seen[0] == [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
                       "CPUExecutionProvider"]


# ------------------------------------------------------- supervised-noisy under torchrun
def test_supervised_noisy_pretraining_is_refused_under_torchrun(tiny_archive, tmp_path, cli):
    root = tmp_path / "p"
    api.init_pool(tiny_archive.root, root, labels_file=tiny_archive.labels_csv, initial=0,
                  image_size=32)
    noisy = tmp_path / "noisy.csv"
    with open(noisy, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *tiny_archive.classes])
        for key, row in zip(tiny_archive.keys, tiny_archive.Y):
            writer.writerow([key, *row.tolist()])
    # What torchrun sets for each rank: every one of them would train on its own.
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    r = cli("pretrain", "-p", root, "--method", "supervised-noisy", "--noisy-labels", noisy,
            "--epochs", "1", "--backbone", "resnet18", "--device", "cpu", env=env)
    assert r.code == 1 and "Traceback" not in r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "supervised-noisy runs in one process" in lines[0], lines
    assert "start it without torchrun" in lines[0]
    assert api.status(root)["pretrained"] is None
    assert not (root / "pretrain" / "backbone_supervised.pt").exists()
