"""Benchmark `alft import-labels` on big answer files: seconds per row must not grow with n.

A mapping team labels thousands of images per round. The project here is a real alft project
folder (config.json + alft.db, as init-pool writes them) over ``--n-images`` images whose
samples are inserted directly, so no archive has to be decoded; everything else is the real
``api.import_labels`` on a real list CSV: parsing, key matching, validation, the transaction.
Each size gets a fresh project whose round 0 queried exactly the images answered, so every
answer closes one pending query (the case that was quadratic: issue 17).

Prints seconds per row at each size and the ratio of the largest to the smallest (goal
<= 1.5: linear import).

Usage: python bench/bench_import.py [--n-images 100000] [--sizes 1000,30000]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alft_cli import api  # noqa: E402
from alft_cli.config import ProjectConfig  # noqa: E402
from alft_cli.progress import Reporter, set_reporter  # noqa: E402
from alft_cli.store import SampleRecord, Store, now_iso  # noqa: E402

CLASSES = [f"class{i:02d}" for i in range(17)]


def make_project(root: Path, n_images: int, queried: int, seed: int = 0) -> list[str]:
    """A project over ``n_images`` (all pool) with ``queried`` pending in round 0; their keys."""
    root.mkdir()
    ProjectConfig(archive=str(root / "archive"), classes=CLASSES, image_size=32,
                  val_fraction=0.0, test_fraction=0.0, initial=queried,
                  mean=[0.5] * 3, std=[0.25] * 3, created_at=now_iso()
                  ).save(root / "config.json")
    store = Store.create(root / Store.FILENAME)
    keys = [f"scene{i // 1000:03d}/tile{i:06d}.tif" for i in range(n_images)]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n_images, size=queried, replace=False)
    with store.transaction():
        store.add_samples((i, SampleRecord(k, 1000, 0, "0" * 64, 32, 32), "pool")
                          for i, k in enumerate(keys))
        store.add_round(0, "random", queried, seed, None, "rounds/round_000/query.csv")
        store.add_query(0, ((int(s), rank + 1, None, None) for rank, s in enumerate(chosen)))
    store.close()
    return [keys[int(s)] for s in chosen]


def write_answers(path: Path, keys: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "labels"])
        for key in keys:
            hits = rng.random(len(CLASSES)) < 0.2
            hits[rng.integers(len(CLASSES))] = True  # every image shows something
            writer.writerow([key, ";".join(c for c, hit in zip(CLASSES, hits) if hit)])


def time_import(base: Path, n_images: int, rows: int) -> float:
    root = base / f"proj_{rows}"
    keys = make_project(root, n_images, rows)
    answers = base / f"answers_{rows}.csv"
    write_answers(answers, keys)
    started = time.perf_counter()
    result = api.import_labels(root, answers)
    seconds = time.perf_counter() - started
    assert result.added == rows and result.pending_left == 0, result
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=100_000)
    parser.add_argument("--sizes", default="1000,30000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    set_reporter(Reporter())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"import-labels into a {args.n_images}-image project (load average {load:.1f})\n")
    print("| answers | import s | ms per row |")
    print("|---|---|---|")
    per_row = {}
    with tempfile.TemporaryDirectory(prefix="alft-bench-import-") as tmp:
        time_import(Path(tmp), 1000, 100)  # warm-up: module imports are not import cost
        for rows in sizes:
            seconds = time_import(Path(tmp), args.n_images, rows)
            per_row[rows] = seconds / rows
            print(f"| {rows} | {seconds:.2f} | {1000 * per_row[rows]:.3f} |", flush=True)
    ratio = per_row[sizes[-1]] / per_row[sizes[0]]
    print(f"\nseconds per row, {sizes[-1]} vs {sizes[0]} answers: ratio {ratio:.2f} "
          f"(goal <= 1.5)")


if __name__ == "__main__":
    main()
