"""The device check of a GPU lease (issue 19), driven by bench/gpu_check.sh.

Inside a deadline, in order of value, writing everything to ``--out`` as it goes:

1. ``env``: versions (Python, torch, CUDA, cuDNN, onnxruntime and its providers, alft's
   dependencies), the GPU, a bf16 matmul rate as the device's ceiling.
2. ``paper``: the paper's configuration (Moellenbrok & Demir, IGARSS 2023) at the size that
   fits: index the archive (UC Merced, 256 px), BYOL on DenseNet121 (batch 100, Adam 1e-3,
   4096/256 heads) for as many epochs as its share of the time allows, then one seed of
   mge-clustering vs random through ``experiments.simulate`` (what ``alft simulate`` calls)
   with the paper's fine-tuning schedule (100 epochs, batch 10, SGD 0.025, lr x0.1 after
   epoch 80), the label budget cut to what the remaining time fits (estimated from a
   measured fine-tuning step), then ``experiments.report``.
3. ``throughput``: loop ÷ model-only ratios as bench/ measures them: BYOL images/s (the
   real pretrain loop vs the step alone), fine-tuning step time at batch 10, scoring
   images/s (the query's streamed pass vs the forward alone), ``alft query`` vs its pass,
   ``alft tag`` vs the torch forward on the CPU (onnxruntime is CPU-only there).

Files (at most 8, flat): results.json and summary.md (rewritten after every figure, so a
kill leaves what was learned), log.txt (written by the shell script), curves.md,
rounds.csv and curves_s1.png (the report). A watchdog ends the process shortly after the
deadline. Exit status: 0 all done, 75 something was cut or skipped for time, 1 an error
(its traceback is in results.json and the log).

Here: the env and paper stages and the run; bench/gpu_throughput.py: the throughput stage
and the model-only probes; bench/gpu_results.py: the files, the clock and the log reporter.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gpu_results import Clock, LogReporter, Results, log  # noqa: E402
from gpu_throughput import (  # noqa: E402
    byol_options,
    labeled_subset,
    probe_finetune_step,
    probe_scoring,
    stage_throughput,
)

# Paper (section 3) and what the device check keeps of it.
PAPER_FT = {"epochs": 100, "batch_size": 10, "lr": 0.025, "lr_step": 80}
# Fine-tuning's real loop costs more than the model-only step (augmentation, optimizer
# state, evaluation): the budget estimate multiplies the measured step by this.
LOOP_OVERHEAD = 1.3
ROUND_FIXED_S = 2.0  # per round and run: model file, store transaction, query file, import
WATCHDOG_GRACE_S = 20.0


# ------------------------------------------------------------------------------------ env
def stage_env(res: Results, device_name: str) -> Any:
    """Versions and the device; returns the torch device to use."""
    import importlib

    env: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                           "platform": platform.platform(), "cpus": os.cpu_count(),
                           "carried_wheels": os.environ.get("ALFT_INSTALLED_WHEELS", "")}
    packages = {}
    for module in ("torch", "torchvision", "numpy", "pydantic", "pydantic_core", "typer",
                   "rich", "sklearn", "matplotlib", "onnx", "onnxruntime", "PIL", "scipy",
                   "typing_extensions"):
        try:
            mod = importlib.import_module(module)
            packages[module] = str(getattr(mod, "__version__", "?"))
        except Exception as exc:  # record, never stop: the rest may still run
            packages[module] = f"missing ({type(exc).__name__}: {exc})"
    env["packages"] = packages
    try:
        importlib.import_module("alft_cli.api")
        importlib.import_module("alft_cli.cli")
        env["alft_imports"] = "ok"
    except Exception as exc:
        env["alft_imports"] = f"error: {type(exc).__name__}: {exc}"
    res.set("env", "basics", env)

    import torch

    from alft_cli.data import resolve_device

    device = resolve_device(device_name)
    info: dict[str, Any] = {"device": str(device), "cuda_available": torch.cuda.is_available(),
                            "torch_cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version()
                            if torch.backends.cudnn.is_available() else None,
                            "cudnn_benchmark": torch.backends.cudnn.benchmark,
                            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": props.name, "capability": list(torch.cuda.get_device_capability(
            device)), "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpus": torch.cuda.device_count(), "bf16": torch.cuda.is_bf16_supported()})
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                 "clocks.max.sm,power.limit,temperature.gpu", "--format=csv"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable ({exc})"
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
        info["onnxruntime_device"] = ort.get_device()
    except Exception as exc:
        info["onnxruntime_providers"] = f"error: {exc}"
    res.set("env", "device", info)
    res.set("env", "matmul", _matmul_rate(device))
    return device


def _matmul_rate(device: Any) -> dict[str, Any]:
    """bf16 (CUDA) or fp32 (CPU) square matmul rate: the device's arithmetic ceiling."""
    import torch
    from measure import seconds_per_call

    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    per = seconds_per_call(lambda _: a @ b, 10 if device.type == "cuda" else 3, device)
    return {"n": n, "dtype": str(dtype), "tflop_s": round(2 * n ** 3 / per / 1e12, 2)}


