"""bench/gpu_check.sh, the device command of a GPU lease, run on the CPU as the lent machine
would run it: a Python without pydantic, alft not installed (only the checkout), the missing
packages installed from carried wheels, a deadline; then the files it must hand back.

The clean interpreter is a venv whose site-packages reach this environment's packages (torch,
numpy, ...) through symlinks, leaving out pydantic and what it needs (and alft itself); the
wheels are fetched for this interpreter by bench/gpu_prepare.py (pip download: CI has PyPI).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Left out of the clean venv: what the device lacks (pydantic and its needs) or may hold too
# old (typing_extensions), and alft (the device has no `alft` installed).
LEFT_OUT = re.compile(r"^(pydantic|annotated_types|typing_inspection|typing_extensions|alft|"
                      r"__editable__)", re.I)
TINY = ["--device", "cpu", "--synthetic", "40", "--image-size", "32",
        "--backbone", "mobilenet_v3_small", "--byol-batch", "16", "--hidden-dim", "32",
        "--proj-dim", "16", "--byol-max-epochs", "2", "--ft-epochs", "2", "--lr-step", "0",
        "--initial", "4", "--budget", "4", "--max-labels", "12", "--probe-steps", "2",
        "--score-batch", "16", "--ft-labels", "12", "--ft-probe-epochs", "1",
        "--tag-images", "12", "--tag-min-seconds", "3", "--throughput-reserve", "20"]


@pytest.fixture(scope="module")
def device_like(tmp_path_factory):
    """(python of a clean venv without pydantic, carry folder with wheels for it)."""
    root = tmp_path_factory.mktemp("device")
    carry = root / "carry"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_prepare.py"),
                           "--this-python", "--no-data", "--carry", str(carry),
                           "--wheels", str(carry / "wheels")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pydantic==" in proc.stdout and "pydantic-core==" in proc.stdout
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if not LEFT_OUT.match(entry.name):
            (site / entry.name).symlink_to(entry)
    return python, carry


def _run(python: Path, carry: Path, out: Path, work: Path, *args: str
         ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}
    # One thread: tiny models on a shared 2-core machine run 10-100x slower with two.
    env.update(PYTHON=str(python), OUT=str(out), ALFT_CARRY=str(carry),
               ALFT_SITE=str(work / "site"), OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--work", str(work),
                           *args], capture_output=True, text=True, env=env, timeout=420)


def _check_out_folder(out: Path) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8  # what comes back from a device call
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) and p.parent == out for p in files)


@pytest.mark.slow
def test_gpu_check_runs_where_pydantic_is_missing_and_writes_every_file(device_like,
                                                                        tmp_path):
    python, carry = device_like
    probe = subprocess.run([str(python), "-c", "import pydantic"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": ""})
    assert probe.returncode != 0 and "pydantic" in probe.stderr  # as on the device
    out = tmp_path / "out"
    # A deadline far beyond what the tiny settings need (they cap epochs and labels): the
    # run must finish everything, also on a loaded machine.
    proc = _run(python, carry, out, tmp_path / "work", "--deadline-min", "4", *TINY)
    log = (out / "log.txt").read_text()
    assert proc.returncode == 0, log[-3000:]
    wheels = len(list((carry / "wheels").glob("*.whl")))  # pydantic's and rasterio's
    assert f"installing {wheels} carried wheels" in log
    _check_out_folder(out)
    assert {p.name for p in out.iterdir()} == {"log.txt", "results.json", "summary.md",
                                               "curves.md", "rounds.csv", "curves_s1.png"}
    res = json.loads((out / "results.json").read_text())
    assert all(s["state"] == "done" for s in res["stages"].values()), res["stages"]
    env = res["env"]
    assert env["basics"]["alft_imports"] == "ok"
    assert env["basics"]["packages"]["pydantic"][0].isdigit()  # from the carried wheel
    assert "pydantic-" in env["basics"]["carried_wheels"]
    assert env["device"]["device"] == "cpu" and env["matmul"]["tflop_s"] > 0
    byol = res["paper"]["byol"]
    assert 1 <= byol["epochs_done"] <= 2 and len(byol["losses_per_epoch"]) == byol[
        "epochs_done"]
    plan, al = res["paper"]["al_plan"], res["paper"]["al"]
    assert al["complete"] and plan["max_labels"] <= 12
    for strategy in ("mge-clustering", "random"):  # every round of both runs, paired start
        labels = [r["labeled"] for r in al["rounds"] if r["strategy"] == strategy]
        assert labels == list(range(4, plan["max_labels"] + 1, 4))
        assert all(0 <= r["test_micro_f1"] <= 1 for r in al["rounds"])
    tp = res["throughput"]
    for key, ratio in (("byol", "ratio_loop_over_model"), ("finetune", "ratio_loop_over_model"),
                       ("scoring", "ratio_loop_over_model"),
                       ("query", "ratio_query_over_inference"),
                       ("tag", "ratio_tag_over_torch_cpu")):
        assert tp[key][ratio] > 0, (key, tp[key])
    assert tp["tag"]["images"] == 12
    assert tp["finetune"]["batch"] == 10  # the paper's batch
    summary = (out / "summary.md").read_text()
    assert "| mge-clustering | 4 |" in summary and "BYOL img/s" in summary
    assert "learning curves" in (out / "curves.md").read_text().lower()


@pytest.mark.slow
def test_gpu_check_leaves_partial_results_when_time_runs_out(device_like, tmp_path):
    python, carry = device_like
    out = tmp_path / "out"
    # BYOL asked for far more time than the deadline: the watchdog must end the run (in
    # BYOL, or earlier on a very loaded machine) and leave what was learned before.
    proc = _run(python, carry, out, tmp_path / "work", "--deadline-min", "0.5", "--grace-s",
                "2", "--only", "env,paper", *TINY[:-6], "--byol-share", "50",
                "--byol-max-epochs", "100000", "--throughput-reserve", "0")
    log = (out / "log.txt").read_text()
    assert proc.returncode == 75, log[-3000:]
    _check_out_folder(out)
    res = json.loads((out / "results.json").read_text())
    states = [s["state"] for s in res["stages"].values()]
    assert states[-1] == "cut by the deadline watchdog", res["stages"]
    assert all(state == "done" for state in states[:-1]), res["stages"]
    assert res["elapsed_s"] <= 30 + 2 + 5
    if res["stages"].get("byol", {}).get("state") == "cut by the deadline watchdog":
        assert res["paper"]["byol"]["first_epoch_s"] > 0  # written before the cut
    assert "cut by the deadline watchdog" in (out / "summary.md").read_text()
    assert "watchdog: deadline passed" in log


@pytest.mark.slow
def test_paper_example_runs_where_alft_is_not_installed(device_like, tmp_path):
    from alft_cli.synthetic import generate_archive

    python, carry = device_like
    archive = generate_archive(tmp_path / "data", n_images=40, image_size=32, seed=0)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}
    env.update(PYTHON=str(python), ALFT_CARRY=str(carry), ALFT_SITE=str(tmp_path / "site"),
               OMP_NUM_THREADS="1", DATA=str(archive.labels_csv.parent), SIM="sim",
               DEVICE="cpu", IMAGE_SIZE="32", BACKBONE="mobilenet_v3_small", BYOL_BATCH="16",
               HIDDEN_DIM="32", PROJ_DIM="16", BYOL_EPOCHS="1", FT_EPOCHS="1", LR_STEP="0",
               SEEDS="1", INITIAL="4", BUDGET="4", MAX_LABELS="8")
    proc = subprocess.run(["bash", str(REPO / "examples" / "paper_gpu.sh")], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    wheels = len(list((carry / "wheels").glob("*.whl")))  # pydantic's and rasterio's
    assert f"installing {wheels} carried wheels" in proc.stdout
    sim = tmp_path / "sim"  # SIM relative to the caller's folder
    assert (sim / "report" / "curves.md").is_file()
    settings = json.loads((sim / "simulation.json").read_text())
    assert settings["max_labels"] == 8 and settings["image_size"] == 32
