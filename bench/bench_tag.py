"""Benchmark ``alft tag``: end-to-end throughput against torch eager, and memory flatness.

1. Throughput on the CPU, batch 16, for resnet18@64 and densenet121@64 (random-init
   classifiers exported with alft's exporter; a synthetic archive written by
   :mod:`alft_cli.synthetic`):

   - torch eager, model only: ``sigmoid(model(x))`` on pre-decoded tensors (the baseline);
   - onnxruntime, model only: the same batches through the session ``alft tag`` opens;
   - ``alft tag`` end to end: list + decode (thread pool) + inference + CSV write, through
     :func:`alft_cli.tag.tag_archive` (streaming time, model loading excluded; the call's
     whole wall time is shown too).

   torch and onnxruntime get the same number of intra-op threads. Each figure is the best of
   ``--repeats`` interleaved runs, since other work on a shared machine only ever slows a run
   down; the load average is printed so a reader can judge the machine.

2. Peak RSS of tagging 2k vs 20k images (the 64 px set hard-linked under many names), each
   in a fresh subprocess that reports its own peak (``VmHWM``). Streaming should keep the
   ratio near 1.

   With ``--device cuda`` (or ``auto`` on a GPU machine) alft tag runs onnxruntime's CUDA
   provider and the torch baseline runs on the GPU (same batches, synchronised); the table
   says which provider ran.

Usage: python bench/bench_tag.py [--images 500] [--repeats 5] [--threads N] [--skip-rss]
       [--size 64] [--backbones resnet18,densenet121] [--spinning] [--device cpu|cuda|auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run from a checkout without installing: `python bench/bench_tag.py`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Not alft_cli.export here: it imports torch, which the RSS children must not carry.
from alft_cli import onnxrun, tag  # noqa: E402
from alft_cli.progress import Reporter, set_reporter  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


def _export(backbone: str, size: int, path: Path):
    import torch

    from alft_cli import export
    from alft_cli.models import Classifier

    torch.manual_seed(0)
    model = Classifier(backbone, len(CLASSES)).eval()
    meta = export.model_metadata(model, CLASSES, [0.5] * len(CLASSES), size, "bench")
    path.write_bytes(export.classifier_to_onnx(model, size, meta))
    return model


def _torch_device(device: str):
    import torch

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if cuda else "cpu")


def _torch_rate(model, x: np.ndarray, batch: int, device: str = "cpu") -> float:
    """Model-only rate: host batches in, probabilities on the device (as a GPU user would
    run eager torch), synchronised before the clock is read."""
    import torch

    dev = _torch_device(device)
    model.to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        torch.sigmoid(model(torch.from_numpy(x[:batch]).to(dev)))  # warm-up
        sync()
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            torch.sigmoid(model(torch.from_numpy(x[i:i + batch]).to(dev)))
        sync()
        return len(x) / (time.perf_counter() - start)


def _ort_rate(session, x: np.ndarray, batch: int) -> float:
    session.run(None, {"image": x[:batch]})  # warm-up
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        session.run(None, {"image": x[i:i + batch]})
    return len(x) / (time.perf_counter() - start)


def _tag_rates(model_path: Path, root: Path, out: Path, batch: int, threads: int,
               device: str = "cpu") -> tuple[float, float, int]:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    result = tag.tag_archive(model_path, root, out, device=device, batch_size=batch,
                             threads=threads)
    wall = time.perf_counter() - start
    return result.images_per_second, result.tagged / wall, result.tagged


def throughput(work: Path, n_images: int, size: int, batch: int, repeats: int,
               model_only_images: int, threads: int,
               backbones: tuple[str, ...] = ("resnet18", "densenet121"),
               device: str = "cpu") -> list[dict]:
    import torch

    from alft_cli.images import load_image, scan_folder
    from alft_cli.synthetic import generate_archive

    archive = generate_archive(work / "arch", n_images=n_images, image_size=size, seed=0,
                               formats=("png", "jpg"))
    keys = scan_folder(archive.root).keys
    x = np.stack([load_image(archive.root / k, size).array.transpose(2, 0, 1)
                  for k in keys[:model_only_images]]).astype(np.float32)
    torch.set_num_threads(threads)
    rows = []
    for backbone in backbones:
        path = work / f"{backbone}.onnx"
        model = _export(backbone, size, path)
        session, provider = onnxrun.open_session(path, device, threads)
        with torch.inference_mode():
            want = torch.sigmoid(model(torch.from_numpy(x[:batch]))).numpy()
        parity = float(np.abs(session.run(None, {"image": x[:batch]})[0] - want).max())
        best = {"torch": 0.0, "ort": 0.0, "tag": 0.0, "tag_wall": 0.0}
        for _ in range(repeats):
            best["torch"] = max(best["torch"], _torch_rate(model, x, batch, device))
            best["ort"] = max(best["ort"], _ort_rate(session, x, batch))
            stream, wall, tagged = _tag_rates(path, archive.root, work / "tags.csv", batch,
                                              threads, device)
            assert tagged == len(keys), (tagged, len(keys))
            best["tag"] = max(best["tag"], stream)
            best["tag_wall"] = max(best["tag_wall"], wall)
        model.cpu()  # the parity reference of the next model runs on the CPU
        rows.append({"model": f"{backbone}@{size}", "batch": batch, "threads": threads,
                     "parity": parity, "provider": provider, "images": len(keys), **best})
        del session, model
    return rows


def _link_archive(src: Path, dst: Path, copies: int) -> int:
    """``copies`` hard-linked copies of every image of ``src`` under ``dst/copy_###``."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for c in range(copies):
        folder = dst / f"copy_{c:03d}"
        folder.mkdir(parents=True)
        for i, f in enumerate(files):
            target = folder / f"{i:05d}{f.suffix}"
            try:
                os.link(f, target)
            except OSError:
                shutil.copyfile(f, target)
    return copies * len(files)


