"""Index a multi-band archive: settle its raster settings, scale it, fill the float16 cache.

:mod:`alft_cli.rasters` reads one sample; this module does init-pool's part for a whole
archive: decide whether the archive needs the rasterio path at all (8-bit RGB archives keep
the Pillow path, unchanged), fix the layout, the bands and the archive-wide scaling (stored in
config.json as :class:`~alft_cli.config.RasterConfig`), then read every sample once into the
decode cache, accumulating the per-band normalization statistics on the scaled values.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alft_cli import rasters
from alft_cli.config import RasterConfig
from alft_cli.errors import ArchiveError, OptionError
from alft_cli.images import create_cache
from alft_cli.progress import reporter
from alft_cli.store import SampleRecord

CACHE_DTYPE = np.float16
#: The most bands a model takes (``ProjectConfig.in_channels``' limit).
MAX_BANDS = 64


@dataclass(frozen=True)
class RasterOptions:
    """init-pool's raster options as given (None / "auto": decide from the archive)."""

    layout: str = "auto"
    bands: str | Sequence[str] | None = None
    nodata: float | None = None
    scale: str | None = None

    def given(self) -> bool:
        """Whether any option asks for the raster path explicitly."""
        return (self.layout == "band-folder" or self.bands is not None
                or self.nodata is not None or (self.scale or "auto") != "auto")


@dataclass
class RasterPlan:
    """An archive to index on the raster path: its samples and its settings but the scaling
    range (which percentile scaling computes from the data)."""

    scan: rasters.RasterScan
    probe: rasters.Probe
    bands: list[str]
    scale: str
    nodata: float | None


def plan(root: Path, keys: Sequence[str], skipped: Sequence[tuple[str, str]],
         options: RasterOptions, in_channels: int | None = None) -> RasterPlan | None:
    """Decide how an archive is read; None means the Pillow path for 8-bit RGB archives.

    Args:
        root: the archive root.
        keys: its image files (relative), sorted, as the listing found them.
        skipped: what the listing could not use.
        options: the raster options given.
        in_channels: ``--in-channels`` if given; on the raster path it must equal the number
            of selected bands (it follows from ``--bands``).

    Raises:
        OptionError: a bad option (unknown band or layout, ``--scale none`` on 16-bit data,
            an ``--in-channels`` that contradicts the bands).
        ArchiveError: mixed layouts, no band folder where one was asked for, files that
            disagree on band count or data type, nothing readable.
    """
    if options.layout not in rasters.LAYOUTS:
        raise OptionError(f"--layout {options.layout!r}: use {', '.join(rasters.LAYOUTS)}")
    scan = rasters.group_layout(keys, skipped, options.layout)
    if scan.layout == "file" and not rasters.wants_rasterio(keys, "file", options.given(), root):
        return None
    if not scan.samples:
        raise ArchiveError(f"{root}: no samples found in the {scan.layout} layout")
    probe = rasters.probe(root, scan)
    bands = rasters.resolve_bands(probe.names, options.bands)
    if len(bands) > MAX_BANDS:
        raise OptionError(f"{len(bands)} bands selected; alft models take at most {MAX_BANDS}: "
                          "choose some with --bands")
    if in_channels is not None and in_channels != len(bands):
        raise OptionError(f"--in-channels {in_channels} does not match the {len(bands)} bands "
                          f"selected ({', '.join(bands)}); drop --in-channels, it follows "
                          "from --bands")
    scale = rasters.resolve_scale(options.scale, probe.dtype)
    return RasterPlan(scan, probe, bands, scale, rasters.check_nodata(options.nodata))


def spec_of(plan_: RasterPlan, lo: Sequence[float], hi: Sequence[float],
            samples_used: int = 0) -> RasterConfig:
    """The :class:`RasterConfig` of a plan once its scaling range is known."""
    p = plan_.probe
    return RasterConfig(layout=plan_.scan.layout, band_names=list(p.names),
                        bands=list(plan_.bands),
                        band_indexes=[p.names.index(b) + 1 for b in plan_.bands],
                        count=p.count, dtype=p.dtype, nodata=plan_.nodata, scale=plan_.scale,
                        scale_lo=[float(v) for v in lo], scale_hi=[float(v) for v in hi],
                        resampling=rasters.RESAMPLING, percentile_samples=samples_used)


@dataclass(frozen=True)
class RasterItem:
    """One sample read for the cache (or why not)."""

    key: str
    raw: np.ndarray | None
    mask: np.ndarray | None
    width: int = 0
    height: int = 0
    reason: str | None = None
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""


