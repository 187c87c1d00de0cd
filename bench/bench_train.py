"""Training throughput: the pretrain loop vs the model alone, and fine-tuning round time.

1. BYOL loop images/s (cache read + on-device augmentation + step + EMA, via alft's real
   pretrain loop) divided by the model-only images/s (forward+backward+step+EMA on the SAME
   pre-augmented batches, already in memory; bench/measure.py). Goal >= 0.9: the data path
   must not starve the device. On a CPU the augmentations share the cores with the model, so
   the ratio there also prices the augmentation compute.
2. Fine-tuning round time for 40..200 labels (the paper's budgets) with alft's real finetune,
   without and with the precise-BN pass after training (its cost as a ratio).

Usage: python bench/bench_train.py [--device cpu|cuda] [--backbone B] [--size S] [--batch N]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from common import machine, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    args = parser.parse_args()

    import torch
    from measure import byol_model_only

    from alft_cli import api
    from alft_cli.data import CachedImages

    device = torch.device(args.device)
    print(f"Machine: {machine()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = api.demo_data(tmp / "arch", n_images=args.images, image_size=args.size)
        proj = tmp / "proj"
        api.init_pool(archive.root, proj, labels_file=archive.labels_csv, initial=0,
                      image_size=args.size, val_fraction=0.2, test_fraction=0.2)
        opts = dict(backbone=args.backbone, batch_size=args.batch, hidden_dim=1024,
                    proj_dim=128, device=args.device, checkpoint_every=0)
        # Warm-up epoch (allocator, cuDNN autotune), then the measured run.
        api.pretrain(proj, epochs=1, **opts)
        loop = api.pretrain(proj, epochs=args.epochs, restart=True, **opts)
        loop_rate = loop.images_per_second

        cache = CachedImages(proj / "cache" / "images.npy")
        n_batches = len(cache.array) // args.batch
        images = [torch.from_numpy(cache.read(range(i * args.batch, (i + 1) * args.batch)))
                  .to(device) for i in range(min(n_batches, 8))]
        model_rate = byol_model_only(args.backbone, images, device, hidden_dim=1024,
                                     proj_dim=128, steps=max(len(images),
                                                             args.epochs * n_batches))

        print("## BYOL pretrain loop vs model only "
              f"({args.backbone} @ {args.size} px, batch {args.batch}, {args.device})\n")
        print(table(["pretrain loop img/s", "model-only img/s", "ratio (goal >= 0.9)"],
                    [[f"{loop_rate:.1f}", f"{model_rate:.1f}",
                      f"{loop_rate / model_rate:.2f}"]]))

        # Fine-tuning round time at the paper's label budgets.
        rows = []
        gold = {r["filename"]: r for r in csv.DictReader(open(archive.labels_csv))}
        header = ["filename", *archive.classes]
        for labels in (40, 100, 200):
            status = api.status(proj)
            have = status["labeled"]
            if labels > have:
                from alft_cli.project import open_project

                p = open_project(proj)
                keys = p.store.keys_by_id()
                pool = [keys[int(i)] for i in p.store.sample_ids("pool")]
                labeled = {keys[i] for i in p.store.labels()}
                p.close()
                todo = [k for k in pool if k not in labeled][: labels - have]
                path = tmp / f"labels{labels}.csv"
                with open(path, "w", newline="") as handle:
                    w = csv.writer(handle)
                    w.writerow(header)
                    for k in todo:
                        w.writerow([k] + [gold[k][c] for c in archive.classes])
                api.import_labels(proj, path)
            # The same round without and with the precise-BN pass (issue 18), alternating,
            # the faster of two each: the pass is one forward over the labeled set, smaller
            # than the run-to-run noise of a round.
            seconds = {False: float("inf"), True: float("inf")}
            for precise in (False, True, False, True):
                started = time.perf_counter()
                r = api.finetune(proj, epochs=args.finetune_epochs, lr_step=0,
                                 device=args.device, init="pretrained", precise_bn=precise)
                seconds[precise] = min(seconds[precise], time.perf_counter() - started)
            rows.append([labels, args.finetune_epochs, f"{seconds[False]:.1f}",
                         f"{seconds[False] / args.finetune_epochs:.2f}",
                         f"{seconds[True]:.1f}", f"{seconds[True] / seconds[False]:.2f}",
                         f"{r.metrics['test']['micro_f1']:.3f}"])
        print(f"\n## Fine-tuning round time ({args.backbone} @ {args.size} px, batch 10, "
              f"{args.device}; includes val+test evaluation)\n")
        print(table(["labels", "epochs", "round s (--no-precise-bn)", "s/epoch",
                     "round s (precise BN)", "ratio", "test micro F1 (precise BN)"], rows))


if __name__ == "__main__":
    main()
