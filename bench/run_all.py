"""Run the benchmarks one after another, print their tables, then every ratio in one list
(``make bench``).

Each benchmark runs in its own process (a fresh interpreter, as a user's command would).
Ratios are read off the tables the benchmarks print: every column whose header says
"ratio", "speed-up" or "A / B". bench_query needs UC Merced (bench/common.py says where it is
looked for); without it that benchmark is skipped with a note.

Usage: python bench/run_all.py [--device auto|cpu|cuda] [--quick] [--only train,query,...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def plan(device: str, quick: bool) -> list[tuple[str, list[str]]]:
    """(name, arguments) of each benchmark; ``quick`` shrinks them to a few minutes on CPU."""
    train = ["bench_train.py", "--device", device]
    query = ["bench_query.py", "--device", device]
    tag = ["bench_tag.py", "--device", device]
    strategies = ["bench_strategies.py"]
    if quick:
        train += ["--images", "384", "--epochs", "1", "--finetune-epochs", "1"]  # pool >= 200
        tag += ["--images", "200", "--repeats", "2", "--skip-rss", "--backbones", "resnet18"]
        strategies += ["--n-pool", "20000", "--mge-sizes", "1000", "--repeat", "1"]
    return [("train", train), ("query", query), ("tag", tag), ("strategies", strategies)]


def ratios(text: str) -> list[str]:
    """``row: header = value`` for the ratio columns of every Markdown table in ``text``."""
    found, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            for name, value in zip(header, cells):
                if re.search(r"ratio| / |speed-up", name, re.I) and value:
                    found.append(f"{cells[0]}: {name} = {value}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="small settings (CI-sized)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    from common import UCM

    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    summary, failed = [], []
    for name, argv in plan(device, args.quick):
        if wanted and name not in wanted:
            continue
        if name == "query" and not (UCM / "labels.csv").is_file():
            summary.append(f"[{name}] skipped: no UC Merced at {UCM} (set ALFT_UCM)")
            continue
        print(f"\n# {name}: python bench/{' '.join(argv)}\n", flush=True)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(BENCH / argv[0]), *argv[1:]],
                              capture_output=True, text=True)
        print(proc.stdout, flush=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            failed.append(name)
            print(proc.stderr[-3000:], file=sys.stderr)
            summary.append(f"[{name}] FAILED (exit {proc.returncode}) after {seconds:.0f} s")
            continue
        summary += [f"[{name}] {r}" for r in ratios(proc.stdout)] or [f"[{name}] no ratios"]
    print("\n# Ratios (each measured within one run)\n")
    print("\n".join(summary))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