def sample_files(sample: rasters.Sample, spec: RasterConfig) -> list[str]:
    """The files a sample is read from: its one file, or its selected bands' files."""
    if spec.layout == "file":
        return list(sample.files.values())
    return [sample.files[b] for b in spec.bands if b in sample.files]


def fingerprint(root: Path, files: Sequence[str], hash_files: bool = True
                ) -> tuple[int, int, str]:
    """``(size, mtime_ns, sha256)`` of a sample: of its file, or for a band folder the sum
    of the sizes, the latest mtime and the SHA-256 of the band files' SHA-256s in order.

    Raises:
        OSError: a file cannot be read.
    """
    import hashlib

    from alft_cli.images import file_sha256

    stats = [(root / f).stat() for f in files]
    digest = ""
    if hash_files:
        digests = [file_sha256(root / f) for f in files]
        digest = digests[0] if len(digests) == 1 else hashlib.sha256(
            "".join(digests).encode()).hexdigest()
    return sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats), digest


def read_many(root: Path, samples: Sequence[rasters.Sample], spec: RasterConfig, size: int,
              workers: int | None = None, hash_files: bool = True) -> Iterator[RasterItem]:
    """Read ``samples`` in threads (GDAL releases the GIL while it reads), in input order.

    At most ``4 * workers`` results are in flight. File size and mtime of a band folder are
    the sum and the latest of its band files'; its hash covers the band files in band order.
    """
    workers = workers or max(1, min(8, os.cpu_count() or 1))

    def work(sample: rasters.Sample) -> RasterItem:
        try:
            raw, mask, (w, h) = rasters.read_sample(root, sample, spec, size)
            n_bytes, mtime, digest = fingerprint(root, sample_files(sample, spec), hash_files)
        except rasters.RasterError as exc:
            return RasterItem(sample.key, None, None, reason=str(exc))
        except PermissionError:
            return RasterItem(sample.key, None, None, reason="permission denied")
        except OSError as exc:
            return RasterItem(sample.key, None, None,
                              reason=f"cannot read ({exc.strerror or exc})")
        return RasterItem(sample.key, raw, mask, w, h, None, n_bytes, mtime, digest)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: list = []
        for sample in samples:
            window.append(pool.submit(work, sample))
            if len(window) >= 4 * workers:
                yield window.pop(0).result()
        for future in window:
            yield future.result()


@dataclass
class RasterIndex:
    """What indexing a raster archive produced."""

    records: list[tuple[int, SampleRecord]]
    skipped: list[tuple[str, str]]
    mean: list[float]
    std: list[float]
    spec: RasterConfig


def index(plan_: RasterPlan, root: Path, cache_path: Path, size: int, seed: int,
          workers: int | None = None) -> RasterIndex:
    """Read every sample once into a float16 ``(N, C, S, S)`` cache of scaled 0..255 values.

    With percentile scaling, a seeded sample of the archive is read first to fix the range;
    those reads are parked in a temporary file and not read again.

    Raises:
        ArchiveError: no sample could be read, or the percentile sample has a band without
            any valid pixel.
    """
    samples = plan_.scan.samples
    n = len(samples)
    fixed = rasters.fixed_range(plan_.scale, len(plan_.bands))
    used = 0
    kept: _Kept | None = None
    if fixed is None:
        # The percentile sample is read first (the range must be known before anything can be
        # scaled); its raw reads are parked in a temporary file next to the cache, so every
        # file of the archive is still read exactly once.
        reader = spec_of(plan_, [0.0] * len(plan_.bands), [1.0] * len(plan_.bands))
        picks = rasters.percentile_sample(n, seed)
        kept = _Kept(cache_path.parent / ".percentile-sample.npy", len(picks),
                     len(plan_.bands), size)
        with reporter().task("sampling for the percentile scaling", total=len(picks)) as task:
            for pos, item in zip(picks, read_many(
                    root, [samples[int(i)] for i in picks], reader, size, workers)):
                task.advance(1)
                kept.add(int(pos), item)
        reads = kept.reads()
        if not reads:
            reasons = [i.reason for i in kept.items.values() if i.reason]
            kept.close()
            raise ArchiveError(f"{root}: none of the {len(picks)} samples read for the "
                               f"percentile scaling is usable" + (f" ({reasons[0]})"
                                                                  if reasons else ""))
        lo, hi, used = rasters.percentile_range(reads, seed)
        del reads
    else:
        lo, hi = fixed
    spec = spec_of(plan_, lo, hi, used)
    channels = len(spec.bands)
    cache = _CacheWriter(cache_path, n, channels, size)
    records: list[tuple[int, SampleRecord]] = []
    skipped = list(plan_.scan.skipped)
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    parked = kept.items if kept is not None else {}
    rest = read_many(root, [s for i, s in enumerate(samples) if i not in parked],
                             spec, size, workers)
    with reporter().task("decoding archive", total=n) as task:
        for row in range(n):
            item = kept.pop(row) if kept is not None and row in parked else next(rest)
            task.advance(1)
            if item.raw is None or item.mask is None:
                skipped.append((item.key, item.reason or "unreadable"))
                continue
            scaled = rasters.scale_bands(item.raw, item.mask, spec.scale_lo, spec.scale_hi)
            cache.write(row, scaled)
            # Per-sample sums in float32 (pairwise summation: accurate for one sample), the
            # running totals in float64.
            flat = scaled.reshape(channels, -1)
            total += flat.sum(1, dtype=np.float64)
            total_sq += np.einsum("ij,ij->i", flat, flat)
            records.append((row, SampleRecord(item.key, item.size, item.mtime_ns, item.sha256,
                                              item.width, item.height, None)))
    cache.close()
    if kept is not None:
        kept.close()
    if not records:
        first = skipped[0] if skipped else ("?", "unreadable")
        raise ArchiveError(f"{root}: none of the {n} samples could be read "
                           f"(e.g. {first[0]}: {first[1]})")
    n_pixels = len(records) * size * size
    mean = total / n_pixels
    std = np.sqrt(np.maximum(total_sq / n_pixels - mean ** 2, 1e-6))
    return RasterIndex(records, sorted(skipped), [float(m) for m in mean / 255.0],
                       [float(v) for v in std / 255.0], spec)


