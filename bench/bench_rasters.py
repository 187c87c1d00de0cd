"""init-pool decode rate on a multi-band band-folder archive ÷ rasterio reads alone (issue 14).

    python bench/bench_rasters.py [--n 300] [--size 120] [--workers 2]

Archive: synthetic Sentinel-2-like BigEarthNet v1 layout (12 single-band uint16 GeoTIFFs per
patch at 120/60/20 px, plus the label JSON), written by alft's own generator.

- baseline: rasterio reads alone of the same files, the same way and with the same threads
  as alft (``src.read(1, out_shape=(S, S), resampling=bilinear, out_dtype='float32')``
  per band file), nothing else;
- alft: the whole ``alft init-pool`` (listing, probing, the percentile pass, reads, scaling,
  float16 cache, SHA-256 of every file, store), patches per second.

Goal: ratio >= 0.8. Also prints the decode cache's bytes per sample. Runs alternate
(baseline, alft, baseline, alft, ...) in one process; the wall-clock ratio is the median of
the ratios of adjacent pairs (a shared machine's load drifts; a pair sees about the same),
and the CPU-time ratio (patches per CPU second of the process, all threads) says what each
costs whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import table

from alft_cli import api
from alft_cli.synthetic_s2 import generate_s2_archive


def rasterio_only(root: Path, size: int, workers: int) -> float:
    import rasterio
    from rasterio.enums import Resampling

    folders = sorted(p for p in root.iterdir() if p.is_dir())

    def read(folder: Path) -> None:
        for f in sorted(folder.glob("*_B*.tif")):
            with rasterio.open(f) as src:
                src.read(1, out_shape=(size, size), resampling=Resampling.bilinear,
                         out_dtype="float32")

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(read, folders))
    return (len(folders) / (time.perf_counter() - start),
            len(folders) / (time.process_time() - cpu))


def alft_init_pool(root: Path, size: int, workers: int, tmp: Path
                   ) -> tuple[float, float, int]:
    proj = tmp / "proj"
    shutil.rmtree(proj, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    result = api.init_pool(root, proj, classes="a,b", initial=0, image_size=size,
                           workers=workers)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    cache = proj / "cache" / "images.npy"
    return (result.indexed / seconds, result.indexed / cpu_seconds,
            cache.stat().st_size // result.indexed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--size", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        arch = generate_s2_archive(tmp / "arch", n_images=args.n, image_size=args.size)
        rasterio_only(arch.root, args.size, args.workers)  # warm the page cache
        base, mine, per_sample = [], [], 0
        for _ in range(args.repeat):
            base.append(rasterio_only(arch.root, args.size, args.workers))
            *rates, per_sample = alft_init_pool(arch.root, args.size, args.workers, tmp)
            mine.append(rates)
    wall = np.median([m[0] / b[0] for b, m in zip(base, mine)])
    cpu = np.median([m[1] / b[1] for b, m in zip(base, mine)])
    load = os.getloadavg()[0]
    print(table(["archive", "rasterio reads alone patches/s (wall; per CPU s)",
                 "alft init-pool patches/s (wall; per CPU s)", "ratio wall", "ratio CPU",
                 "cache bytes/sample"],
                [[f"{args.n} patches, 12 bands, {args.size} px band-folder, "
                  f"{args.workers} threads, load {load:.1f}",
                  f"{np.median([b[0] for b in base]):.1f}; {np.median([b[1] for b in base]):.1f}",
                  f"{np.median([m[0] for m in mine]):.1f}; {np.median([m[1] for m in mine]):.1f}",
                  f"**{wall:.2f}**", f"**{cpu:.2f}**",
                  f"{per_sample:,} (12 x {args.size}^2 x 2, float16)"]]))


if __name__ == "__main__":
    main()
