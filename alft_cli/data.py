"""Batches of decoded images from the project cache, prefetched off the training thread.

Decoding happened once at init-pool; here a batch is a memcpy out of the memory-mapped cache,
done by a background thread so the device never waits for it. Augmentations run on the
device, batched (see :mod:`alft_cli.augment`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from alft_cli.images import open_cache


class CachedImages:
    """Read-only view of ``cache/images.npy`` (N, C, S, S): uint8, or float16 for archives
    read with rasterio (scaled 0..255 values); consumers cast batches with ``.float()``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.array = open_cache(self.path)

    @property
    def image_size(self) -> int:
        return int(self.array.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.array.shape[1])

    def read(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` as one contiguous (B, C, S, S) array of the cache's dtype."""
        ids = np.asarray(ids, dtype=np.int64)
        # Sorted reads walk the file forward (page-cache friendly); restore the order after.
        order = np.argsort(ids, kind="stable")
        out = np.empty((len(ids),) + self.array.shape[1:], dtype=self.array.dtype)
        out[order] = self.array[ids[order]]
        return out


def iterate_batches(cache: CachedImages, ids: np.ndarray, batch_size: int,
                    device: torch.device, prefetch: int = 3
                    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(batch_ids, uint8 tensor on device)`` for consecutive slices of ``ids``.

    A background thread reads up to ``prefetch`` batches ahead (pinned memory on CUDA, so the
    host-to-device copy overlaps compute).
    """
    ids = np.asarray(ids, dtype=np.int64)
    return iterate_chunks(cache, [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)],
                          device, prefetch)


def even_chunks(ids: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``ids`` into ceil(n / batch_size) batches of near-equal size.

    Training with a small labeled set must not end an epoch on a batch of 1 or 2: BatchNorm
    statistics of such a batch are degenerate and corrupt the running averages used at
    inference (features then blow up by orders of magnitude). 10 labels at batch 8 -> 5 + 5.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n_batches = max(1, -(-len(ids) // batch_size))
    return [chunk for chunk in np.array_split(ids, n_batches) if len(chunk)]


def iterate_chunks(cache: CachedImages, slices: list[np.ndarray], device: torch.device,
                   prefetch: int = 3) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Like :func:`iterate_batches` for explicit batches of ids."""
    pin = device.type == "cuda"
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    sentinel = object()

    def producer() -> None:
        try:
            for chunk in slices:
                if stop.is_set():
                    return
                tensor = torch.from_numpy(cache.read(chunk))
                if pin:
                    tensor = tensor.pin_memory()
                q.put((chunk, tensor))
        except BaseException as exc:  # hand the error to the consumer thread
            q.put(exc)
            return
        q.put(sentinel)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is sentinel:
                break
            if isinstance(item, BaseException):
                raise item
            chunk, tensor = item
            yield chunk, tensor.to(device, non_blocking=pin)
    finally:
        stop.set()
        # Drain so the producer can finish its put() and exit.
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def epoch_order(ids: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``ids`` for one epoch: a pure function of (seed, epoch), so a
    resumed run and every DDP rank see the same order without saving RNG state."""
    return np.random.default_rng([seed, epoch]).permutation(np.asarray(ids, dtype=np.int64))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error, and so
    is ``cuda:N`` for a GPU that is not there."""
    from alft_cli.errors import OptionError

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name[len("cuda:"):] if ":" in name else None
        if index_text is not None and not index_text.isdigit():
            raise OptionError(f"--device {name!r}: use cuda or cuda:N with N a GPU number")
        if not torch.cuda.is_available():
            raise OptionError(f"--device {name}: no CUDA GPU is available (use --device cpu)")
        count = torch.cuda.device_count()
        if index_text is not None and int(index_text) >= count:
            raise OptionError(f"--device {name}: this machine has {count} GPU"
                              f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise OptionError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