#: Parked percentile-sample reads stay in memory up to this size, else go to a temp file.
PARK_IN_MEMORY = 512 * 2**20


class _Kept:
    """Raw reads of the percentile sample, parked until the range is known: the arrays as
    read when they fit in :data:`PARK_IN_MEMORY` (no copy), else in a temporary file next to
    the cache."""

    def __init__(self, path: Path, k: int, channels: int, size: int) -> None:
        self.path = path
        self.mask_path = path.with_name(path.stem + "-mask.npy")
        shape = (max(k, 1), channels, size, size)
        self.raw: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        if np.prod(shape) * 5 > PARK_IN_MEMORY:
            self.raw = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                 shape=shape)
            self.mask = np.lib.format.open_memmap(self.mask_path, mode="w+", dtype=bool,
                                                  shape=shape)
        self.items: dict[int, RasterItem] = {}
        self.slot: dict[int, int] = {}

    def add(self, pos: int, item: RasterItem) -> None:
        if self.raw is not None and self.mask is not None and item.raw is not None \
                and item.mask is not None:
            slot = len(self.slot)
            self.raw[slot] = item.raw
            self.mask[slot] = item.mask
            self.slot[pos] = slot
            item = RasterItem(item.key, None, None, item.width, item.height, None,
                                      item.size, item.mtime_ns, item.sha256)
        self.items[pos] = item

    def reads(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.raw is not None and self.mask is not None:
            return [(self.raw[s], self.mask[s]) for s in self.slot.values()]
        return [(i.raw, i.mask) for i in self.items.values()
                if i.raw is not None and i.mask is not None]

    def pop(self, pos: int) -> RasterItem:
        item = self.items.pop(pos)
        slot = self.slot.get(pos)
        if slot is None or self.raw is None or self.mask is None:
            return item
        return RasterItem(item.key, self.raw[slot], self.mask[slot], item.width,
                                  item.height, None, item.size, item.mtime_ns, item.sha256)

    def close(self) -> None:
        self.raw = self.mask = None
        self.items.clear()
        self.path.unlink(missing_ok=True)
        self.mask_path.unlink(missing_ok=True)


class _CacheWriter:
    """Writes cache rows in order with plain file writes: faster than assigning into a fresh
    memory map (a page fault per 4 KiB), and rows never written stay zero."""

    def __init__(self, path: Path, n: int, channels: int, size: int) -> None:
        cache = create_cache(path, n, channels, size, CACHE_DTYPE)
        self.offset = cache.offset
        self.row_bytes = channels * size * size * np.dtype(CACHE_DTYPE).itemsize
        del cache
        self.handle = open(path, "r+b")  # noqa: SIM115 - closed in close()

    def write(self, row: int, values: np.ndarray) -> None:
        self.handle.seek(self.offset + row * self.row_bytes)
        values.astype(CACHE_DTYPE).tofile(self.handle)

    def close(self) -> None:
        self.handle.close()


def cache_bytes_per_sample(channels: int, size: int) -> int:
    """Bytes the decode cache holds per sample on the raster path (float16)."""
    return channels * size * size * np.dtype(CACHE_DTYPE).itemsize
