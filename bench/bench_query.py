"""`alft query` wall time vs the inference pass alone over the same pool (goal <= 1.15).

On UC Merced (1050 pool images after the paper's split) with a small CPU config: the query
is one inference pass (features + probabilities) plus the strategy, the query file and the
store transaction; everything beyond the pass is overhead.

Usage: python bench/bench_query.py [--backbone B] [--size S] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import UCM, machine, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=int, default=20)
    args = parser.parse_args()

    import torch

    from alft_cli import api
    from alft_cli.data import CachedImages
    from alft_cli.embed import infer
    from alft_cli.finetune import load_model
    from alft_cli.project import open_project
    from alft_cli.strategies import STRATEGIES

    print(f"Machine: {machine()}\n")
    tmp = Path(tempfile.mkdtemp())
    try:
        proj = tmp / "proj"
        api.init_pool(UCM / "images", proj, labels_file=UCM / "labels.csv", initial=40,
                      image_size=args.size)
        pending = api.status(proj)["pending"]
        answers = tmp / "answers.csv"
        lines = (UCM / "labels.csv").read_text().splitlines()
        wanted = set(pending)
        answers.write_text("\n".join([lines[0]] + [ln for ln in lines[1:]
                                                    if ln.split(",")[0] in wanted]) + "\n")
        api.import_labels(proj, answers)
        api.finetune(proj, epochs=1, init="scratch", backbone=args.backbone, device=args.device)
        p = open_project(proj)
        labeled = set(p.store.labels())
        unlabeled = [int(i) for i in p.store.sample_ids("pool") if int(i) not in labeled]
        model, _ = load_model(proj / p.store.rounds()[-1].model_file)
        cache = CachedImages(p.cache_path)
        p.close()
        device = torch.device(args.device)
        model.to(device)
        infer(model, cache, unlabeled[:64], device)  # warm-up
        rows = []
        # The first query of a process also imports scikit-learn (~1 s here), as every
        # `alft query` command does; the rows after it are a warm process.
        for strategy in ("mge-clustering (cold process)", "mge-clustering", "random",
                         "entropy", "badge", "coreset"):
            name = strategy.split(" ")[0]
            assert name in STRATEGIES
            started = time.perf_counter()
            infer(model, cache, unlabeled, device)
            inference = time.perf_counter() - started
            started = time.perf_counter()
            api.query(proj, budget=args.budget, strategy=name, device=args.device,
                      force=True)
            query = time.perf_counter() - started
            rows.append([strategy, len(unlabeled), f"{inference:.2f}", f"{query:.2f}",
                         f"{query / inference:.2f}"])
        print(f"## alft query vs inference alone ({args.backbone} @ {args.size} px, "
              f"UC Merced pool, B = {args.budget}, {args.device})\n")
        print(table(["strategy", "unlabeled", "inference s", "query s",
                     "ratio (goal <= 1.15)"], rows))
        print("\n(random needs no inference: its ratio is against the pass it skips)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
