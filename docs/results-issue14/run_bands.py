"""Issue 14 evidence: all 12 Sentinel-2 bands vs B04,B03,B02 only, same seeds and budget.

    python docs/results-issue14/run_bands.py OUT_DIR [--seeds 3] [--n 600]

For each seed and band set: ``alft init-pool`` (same seed: same split and the same 60 random
initial labels for both band sets), the oracle labels the initial set from the gold file,
``alft finetune``, then two rounds of ``alft query`` (default strategy, budget 30) + oracle +
``finetune``: 120 labels in all. Test-set metrics of the last round go to ``OUT_DIR/
results.json`` and a Markdown table on stdout. The archive is alft's synthetic
Sentinel-2-like archive (band-folder layout, 24 px), where "Coniferous forest" differs from
"Broad-leaved forest" only outside the visible bands.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from alft_cli import api
from alft_cli.progress import Reporter, set_reporter

SIZE = 24
BAND_SETS = {"all 12 bands": None, "B04,B03,B02": "B04,B03,B02"}
TRAIN = {"epochs": 30, "lr_step": 24, "batch_size": 10, "backbone": "resnet18",
         "device": "cpu"}


def answer(proj: Path, gold: dict[str, np.ndarray], classes: list[str], out: Path) -> None:
    """The oracle: label exactly the pending (queried) samples from the gold file."""
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *classes])
        for key in api.status(proj)["pending"]:
            writer.writerow([key, *(int(v) for v in gold[key])])
    api.import_labels(proj, out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=600)
    args = parser.parse_args()
    set_reporter(Reporter())
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine; one thread is nearly as fast at 24 px
    args.out.mkdir(parents=True, exist_ok=True)
    archive = args.out / "s2"
    if not (archive / "labels.csv").exists():
        api.demo_data(archive, n_images=args.n, image_size=SIZE, bands=12,
                      layout="band-folder")
    with (archive / "labels.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    classes = rows[0][1:]
    gold = {r[0]: np.array([int(v) for v in r[1:]]) for r in rows[1:]}
    results = []
    for seed in range(args.seeds):
        for name, bands in BAND_SETS.items():
            started = time.perf_counter()
            proj = args.out / f"seed{seed}-{'all' if bands is None else 'rgb'}"
            if not (proj / "config.json").exists():
                api.init_pool(archive / "images", proj, labels_file=archive / "labels.csv",
                              initial=60, image_size=SIZE, seed=seed, bands=bands,
                              scale="reflectance")
            answer(proj, gold, classes, proj / "answers_0.csv")
            api.finetune(proj, init="scratch", seed=seed, **TRAIN)
            for r in (1, 2):
                api.query(proj, budget=30, seed=seed, device="cpu")
                answer(proj, gold, classes, proj / f"answers_{r}.csv")
                api.finetune(proj, init="previous", seed=seed, **TRAIN)
            last = api.status(proj)["rounds"][-1]
            test = last["metrics"]["test"]
            results.append({"seed": seed, "bands": name, "labels": last["labeled"],
                            "micro_f1": test["micro_f1"], "macro_f1": test["macro_f1"],
                            "mAP": test["mAP"],
                            "per_class": {c: test["per_class"][c] for c in classes},
                            "seconds": time.perf_counter() - started})
            print(f"seed {seed} {name}: micro F1 {test['micro_f1']:.3f}", file=sys.stderr)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results, classes)


def print_table(results: list[dict], classes: list[str]) -> None:
    def stat(name: str, get) -> str:
        v = np.array([get(r) for r in results if r["bands"] == name]) * 100
        return f"{v.mean():.1f} ± {v.std():.1f}"

    header = ["test (%, mean ± std over seeds)", *BAND_SETS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in ("micro_f1", "macro_f1", "mAP"):
        lines.append(f"| {metric} | " + " | ".join(stat(n, lambda r, m=metric: r[m])
                                                   for n in BAND_SETS) + " |")
    for c in classes:
        for key in ("f1", "ap"):
            lines.append(f"| {c}: {key.upper()} | " + " | ".join(
                stat(n, lambda r, c=c, k=key: r["per_class"][c][k]) for n in BAND_SETS) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
