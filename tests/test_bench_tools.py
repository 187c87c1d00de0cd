"""The tools around the benchmarks and the GPU lease: what travels, which wheels, the label
budget the GPU check plans, the ratios make bench lists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import gpu_prepare  # noqa: E402
import gpu_travel_size  # noqa: E402
import run_all  # noqa: E402


def test_wheels_to_carry_are_what_the_device_lacks_and_what_they_need():
    wanted = gpu_prepare.wheels_to_carry("3.12")
    assert {"pydantic", "pydantic-core", "annotated-types", "typing-inspection",
            "typing-extensions"} <= set(wanted)
    # On the device image already: never carried (torch's wheels alone are gigabytes).
    assert not {"torch", "torchvision", "numpy", "typer", "rich", "scikit-learn", "onnx",
                "onnxruntime", "onnxruntime-gpu", "matplotlib", "pillow"} & set(wanted)
    import importlib.metadata as md

    assert wanted["pydantic"] == md.version("pydantic")  # the version the tests run with
    # rasterio (multi-band archives, issue 14) is not on the device image: it travels, with
    # what it needs, unless the check skips it.
    assert {"rasterio", "affine"} <= set(wanted)
    lean = gpu_prepare.wheels_to_carry("3.12", skip=frozenset({"pydantic", "rasterio"}))
    assert set(lean) == {"typing-extensions"}  # nothing only pydantic and rasterio needed


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/.gpu-carry/\n")
    (repo / "code.py").write_bytes(b"x" * 1000)
    (repo / "new.txt").write_bytes(b"y" * 500)  # untracked, not ignored: travels too
    subprocess.run(["git", "-C", str(repo), "add", "code.py", ".gitignore"], check=True)
    return repo


def test_travel_size_counts_tree_and_carry_and_refuses_more_than_64_mib(tmp_path, capsys):
    repo = _repo(tmp_path)
    carry = repo / ".gpu-carry"
    carry.mkdir()
    big = carry / "data.bin"
    with open(big, "wb") as handle:  # sparse: apparent size is what a copy sends
        handle.truncate(60 * 2**20)
    assert gpu_travel_size.working_tree(repo) == (3, 1000 + 500 + len("/.gpu-carry/\n"))
    assert gpu_travel_size.check([Path(".gpu-carry")], repo) == 0
    with open(big, "r+b") as handle:
        handle.truncate(64 * 2**20)
    assert gpu_travel_size.check([Path(".gpu-carry")], repo) == 1
    out = capsys.readouterr().out
    assert "more than the device call's 64 MiB" in out
    assert gpu_travel_size.check([Path("missing")], repo) == 1


def test_plan_labels_fits_the_rounds_of_both_strategies():
    # 1 s per step, batch 10, 1 epoch: a round at L labels costs ceil(L/10) * 1.3 s of
    # training + 100/100 s of scoring + the fixed 2 s, for each of 2 strategies.
    args = dict(initial=40, budget=20, max_labels=220, ft_epochs=1, ft_batch=10, step_s=1.0,
                eval_images=50, pool_images=50, score_rate=100.0)

    def round_s(labels: int) -> float:
        return 2 * (-(-labels // 10) * 1.0 * gpu_check.LOOP_OVERHEAD + 1.0
                    + gpu_check.ROUND_FIXED_S)

    need_80 = round_s(40) + round_s(60) + round_s(80)
    chosen, estimate = gpu_check.plan_labels(need_80 + 0.1, **args)
    assert chosen == 80 and estimate == pytest.approx(need_80)
    assert gpu_check.plan_labels(need_80 - 0.1, **args)[0] == 60
    assert gpu_check.plan_labels(0, **args)[0] == 40  # at least the initial round
    assert gpu_check.plan_labels(1e9, **args)[0] == 220


def test_run_all_lists_the_ratio_columns_of_every_table():
    text = "\n".join([
        "## BYOL", "", "| pretrain loop img/s | model-only img/s | ratio (goal >= 0.9) |",
        "|---|---|---|", "| 35.6 | 35.4 | 1.01 |", "", "text between",
        "| model | batch | tag / torch | ort / torch |", "|---|---:|---:|---:|",
        "| resnet18@64 | 16 | **7.28** | 6.29 |"])
    assert run_all.ratios(text) == ["35.6: ratio (goal >= 0.9) = 1.01",
                                    "resnet18@64: tag / torch = 7.28",
                                    "resnet18@64: ort / torch = 6.29"]
    names = [name for name, _ in run_all.plan("cpu", quick=True)]
    assert names == ["train", "query", "tag", "strategies"]
    assert all(os.path.isfile(BENCH / argv[0]) for _, argv in run_all.plan("cuda", False))