# ---------------------------------------------------------------------------------- paper
def make_archive(args: argparse.Namespace, work: Path) -> tuple[Path, Path, str]:
    """(images folder, labels.csv, description): UC Merced, or a synthetic archive."""
    if args.synthetic:
        from alft_cli.synthetic import generate_archive

        arch = generate_archive(work / "synthetic", n_images=args.synthetic,
                                image_size=args.image_size, seed=0)
        return arch.root, arch.labels_csv, f"synthetic ({args.synthetic} images)"
    data = Path(args.data)
    if not (data / "images").is_dir() or not (data / "labels.csv").is_file():
        raise SystemExit(f"error: {data} has no images/ and labels.csv; run "
                         "bench/gpu_prepare.py here and carry .gpu-carry")
    return data / "images", data / "labels.csv", f"UC Merced multi-label ({data})"


def ensure_base(args: argparse.Namespace, work: Path, res: Results) -> tuple[Path, Path, Path]:
    """The simulation's base project (index + decode cache), as ``simulate`` makes it."""
    from alft_cli import api

    images, labels, what = make_archive(args, work)
    base = work / "sim" / "base"
    if not (base / "config.json").exists():
        base.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        api.init_pool(images.resolve(), base, labels_file=labels.resolve(), val_fraction=0,
                      test_fraction=0, initial=0, image_size=args.image_size)
        res.set("paper", "index", {"archive": what, "images": _count_ids(base),
                                   "image_size": args.image_size,
                                   "seconds": round(time.perf_counter() - started, 1)})
    return images, labels, base


def _count_ids(project: Path) -> int:
    from alft_cli import api

    return int(sum(api.status(project)["splits"].values()))


def stage_byol(args: argparse.Namespace, base: Path, device: Any, res: Results,
               clock: Clock) -> None:
    """BYOL on every image for as many epochs as its share of the time allows."""
    from alft_cli import api
    from alft_cli.checkpoints import load_safe
    from alft_cli.training import set_deadline

    opts = byol_options(args, device)
    budget = args.byol_share * max(clock.left() - args.throughput_reserve, 0.0)
    started = time.perf_counter()
    first = api.pretrain(base, epochs=1, restart=True, **opts)
    first_s = time.perf_counter() - started
    record: dict[str, Any] = {"backbone": args.backbone, "batch_size": args.byol_batch,
                              "hidden_dim": args.hidden_dim, "proj_dim": args.proj_dim,
                              "budget_s": round(budget, 1), "first_epoch_s": round(first_s, 1),
                              "first_epoch_img_s": round(first.images_per_second, 1)}
    res.set("paper", "byol", record)
    # The first epoch (with the device's warm-up) overestimates an epoch: the plan is safe.
    epochs = max(1, min(args.byol_max_epochs, int(budget / max(first_s, 1e-6))))
    record["epochs_planned"] = epochs
    result = first
    if epochs > 1:
        # Continue from epoch 1 (no device time lost to a restart). The momentum schedule
        # of that first epoch ran over 1 epoch; from epoch 2 on it follows the planned run.
        set_deadline(clock.monotonic_at(budget - first_s + 0.25 * first_s))
        try:
            result = api.pretrain(base, epochs=epochs, resume=True, **opts)
        finally:
            set_deadline(None)
        if result.interrupted:  # the plan overran: finish the epoch in progress
            ckpt = load_safe(base / "pretrain" / "checkpoint.pt")
            done = int(ckpt["epoch"]) + 1
            record["stopped_early_at_epoch"] = done
            result = api.pretrain(base, epochs=done, resume=True, **opts)
    ckpt = load_safe(base / "pretrain" / "checkpoint.pt")
    losses = [round(float(v), 4) for v in ckpt["losses"]]
    record.update({"epochs_done": result.epochs_done, "loop_img_s": round(
        result.images_per_second, 1), "seconds_total": round(time.perf_counter() - started, 1),
        "losses_per_epoch": losses, "final_loss": losses[-1] if losses else None})
    res.set("paper", "byol", record)


