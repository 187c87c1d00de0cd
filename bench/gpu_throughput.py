"""The GPU check's throughput stage (bench/gpu_check.py): loop ÷ model-only ratios as the
benches measure them, and the model-only probes that the paper stage's label budget uses."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_results import Clock, Results


def byol_options(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    return {"method": "byol", "backbone": args.backbone, "batch_size": args.byol_batch,
            "lr": 1e-3, "hidden_dim": args.hidden_dim, "proj_dim": args.proj_dim,
            "checkpoint_every": 0, "device": str(device)}


def labeled_subset(base: Path, labels_csv: Path, n: int) -> tuple[Any, Any, list[str]]:
    """(ids, y, classes) of the first ``n`` images of the base index with gold labels."""
    import csv

    import numpy as np

    from alft_cli.project import open_project

    with open(labels_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    classes = rows[0][1:]
    gold = {r[0]: [int(v) for v in r[1:]] for r in rows[1:]}
    project = open_project(base, readonly=True)
    try:
        keys = project.store.keys_by_id()
    finally:
        project.close()
    ids = [i for i in sorted(keys) if keys[i] in gold][:n]
    return (np.asarray(ids, dtype=np.int64),
            np.asarray([gold[keys[i]] for i in ids], dtype=np.float32), classes)


def probe_finetune_step(args: argparse.Namespace, base: Path, labels_csv: Path, device: Any,
                        res: Results) -> float:
    """Model-only fine-tuning step at the paper's batch (for the budget and throughput)."""
    import torch
    from measure import finetune_model_only

    from alft_cli.data import CachedImages

    cache = CachedImages(base / "cache" / "images.npy")
    ids, y, _ = labeled_subset(base, labels_csv, args.ft_batch)
    images = torch.from_numpy(cache.read(ids)).to(device)
    step_s = finetune_model_only(args.backbone, images, torch.from_numpy(y).to(device), device,
                                 steps=args.probe_steps)
    res.set("throughput", "finetune_model_only_ms_per_step", round(1000 * step_s, 2))
    return step_s


def probe_scoring(args: argparse.Namespace, base: Path, device: Any, res: Results,
                  classes: int) -> float:
    """Model-only scoring rate at the query's batch (for the budget and throughput)."""
    import numpy as np
    import torch
    from measure import scoring_model_only

    from alft_cli.data import CachedImages
    from alft_cli.models import Classifier

    cache = CachedImages(base / "cache" / "images.npy")
    n = min(len(cache.array), 4 * args.score_batch)
    batches = [torch.from_numpy(cache.read(np.arange(s, min(s + args.score_batch, n))))
               .to(device) for s in range(0, n, args.score_batch)]
    model = Classifier(args.backbone, classes, in_channels=cache.channels).to(device)
    rate = scoring_model_only(model, batches, device, repeats=2)
    res.set("throughput", "scoring_model_only_img_s", round(rate, 1))
    return rate


