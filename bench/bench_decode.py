"""Decode speed of alft's image path without JPEG draft decoding (issue 15, part 2).

alft used to let libjpeg decode large JPEGs at a reduced scale (``Image.draft``) before the
bilinear resize; that gave other pixels than the documented resize, so it was dropped. This
measures what that costs: images/s of ``alft_cli.images.load_image`` (full decode + resize)
÷ images/s of the old draft path, in one run, one thread, on the same files.

    python bench/bench_decode.py [--n 200] [--sizes 32,64,128]

Files: the first N UC Merced JPEGs (256 px) and the same images upscaled to 1024 px (where
draft decoding could skip the most work).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import UCM, table
from PIL import Image

from alft_cli.images import load_image


def old_draft_path(path: Path, size: int) -> np.ndarray:
    """The removed path: reduced-scale JPEG decoding, then the same resize."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        img.load()
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def rate(fn, files: list[Path], size: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for f in files:
            fn(f, size)
        best = min(best, time.perf_counter() - start)
    return len(files) / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--sizes", default="32,64,128")
    args = parser.parse_args()
    files = sorted((UCM / "images").rglob("*.jpg"))[: args.n]
    if not files:
        raise SystemExit(f"no UC Merced JPEGs under {UCM}")
    with tempfile.TemporaryDirectory() as tmp:
        big = []
        for f in files:
            out = Path(tmp) / f.name
            with Image.open(f) as img:
                img.convert("RGB").resize((1024, 1024), Image.Resampling.BICUBIC).save(
                    out, quality=90)
            big.append(out)
        rows = []
        for label, group in (("UC Merced 256 px", files), ("upscaled 1024 px", big)):
            for size in (int(s) for s in args.sizes.split(",")):
                new = rate(lambda p, s: load_image(p, s).array, group, size)
                old = rate(old_draft_path, group, size)
                diff = np.mean([np.abs(load_image(p, size).array.astype(int)
                                       - old_draft_path(p, size).astype(int)).mean()
                                for p in group[:40]])
                rows.append([label, f"{size}", f"{old:.0f}", f"{new:.0f}", f"{new / old:.2f}",
                             f"{diff:.2f}"])
    print(table(["JPEG files", "target px", "old draft path img/s",
                 "alft now (full decode) img/s", "ratio now/old",
                 "mean |pixel diff| old vs now (40 files)"], rows))


if __name__ == "__main__":
    main()