def plan_labels(seconds: float, initial: int, budget: int, max_labels: int, ft_epochs: int,
                ft_batch: int, step_s: float, eval_images: int, pool_images: int,
                score_rate: float, strategies: int = 2) -> tuple[int, float]:
    """The largest label count (initial + k budget, at most ``max_labels``) whose rounds of
    every strategy fit in ``seconds``, and the estimated time; at least ``initial``."""
    total, chosen, labels = 0.0, initial, initial
    while labels <= max_labels:
        per_round = (ft_epochs * math.ceil(labels / ft_batch) * step_s * LOOP_OVERHEAD
                     + (eval_images + pool_images) / max(score_rate, 1e-6) + ROUND_FIXED_S)
        if labels > initial and total + strategies * per_round > seconds:
            break
        total += strategies * per_round
        chosen = labels
        labels += budget
    return chosen, total


def stage_al(args: argparse.Namespace, images: Path, labels_csv: Path, base: Path,
             device: Any, res: Results, clock: Clock, step_s: float, score_rate: float) -> bool:
    """One seed of mge-clustering vs random through experiments.simulate; True if complete."""
    from alft_cli import api
    from alft_cli.experiments import api as experiments

    n = _count_ids(base)
    val = int(round(n * 0.25))
    seconds = max(clock.left() - args.throughput_reserve, 0.0)
    ft = {"epochs": args.ft_epochs, "batch_size": args.ft_batch, "lr": PAPER_FT["lr"],
          "lr_step": args.lr_step, "checkpoint_every": 0}
    max_labels, estimate = plan_labels(seconds, args.initial, args.budget, args.max_labels,
                                       args.ft_epochs, args.ft_batch, step_s, 2 * val,
                                       n - 2 * val, score_rate)
    plan = {"strategies": ["mge-clustering", "random"], "seed": 0, "initial": args.initial,
            "budget": args.budget, "max_labels_asked": args.max_labels,
            "max_labels": max_labels, "finetune": ft, "seconds_available": round(seconds, 1),
            "seconds_estimated": round(estimate, 1), "step_s_used": round(step_s, 4),
            "score_img_s_used": round(score_rate, 1)}
    res.set("paper", "al_plan", plan)
    sim = base.parent
    # What base/ was pretrained with (simulate finds it done and only records it).
    recorded = api.status(base)["pretrained"] or {}
    pretrained = {k: v for k, v in byol_options(args, device).items() if k != "device"}
    pretrained["epochs"] = int(recorded.get("epochs", 1))
    started = time.perf_counter()
    result = experiments.simulate(images.resolve(), labels_csv.resolve(), sim,
                          strategies="mge-clustering,random", seeds=[0], scenarios=[1],
                          initial=args.initial, budget=args.budget, max_labels=max_labels,
                          image_size=args.image_size, device=str(device),
                          max_minutes=max(seconds, 1.0) / 60, pretrain=pretrained,
                          finetune=ft, write_report=False)
    rows = al_rows(sim)
    res.set("paper", "al", {"complete": bool(result.complete), "runs_finished": result.finished,
                            "seconds": round(time.perf_counter() - started, 1), "rounds": rows})
    copy_report(sim, res)
    return bool(result.complete)


def al_rows(sim: Path) -> list[dict[str, Any]]:
    """Trained rounds of every run (through api.status): labels and val/test F1."""
    from alft_cli import api

    rows = []
    for run in sorted((sim / "runs").glob("s*/*/seed*")):
        if not (run / "config.json").exists():
            continue
        for r in api.status(run)["rounds"]:
            if not r.get("metrics"):
                continue
            row = {"strategy": run.parts[-2], "seed": int(run.parts[-1][4:]),
                   "round": r["round"], "labeled": r["labeled"]}
            for split in ("val", "test"):
                m = r["metrics"].get(split) or {}
                for key in ("micro_f1", "macro_f1", "mAP"):
                    if key in m:
                        row[f"{split}_{key}"] = round(float(m[key]), 4)
            rows.append(row)
    return rows