# ----------------------------------------------------------------------------- throughput
def stage_throughput(args: argparse.Namespace, base: Path, labels_csv: Path, device: Any,
                     res: Results, clock: Clock) -> bool:
    """Loop ÷ model-only ratios; True if every measurement ran."""
    import numpy as np
    import torch
    from measure import byol_model_only

    from alft_cli.data import CachedImages

    complete = True
    cache = CachedImages(base / "cache" / "images.npy")
    tp = res.data["throughput"]
    n = len(cache.array)

    # BYOL: the real loop's rate (paper stage, else one epoch now) vs the step alone.
    loop = res.data["paper"].get("byol", {}).get("loop_img_s")
    if loop is None:
        from alft_cli import api

        r = api.pretrain(base, epochs=1, restart=True, **byol_options(args, device))
        loop = r.images_per_second
    batch = min(args.byol_batch, n)
    images = [torch.from_numpy(cache.read(np.arange(s, s + batch))).to(device)
              for s in range(0, min(n - batch, 3 * batch) + 1, batch)][:3]
    model_rate = byol_model_only(args.backbone, images, device, args.hidden_dim,
                                 args.proj_dim, steps=args.probe_steps)
    res.set("throughput", "byol", {"batch": batch, "loop_img_s": round(loop, 1),
                                   "model_only_img_s": round(model_rate, 1),
                                   "ratio_loop_over_model": round(loop / model_rate, 3)})
    del images
    _free(device)

    # Fine-tuning: the real loop (finetune.train) on up to 100 labels vs the step alone.
    if clock.left() > 10:
        tp_ft = _finetune_loop(args, base, labels_csv, cache, device, res)
        model_s = tp.get("finetune_model_only_ms_per_step")
        if model_s is None:
            model_s = 1000 * probe_finetune_step(args, base, labels_csv, device, res)
        tp_ft["model_only_ms_per_step"] = model_s
        tp_ft["ratio_loop_over_model"] = round(model_s / tp_ft["loop_ms_per_step"], 3)
        res.set("throughput", "finetune", tp_ft)
        _free(device)
    else:
        complete = False

    # Scoring: the query's streamed pass (features + MGE, top-m kept) vs the forward alone.
    if clock.left() > 10:
        complete &= _scoring(args, base, labels_csv, cache, device, res, clock)
        _free(device)
    else:
        complete = False

    # alft tag (onnxruntime) vs torch's forward on the same CPU, as bench_tag.py does.
    if clock.left() > args.tag_min_seconds:
        _tag(args, base, labels_csv, device, res)
    else:
        res.set("throughput", "tag", f"skipped: {clock.left():.0f}s left, needs "
                                     f"{args.tag_min_seconds}s")
        complete = False
    return complete