def _child_rss(model: Path, archive: Path, out: Path, batch: int, device: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(model), str(archive), str(out), str(batch),
         device],
        capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(work: Path, size: int, batch: int, small: int, large: int,
           device: str = "cpu") -> list[dict]:
    model = work / "resnet18.onnx"
    src = work / "arch" / "images"
    per_copy = sum(1 for p in src.rglob("*") if p.is_file())
    rows = []
    for n in (small, large):
        root = work / f"linked_{n}"
        total = _link_archive(src, root, max(1, round(n / per_copy)))
        info = _child_rss(model, root, work / f"rss_{n}.csv", batch, device)
        rows.append({"images": total, **info})
        shutil.rmtree(root)
    return rows


def _peak_rss_kb() -> int:
    # VmHWM belongs to this process's own address space. ru_maxrss would not do: Linux
    # carries the high-water mark across fork+exec, so a child reports at least the RSS its
    # parent had when it forked (here: torch and two models).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(model: str, archive: str, out: str, batch: str, device: str) -> None:
    set_reporter(Reporter())
    result = tag.tag_archive(Path(model), Path(archive), Path(out), device=device,
                             batch_size=int(batch))
    peak_kb = _peak_rss_kb()
    assert "torch" not in sys.modules  # tagging needs onnxruntime only
    print(json.dumps({"tagged": result.tagged, "peak_rss_mib": peak_kb / 1024,
                      "images_per_second": result.images_per_second}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=onnxrun.cpu_count(),
                        help="intra-op threads for torch and onnxruntime alike (default: cores)")
    parser.add_argument("--model-only-images", type=int, default=256,
                        help="pre-decoded images for the model-only rates")
    parser.add_argument("--rss-small", type=int, default=2000)
    parser.add_argument("--rss-large", type=int, default=20000)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--backbones", default="resnet18,densenet121",
                        help="comma-separated backbones for the throughput table")
    parser.add_argument("--spinning", action="store_true",
                        help="let onnxruntime's intra-op threads spin (alft tag does not)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="alft tag's onnxruntime provider and the torch baseline's device")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    import onnxruntime
    import torch

    set_reporter(Reporter())
    tag.ORT_ALLOW_SPINNING = args.spinning
    load_before = os.getloadavg()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="alft-bench-tag-"))
    try:
        rows = throughput(work, args.images, args.size, args.batch, args.repeats,
                          args.model_only_images, args.threads,
                          tuple(args.backbones.split(",")), args.device)
        mem = [] if args.skip_rss else memory(work, args.size, args.batch, args.rss_small,
                                              args.rss_large, args.device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"({onnxrun.cpu_count()} usable); torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after; {time.perf_counter() - started:.0f} s in all\n")
    where = ", ".join(sorted({r["provider"] for r in rows}))
    print(f"### Throughput ({where}, torch on {_torch_device(args.device)}; images/s, best of "
          f"{args.repeats}; ratios against torch eager model-only)\n")
    print("| model | batch | threads | torch eager (model only) | onnxruntime (model only) "
          "| alft tag end to end | tag / torch | ort / torch | tag / ort | tag incl. model "
          "load | max abs diff ort vs torch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['torch']:.1f} | "
              f"{r['ort']:.1f} | {r['tag']:.1f} | **{r['tag'] / r['torch']:.2f}** | "
              f"{r['ort'] / r['torch']:.2f} | {r['tag'] / r['ort']:.2f} | "
              f"{r['tag_wall']:.1f} | {r['parity']:.1e} |")
    print(f"\nonnxruntime intra-op spinning: {'on' if args.spinning else 'off'}.")
    print(f"\nalft tag end to end = list + decode ({args.images} png/jpg {args.size} px files) "
          "+ inference + CSV write; goal tag / torch >= 1.5.")
    if mem:
        print("\n### Peak RSS of `alft tag` (resnet18@64, batch "
              f"{args.batch}, fresh subprocess each)\n")
        print("| images | peak RSS (MiB) | images/s |")
        print("|---:|---:|---:|")
        for m in mem:
            print(f"| {m['images']} | {m['peak_rss_mib']:.0f} | {m['images_per_second']:.1f} |")
        ratio = mem[1]["peak_rss_mib"] / mem[0]["peak_rss_mib"]
        print(f"\nPeak RSS ratio {mem[1]['images']} / {mem[0]['images']} images: "
              f"**{ratio:.3f}** (goal <= 1.1)")


if __name__ == "__main__":
    main()