def copy_report(sim: Path, res: Results) -> None:
    """``experiments.report`` of what was trained, and its main files into the output folder."""
    from alft_cli.experiments import api as experiments

    try:
        report = experiments.report(sim)
    except Exception as exc:  # e.g. nothing trained yet
        res.set("paper", "report", f"not written: {type(exc).__name__}: {exc}")
        return
    copied = []
    for name in ("curves.md", "rounds.csv", "curves_s1.png"):
        src = Path(report.out) / name
        if src.is_file():
            shutil.copyfile(src, res.out / name)
            copied.append(name)
    res.set("paper", "report", {"folder": str(report.out), "copied": copied})


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/out/gpu-check"))
    parser.add_argument("--deadline-min", type=float, default=8.0)
    parser.add_argument("--started-at", type=float, default=None,
                        help="epoch seconds the deadline counts from (the shell's start)")
    parser.add_argument("--only", default="env,paper,throughput")
    parser.add_argument("--grace-s", type=float, default=WATCHDOG_GRACE_S,
                        help="the watchdog ends the process this long after the deadline")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--data", default=str(REPO / ".gpu-carry" / "ucmerced-ml"))
    parser.add_argument("--synthetic", type=int, default=0,
                        help="use a synthetic archive of N images instead of --data")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--byol-batch", type=int, default=100)
    parser.add_argument("--hidden-dim", type=int, default=4096)
    parser.add_argument("--proj-dim", type=int, default=256)
    parser.add_argument("--byol-share", type=float, default=0.4,
                        help="share of the time left for paper + throughput given to BYOL")
    parser.add_argument("--byol-max-epochs", type=int, default=1000)
    parser.add_argument("--ft-epochs", type=int, default=PAPER_FT["epochs"])
    parser.add_argument("--ft-batch", type=int, default=PAPER_FT["batch_size"])
    parser.add_argument("--lr-step", type=int, default=PAPER_FT["lr_step"])
    parser.add_argument("--initial", type=int, default=40)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--max-labels", type=int, default=220)
    parser.add_argument("--throughput-reserve", type=float, default=75.0,
                        help="seconds kept for the throughput stage")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--score-batch", type=int, default=64)
    parser.add_argument("--ft-labels", type=int, default=100)
    parser.add_argument("--ft-probe-epochs", type=int, default=3)
    parser.add_argument("--tag-images", type=int, default=256)
    parser.add_argument("--tag-min-seconds", type=float, default=40.0)
    return parser.parse_args(argv)


def watchdog(res: Results, clock: Clock, current: dict[str, str], grace_s: float) -> None:
    """End the process shortly after the deadline, leaving the results written so far."""
    while clock.left() > -grace_s:
        time.sleep(1.0)
    res.stage(current.get("stage", "?"), "cut by the deadline watchdog")
    print("watchdog: deadline passed; results so far are in the output folder", flush=True)
    os._exit(75)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started_at = args.started_at or time.time()
    deadline_at = started_at + 60 * args.deadline_min
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = Results(out, started_at, deadline_at, sys.argv[1:] if argv is None else argv)
    clock = Clock(deadline_at)
    current: dict[str, str] = {}
    threading.Thread(target=watchdog, args=(res, clock, current, args.grace_s),
                     daemon=True).start()
    res.write()
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    work = Path(args.work or tempfile.mkdtemp(prefix="alft-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    status = 0

    def run(name: str, fn: Any, *fn_args: Any) -> Any:
        nonlocal status
        current["stage"] = name
        log(started_at, f"{name} ({clock.left():.0f}s left)")
        res.stage(name, "running")
        try:
            value = fn(*fn_args)
        except BaseException as exc:  # record it, then go on with the next stage
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            print(text, flush=True)
            res.stage(name, "error", error=text[-4000:])
            status = 1
            return None
        state = "done" if value is not False else "cut for time"
        if value is False and status == 0:
            status = 75
        res.stage(name, state)
        return value

    from alft_cli.progress import set_reporter

    set_reporter(LogReporter(started_at))
    device = run("env", stage_env, res, args.device) if "env" in wanted else None
    if device is None:
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base_parts = run("index", ensure_base, args, work, res)
    if base_parts is None:
        return 1
    images, labels_csv, base = base_parts
    if "paper" in wanted:
        run("byol", stage_byol, args, base, device, res, clock)
        step_s = run("probe finetune", probe_finetune_step, args, base, labels_csv, device,
                     res)
        n_classes = len(labeled_subset(base, labels_csv, 1)[2])
        score = run("probe scoring", probe_scoring, args, base, device, res, n_classes)
        from alft_cli import api

        if step_s is not None and score is not None and api.status(base)["pretrained"]:
            run("al", stage_al, args, images, labels_csv, base, device, res, clock, step_s,
                score)
    if "throughput" in wanted:
        run("throughput", stage_throughput, args, base, labels_csv, device, res, clock)
    current["stage"] = "end"
    res.write()
    log(started_at, f"finished with status {status}; {clock.left():.0f}s of the deadline left")
    return status


if __name__ == "__main__":
    sys.exit(main())