def _free(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _finetune_loop(args: argparse.Namespace, base: Path, labels_csv: Path, cache: Any,
                   device: Any, res: Results) -> dict[str, Any]:
    from alft_cli import finetune as ft
    from alft_cli.config import FinetuneConfig

    ids, y, classes = labeled_subset(base, labels_csv, args.ft_labels)
    model = ft.build_classifier(args.backbone, classes, cache.channels, [0.5] * cache.channels,
                                [0.25] * cache.channels)
    cfg = FinetuneConfig(epochs=args.ft_probe_epochs, batch_size=args.ft_batch, lr_step=0,
                         checkpoint_every=0, device=str(device))
    with tempfile.TemporaryDirectory() as tmp:
        outcome = ft.train(model, cache, ids, y, cfg, Path(tmp), device)
    steps = args.ft_probe_epochs * math.ceil(len(ids) / args.ft_batch)
    return {"labels": int(len(ids)), "batch": args.ft_batch, "epochs": args.ft_probe_epochs,
            "loop_ms_per_step": round(1000 * outcome.seconds / steps, 2)}


def _scoring(args: argparse.Namespace, base: Path, labels_csv: Path, cache: Any, device: Any,
             res: Results, clock: Clock) -> bool:
    import numpy as np

    from alft_cli.embed import infer, infer_top
    from alft_cli.finetune import load_model
    from alft_cli.models import Classifier
    from alft_cli.strategies import mge_scores

    run = base.parent / "runs" / "s1" / "mge-clustering" / "seed0"
    model_files = sorted(run.glob("rounds/round_*/model.pt"))
    if model_files:
        model, _ = load_model(model_files[-1])
    else:
        _, _, classes = labeled_subset(base, labels_csv, 1)
        model = Classifier(args.backbone, len(classes), in_channels=cache.channels)
    model.to(device)
    ids = np.arange(len(cache.array))
    infer_top(model, cache, ids[:2 * args.score_batch], device, mge_scores, keep=20,
              batch_size=args.score_batch)  # warm-up
    started = time.perf_counter()
    infer_top(model, cache, ids, device, mge_scores, keep=10 * args.budget,
              batch_size=args.score_batch)
    loop = len(ids) / (time.perf_counter() - started)
    model_rate = res.data["throughput"].get("scoring_model_only_img_s")
    if model_rate is None:
        _, _, classes = labeled_subset(base, labels_csv, 1)
        model_rate = probe_scoring(args, base, device, res, len(classes))
    res.set("throughput", "scoring", {"images": int(len(ids)), "batch": args.score_batch,
                                      "loop_img_s": round(loop, 1),
                                      "model_only_img_s": model_rate,
                                      "ratio_loop_over_model": round(loop / model_rate, 3)})
    if not model_files or clock.left() < 10:
        return bool(model_files)
    # alft query (model load + pass + strategy + query file + store) vs its pass alone.
    from alft_cli import api
    from alft_cli.project import open_project

    project = open_project(run, readonly=True)
    try:
        labeled = set(int(i) for i in project.store.labels())
        unlabeled = np.asarray([int(i) for i in project.store.sample_ids("pool")
                                if int(i) not in labeled], dtype=np.int64)
        run_cache = type(cache)(project.cache_path)
    finally:
        project.close()
    infer(model, run_cache, unlabeled[:args.score_batch], device, args.score_batch)  # warm-up
    started = time.perf_counter()
    infer(model, run_cache, unlabeled, device, args.score_batch)
    inference = time.perf_counter() - started
    started = time.perf_counter()
    api.query(run, budget=args.budget, strategy="mge-clustering", force=True,
              device=str(device), batch_size=args.score_batch, seed=99)
    query = time.perf_counter() - started
    res.set("throughput", "query", {"unlabeled": int(len(unlabeled)),
                                    "inference_s": round(inference, 2),
                                    "query_s": round(query, 2),
                                    "ratio_query_over_inference": round(query / inference, 3)})
    return True


def _tag(args: argparse.Namespace, base: Path, labels_csv: Path, device: Any,
         res: Results) -> None:
    """Export the last mge-clustering model, tag a subset of the archive with onnxruntime,
    compare with torch's forward on the CPU at the same thread count (bench_tag.py)."""
    import numpy as np
    import torch

    from alft_cli import api, onnxrun, tag
    from alft_cli.finetune import load_model
    from alft_cli.images import load_image

    run = base.parent / "runs" / "s1" / "mge-clustering" / "seed0"
    model_files = sorted(run.glob("rounds/round_*/model.pt"))
    if not model_files:
        res.set("throughput", "tag", "skipped: no trained model")
        return
    started = time.perf_counter()
    exported = api.export(run, out=base.parent / "tag-model.onnx")
    export_s = time.perf_counter() - started
    with open(labels_csv) as handle:
        keys = [line.split(",")[0] for line in handle.read().splitlines()[1:]]
    keys = keys[:args.tag_images]
    root = Path(json.loads((base / "config.json").read_text())["archive"])
    subset = base.parent / "tag-subset"
    for key in keys:
        (subset / key).parent.mkdir(parents=True, exist_ok=True)
        if not (subset / key).exists():  # tag refuses links that leave the archive
            try:
                os.link(root / key, subset / key)
            except OSError:
                shutil.copyfile(root / key, subset / key)
    threads = onnxrun.cpu_count()
    out = base.parent / "tags.csv"
    out.unlink(missing_ok=True)
    result = tag.tag_archive(Path(exported.path), subset, out, device="auto", batch_size=32,
                             threads=threads)
    # torch's forward on the CPU, same threads, on the same images already decoded.
    model, _ = load_model(model_files[-1])
    model.eval()
    size = args.image_size
    x = np.stack([load_image(subset / k, size).array.transpose(2, 0, 1)
                  for k in keys[:64]]).astype(np.float32)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            torch.sigmoid(model(torch.from_numpy(x[:8])))
            started = time.perf_counter()
            for i in range(0, len(x), 32):
                torch.sigmoid(model(torch.from_numpy(x[i:i + 32])))
            torch_rate = len(x) / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    res.set("throughput", "tag", {
        "images": result.tagged, "provider": result.provider, "threads": threads,
        "tag_img_s": round(result.images_per_second, 1),
        "torch_cpu_model_only_img_s": round(torch_rate, 1),
        "ratio_tag_over_torch_cpu": round(result.images_per_second / torch_rate, 3),
        "export_s": round(export_s, 1)})
    del device
