"""Multi-band rasters (GeoTIFF, JPEG 2000) read with rasterio: layouts, bands, nodata, scaling.

Remote-sensing archives hold more than three bands and 16-bit (or float) values; Pillow reads
neither. This module reads them with rasterio (GDAL), the field's reader, and turns each sample
into the ``(C, S, S)`` float32 array, values 0..255, that alft's models take:

1. **Read**, decimated to ``S x S`` by GDAL itself (``DatasetReader.read(indexes,
   out_shape=(C, S, S), resampling=Resampling.bilinear, out_dtype="float32")``): large
   rasters are never decoded whole and GDAL uses the file's overviews when it has them.
   Two archive layouts (:data:`LAYOUTS`):

   - ``file``: one multi-band file per sample; the key is the file's path;
   - ``band-folder``: one folder per sample holding one single-band file per band, named as
     in BigEarthNet v1/v2 (``<patch>_B01.tif ... <patch>_B12.tif, <patch>_B8A.tif``); bands of
     different resolutions (10/20/60 m: 120/60/20 px) are each read onto the same ``S x S``
     grid with the same bilinear resampling; the key is the folder's path.
2. **Mask**: a pixel is masked when it equals the nodata value (``--nodata`` or, without it,
   the file's own) or is not finite (NaN, +-inf). A sample whose pixels are all masked is
   skipped with that reason.
3. **Scale**, per band, with one rule for the whole archive fixed at init-pool (never per
   image: a dark water scene must stay darker than a bright desert): ``v = clip((x - lo) /
   (hi - lo), 0, 1) * 255`` with per-band ``lo, hi`` from :data:`SCALES` (``reflectance``:
   0 and 10000, the Sentinel-2 L2A digital numbers of reflectance 0 and 1; ``percentile``:
   the 2nd and 98th percentiles of each band on a seeded sample of the archive; ``none``:
   0 and 255, 8-bit data as it is). Masked pixels are then set to 0.

The ONNX metadata written by ``alft export`` names every one of these choices, so a plain
rasterio + numpy script reproduces the model's input exactly (see :func:`model_input`).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from alft_cli.config import RasterConfig
from alft_cli.errors import ArchiveError, OptionError

#: Files read with rasterio (JPEG and PNG stay with Pillow unless the archive is multi-band).
RASTER_EXTENSIONS = (".tif", ".tiff", ".jp2")
LAYOUTS = ("auto", "file", "band-folder")
SCALES = ("auto", "reflectance", "percentile", "none")
DTYPES = ("uint8", "uint16", "int16", "uint32", "float32")
#: Sentinel-2 band order (by wavelength, as in the L1C/L2A products): the documented order of
#: a band-folder archive's bands.
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12")
#: Digital number of reflectance 1.0 in Sentinel-2 L2A products (and in BigEarthNet).
REFLECTANCE_DN = 10000.0
PERCENTILES = (2.0, 98.0)
#: Samples the percentile scaling is computed on (seeded), and pixels kept per sample.
PERCENTILE_SAMPLES = 256
PERCENTILE_PIXELS = 2048
RESAMPLING = "bilinear"
#: Band-folder members that are not bands and not to be reported as unusable files.
_SIDECARS = re.compile(r"(_labels_metadata\.json|\.aux\.xml|\.ovr|\.msk|\.tfw|\.prj|"
                       r"\.json|\.xml|\.md5)$", re.IGNORECASE)
_BAND_FILE = re.compile(r"^(?P<prefix>.+)_(?P<band>B(?:0[1-9]|1[0-2]|8A))\.(?:tif|tiff|jp2)$",
                        re.IGNORECASE)
# Header reads (band count, dtype, names) are cheap: a handful spread over the archive decides
# its layout and bands; every sample is still checked against them when it is decoded.
_PROBE_SAMPLES = 16


class RasterError(Exception):
    """A sample cannot be used; the message says why (one line)."""


@dataclass(frozen=True)
class Sample:
    """One sample's files, relative to the archive root.

    ``files`` maps band name -> file for a band folder; a single-file sample has one entry
    under the key ``""``.
    """

    key: str
    files: dict[str, str]


@dataclass(frozen=True)
class RasterScan:
    """The samples of an archive in one layout, and what was found but is unusable."""

    layout: str
    samples: list[Sample]
    skipped: list[tuple[str, str]]


@dataclass(frozen=True)
class Probe:
    """What the headers of a few samples say about the archive."""

    count: int                  # bands per sample
    dtype: str
    names: list[str]            # band names in the archive's order
    nodata: float | None        # the files' own nodata value (first probed file)
    colors: list[str]           # GDAL colour interpretation per band (red, green, ...)


# --------------------------------------------------------------------------------------------
# listing
# --------------------------------------------------------------------------------------------
def band_of(name: str) -> tuple[str, str] | None:
    """``(prefix, band)`` of a BigEarthNet-style band file name, e.g. ``P_B8A.tif`` ->
    ``("P", "B8A")``; None for other names."""
    match = _BAND_FILE.match(name)
    if match is None:
        return None
    return match.group("prefix"), match.group("band").upper()


def group_layout(keys: Sequence[str], skipped: Sequence[tuple[str, str]], layout: str = "auto"
                 ) -> RasterScan:
    """Sort the files of an archive listing into samples of one layout.

    A folder holding two or more band files (``<patch>_Bxx.tif``) is a band folder. ``auto``
    picks ``band-folder`` when there are band folders and ``file`` otherwise; an archive with
    both band folders and other image files is refused (mixed layouts), since each would be
    read differently. Forcing ``file`` makes every file a sample; forcing ``band-folder``
    lists the other image files as skipped.

    Args:
        keys: image files relative to the archive (as :func:`alft_cli.images.scan_folder`
            lists them), sorted.
        skipped: what that listing could not use, ``(key, reason)``.
        layout: ``auto``, ``file`` or ``band-folder``.

    Raises:
        OptionError: unknown layout.
        ArchiveError: mixed layouts under ``auto``, or no band folder under ``band-folder``.
    """
    if layout not in LAYOUTS:
        raise OptionError(f"--layout {layout!r}: use {', '.join(LAYOUTS)}")
    folders: dict[str, list[tuple[str, str, str]]] = {}
    loose: list[str] = []
    for key in keys:
        path = PurePosixPath(key)
        parsed = band_of(path.name)
        if parsed is None:
            loose.append(key)
        else:
            folders.setdefault(str(path.parent), []).append((key, *parsed))
    band_dirs = {d: files for d, files in folders.items() if len(files) >= 2}
    for files in (f for d, f in folders.items() if d not in band_dirs):
        loose += [key for key, _, _ in files]
    loose.sort()
    if layout == "auto":
        if band_dirs and loose:
            some_dir = next(iter(sorted(band_dirs)))
            raise ArchiveError(
                f"the archive mixes band folders (e.g. {some_dir}/) and single image files "
                f"(e.g. {loose[0]}); force one layout with --layout band-folder or --layout "
                f"file, or split the archive")
        layout = "band-folder" if band_dirs else "file"
    if layout == "file":
        samples = [Sample(k, {"": k}) for k in keys]
        return RasterScan("file", samples, list(skipped))
    if not band_dirs:
        raise ArchiveError("--layout band-folder: no folder holds band files named like "
                           "<patch>_B01.tif ... <patch>_B12.tif")
    out_skipped = [(k, r) for k, r in skipped
                   if not (_SIDECARS.search(k) and str(PurePosixPath(k).parent) in band_dirs)]
    out_skipped += [(k, "not in a band folder (--layout band-folder)") for k in loose]
    samples = []
    for folder in sorted(band_dirs):
        files: dict[str, str] = {}
        problem = None
        prefixes = sorted({prefix for _, prefix, _ in band_dirs[folder]})
        if len(prefixes) > 1:
            problem = f"band files of different patches ({', '.join(prefixes[:3])})"
        for key, _, band in band_dirs[folder]:
            if band in files and problem is None:
                problem = (f"duplicate band {band} ({PurePosixPath(files[band]).name}, "
                           f"{PurePosixPath(key).name})")
            files.setdefault(band, key)
        key = "." if folder in ("", ".") else folder
        if problem:
            out_skipped.append((key + "/", problem))
        else:
            samples.append(Sample(key, dict(sorted(files.items(), key=_band_sort))))
    return RasterScan("band-folder", samples, sorted(out_skipped))


def sample_for(root: Path, key: str, layout: str) -> Sample:
    """The :class:`Sample` of an indexed key (a file, or a band folder listed again)."""
    if layout == "file":
        return Sample(key, {"": key})
    folder = root / key
    files: dict[str, str] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        names = []
    for name in names:
        parsed = band_of(name)
        if parsed is not None:
            files.setdefault(parsed[1], f"{key}/{name}" if key != "." else name)
    return Sample(key, dict(sorted(files.items(), key=_band_sort)))


def _band_sort(item: tuple[str, str]) -> int:
    return S2_BANDS.index(item[0]) if item[0] in S2_BANDS else len(S2_BANDS)


def archive_band_names(samples: Sequence[Sample]) -> list[str]:
    """The bands of a band-folder archive: the band set most patches have, in Sentinel-2
    order (a patch missing one of them is skipped when decoded)."""
    sets = Counter(tuple(s.files) for s in samples)
    common = max(sets.items(), key=lambda kv: (kv[1], len(kv[0])))[0]
    return sorted(common, key=lambda b: _band_sort((b, "")))


# --------------------------------------------------------------------------------------------
# probing the archive and resolving the options
# --------------------------------------------------------------------------------------------
def probe(root: Path, scan: RasterScan) -> Probe:
    """Read the headers of up to 16 samples spread over the archive.

    Raises:
        ArchiveError: none of them is a readable raster, or their data type is not one alft
            reads.
    """
    rasterio = _rasterio()
    n = len(scan.samples)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(n, _PROBE_SAMPLES))}) if n else []
    found: list[tuple[str, Probe]] = []
    problems: list[str] = []
    for i in picks:
        sample = scan.samples[i]
        try:
            if scan.layout == "file":
                with _open(rasterio, root / sample.files[""]) as src:
                    names = _file_band_names(src)
                    info = Probe(src.count, src.dtypes[0], names, src.nodata,
                                 [c.name for c in src.colorinterp])
            else:
                names = list(sample.files)
                first = sample.files[names[0]]
                with _open(rasterio, root / first) as src:
                    info = Probe(len(names), src.dtypes[0], names, src.nodata,
                                 ["undefined"] * len(names))
        except RasterError as exc:
            problems.append(f"{sample.key}: {exc}")
            continue
        found.append((sample.key, info))
    if not found:
        detail = f" (e.g. {problems[0]})" if problems else ""
        raise ArchiveError(f"no readable raster among the {len(picks)} files probed{detail}")
    # The archive's band count and data type are those most probed files have; a file that
    # differs is skipped with its reason when it is read, like any other unusable file.
    common = Counter((info.count, info.dtype) for _, info in found).most_common(1)[0][0]
    key0, first = next((k, i) for k, i in found if (i.count, i.dtype) == common)
    if scan.layout != "file":
        first = Probe(first.count, first.dtype, archive_band_names(scan.samples), first.nodata,
                      first.colors)
    if first.dtype not in DTYPES:
        raise ArchiveError(f"{key0}: data type {first.dtype} is not supported "
                           f"(alft reads {', '.join(DTYPES)})")
    return first


def _file_band_names(src: object) -> list[str]:
    """Band names of a multi-band file: its band descriptions when every band has a distinct
    one (e.g. ``B04``); else its colour interpretation when that names every band distinctly
    (``red``, ``green``, ``blue``, ...); else ``1`` ... ``n``."""
    for names in ([str(d).strip() if d else "" for d in src.descriptions],  # type: ignore[attr-defined]
                  [c.name for c in src.colorinterp]):  # type: ignore[attr-defined]
        usable = all(n and n not in ("undefined", "gray") for n in names)
        if usable and len({n.lower() for n in names}) == len(names):
            return names
    return [str(i + 1) for i in range(src.count)]  # type: ignore[attr-defined]


def wants_rasterio(scan_keys: Sequence[str], layout: str, options_given: bool,
                   root: Path) -> bool:
    """Whether an archive needs the raster path (rasterio, archive-wide scaling) rather than
    the Pillow path that 8-bit RGB archives have always taken (kept for them unchanged).

    The raster path is taken for band folders, JPEG 2000, any raster option, and for an
    archive of TIFFs only (no JPEG/PNG) whose TIFFs are not 8-bit or have other than 1 or 3
    bands (a few spread over the archive are looked at). An archive that mixes JPEG/PNG with
    odd TIFFs stays on the Pillow path, where such a file gets the per-image stretch it always
    got; ``--scale`` or ``--bands`` moves it to the raster path.
    """
    if layout == "band-folder" or options_given:
        return True
    if any(k.lower().endswith(".jp2") for k in scan_keys):
        return True
    if any(k.lower().endswith((".png", ".jpg", ".jpeg")) for k in scan_keys):
        return False
    tiffs = [k for k in scan_keys if k.lower().endswith((".tif", ".tiff"))]
    if not tiffs:
        return False
    rasterio = _rasterio()
    picks = sorted({int(i) for i in np.linspace(0, len(tiffs) - 1,
                                                min(len(tiffs), _PROBE_SAMPLES))})
    for i in picks:
        try:
            with _open(rasterio, root / tiffs[i]) as src:
                if src.count not in (1, 3) or src.dtypes[0] != "uint8":
                    return True
        except RasterError:
            continue
    return False


def resolve_bands(names: Sequence[str], wanted: str | Sequence[str] | None) -> list[str]:
    """The selected bands, in the given order: names (case-insensitive; BigEarthNet suffixes
    or band descriptions) or 1-based indexes. None or empty: all bands in archive order.

    Raises:
        OptionError: a band that the archive does not have, or one given twice.
    """
    if wanted is None or (isinstance(wanted, str) and not wanted.strip()):
        return list(names)
    parts = [p.strip() for p in (wanted.split(",") if isinstance(wanted, str) else wanted)]
    lookup = {n.lower(): n for n in names}
    chosen: list[str] = []
    for part in parts:
        if not part:
            raise OptionError("--bands: empty band name")
        name = lookup.get(part.lower())
        if name is None and part.isdigit():
            index = int(part)
            if not 1 <= index <= len(names):
                raise OptionError(f"--bands: band index {index} is out of range (the archive "
                                  f"has {len(names)} bands: 1..{len(names)})")
            name = names[index - 1]
        if name is None:
            raise OptionError(f"--bands: band {part!r} not found; the archive's bands are "
                              f"{', '.join(names)} (or 1-based indexes)")
        if name in chosen:
            raise OptionError(f"--bands: band {name} is given twice")
        chosen.append(name)
    return chosen


def resolve_scale(scale: str | None, dtype: str) -> str:
    """The scaling rule: ``auto`` is ``none`` for 8-bit data and ``percentile`` otherwise.

    Raises:
        OptionError: unknown rule, or ``none`` for data that is not 8-bit.
    """
    scale = (scale or "auto").lower()
    if scale not in SCALES:
        raise OptionError(f"--scale {scale!r}: use {', '.join(SCALES)}")
    if scale == "auto":
        return "none" if dtype == "uint8" else "percentile"
    if scale == "none" and dtype != "uint8":
        raise OptionError(f"--scale none keeps raw values and is for 8-bit data; this archive "
                          f"is {dtype}: use --scale reflectance or percentile")
    return scale


def check_nodata(nodata: float | None) -> float | None:
    """``--nodata``: a finite number (NaN is always masked anyway)."""
    if nodata is None:
        return None
    if not math.isfinite(float(nodata)):
        raise OptionError("--nodata must be a finite number (NaN and inf are always masked)")
    return float(nodata)


def fixed_range(scale: str, n_bands: int) -> tuple[list[float], list[float]] | None:
    """Per-band ``(lo, hi)`` of the rules that need no statistics; None for percentile."""
    if scale == "reflectance":
        return [0.0] * n_bands, [REFLECTANCE_DN] * n_bands
    if scale == "none":
        return [0.0] * n_bands, [255.0] * n_bands
    return None


# --------------------------------------------------------------------------------------------
# reading one sample
# --------------------------------------------------------------------------------------------
def _rasterio() -> object:
    import warnings

    import rasterio  # imported here: GDAL takes a moment to load and JPEG archives never need it
    from rasterio.errors import NotGeoreferencedWarning

    # Plain TIFFs and PNGs have no georeference; alft does not need one. A process-wide filter
    # for this category only (catch_warnings is not thread-safe and reads run in threads),
    # added when missing (adding it again on every read would invalidate the warnings
    # caches each time).
    if not any(f[2] is NotGeoreferencedWarning for f in warnings.filters):
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    return rasterio


class _open:  # noqa: N801 - a context manager used like open()
    """``rasterio.open`` with its errors turned into one-line :class:`RasterError`."""

    def __init__(self, rasterio: object, path: Path) -> None:
        self.rasterio = rasterio
        self.path = path
        self.src: object = None

    def __enter__(self) -> object:
        rasterio = self.rasterio
        try:
            self.src = rasterio.open(self.path)  # type: ignore[attr-defined]
        except PermissionError as exc:
            raise RasterError("permission denied") from exc
        except FileNotFoundError as exc:
            raise RasterError("not found") from exc
        except Exception as exc:  # rasterio's RasterioIOError and GDAL's CPLE_* errors
            # Why it failed is looked at only when it did (a stat per file costs at scale).
            try:
                empty = self.path.stat().st_size == 0
            except OSError:
                empty = False
            if empty:
                raise RasterError("empty file (0 bytes)") from exc
            if not self.path.exists():
                raise RasterError("not found") from exc
            raise RasterError(f"not a readable raster ({_short(exc)})") from exc
        return self.src

    def __exit__(self, *exc: object) -> None:
        if self.src is not None:
            self.src.close()  # type: ignore[attr-defined]


def read_sample(root: Path, sample: Sample, spec: RasterConfig, size: int
                ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read the selected bands of one sample onto an ``size x size`` grid.

    Returns:
        ``(raw, mask, (width, height))``: raw values ``(C, S, S)`` float32 (digital numbers,
        unscaled), the mask of unusable pixels (nodata, NaN, inf) of the same shape, and the
        source's size (the largest band's, for a band folder).

    Raises:
        RasterError: unreadable, another band count or data type than the archive, a band
            missing, or every pixel masked.
    """
    rasterio = _rasterio()
    from rasterio.enums import Resampling

    resampling = Resampling[spec.resampling]
    if spec.layout == "file":
        with _open(rasterio, root / sample.files[""]) as src:
            _check_header(src, spec.count, spec.dtype)
            raw = _read(src, list(spec.band_indexes), size, resampling)
            nodata = spec.nodata if spec.nodata is not None else src.nodata
            width, height = src.width, src.height
        mask = _mask(raw, nodata, spec.dtype)
    else:
        missing = [b for b in spec.bands if b not in sample.files]
        if missing:
            raise RasterError(f"missing band{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(missing)}")
        raw = np.empty((len(spec.bands), size, size), dtype=np.float32)
        mask = np.empty(raw.shape, dtype=bool)
        width = height = 0
        for i, band in enumerate(spec.bands):
            with _open(rasterio, root / sample.files[band]) as src:
                try:
                    _check_header(src, 1, spec.dtype)
                except RasterError as exc:
                    raise RasterError(f"{PurePosixPath(sample.files[band]).name}: {exc}") from exc
                raw[i] = _read(src, [1], size, resampling)[0]
                nodata = spec.nodata if spec.nodata is not None else src.nodata
                width, height = max(width, src.width), max(height, src.height)
            mask[i] = _mask(raw[i], nodata, spec.dtype)
    if mask.all():
        raise RasterError("every pixel is nodata, NaN or inf")
    return raw, mask, (width, height)


def _check_header(src: object, count: int, dtype: str) -> None:
    if src.count != count:  # type: ignore[attr-defined]
        raise RasterError(f"has {src.count} bands, the archive's files have {count}")  # type: ignore[attr-defined]
    if src.dtypes[0] != dtype:  # type: ignore[attr-defined]
        raise RasterError(f"is {src.dtypes[0]}, the archive is {dtype} (one scaling serves "  # type: ignore[attr-defined]
                          "the whole archive)")


def _read(src: object, indexes: list[int], size: int, resampling: object) -> np.ndarray:
    try:
        return src.read(indexes, out_shape=(len(indexes), size, size),  # type: ignore[attr-defined]
                        resampling=resampling, out_dtype="float32")
    except Exception as exc:  # a corrupt block surfaces only when read
        raise RasterError(f"corrupt or truncated raster ({_short(exc)})") from exc


def _mask(raw: np.ndarray, nodata: float | None, dtype: str = "float32") -> np.ndarray:
    # Integer data read (and resampled) as float32 is always finite: the NaN test is needed
    # only for float sources.
    mask = ~np.isfinite(raw) if dtype.startswith("float") else np.zeros(raw.shape, bool)
    if nodata is not None and math.isfinite(nodata):
        mask |= raw == np.float32(nodata)
    return mask


def scale_bands(raw: np.ndarray, mask: np.ndarray, lo: Sequence[float],
                hi: Sequence[float]) -> np.ndarray:
    """``clip((raw - lo) / (hi - lo), 0, 1) * 255`` per band in float32; masked pixels -> 0.

    Args:
        raw: ``(C, S, S)`` float32 digital numbers.
        mask: unusable pixels, same shape.
        lo: per-band value mapped to 0.
        hi: per-band value mapped to 255.

    Returns:
        ``(C, S, S)`` float32 in 0..255: the model's input.
    """
    lo_a = np.asarray(lo, dtype=np.float32).reshape(-1, 1, 1)
    span = np.asarray(hi, dtype=np.float32).reshape(-1, 1, 1) - lo_a
    # The formula above step by step, in place (one array, no temporaries): same float32
    # operations in the same order, so the same values as the one-line expression.
    out = np.subtract(raw, lo_a, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        out /= span
    np.clip(out, np.float32(0), np.float32(1), out=out)
    out *= np.float32(255)
    out[mask] = 0.0
    return out


def model_input(root: Path, sample: Sample, spec: RasterConfig, size: int) -> np.ndarray:
    """Read and scale one sample: the ``(C, S, S)`` float32 array the model takes."""
    raw, mask, _ = read_sample(root, sample, spec, size)
    return scale_bands(raw, mask, spec.scale_lo, spec.scale_hi)


# --------------------------------------------------------------------------------------------
# the archive-wide percentile scaling
# --------------------------------------------------------------------------------------------
def percentile_sample(n: int, seed: int, k: int = PERCENTILE_SAMPLES) -> np.ndarray:
    """Which samples (sorted positions) the percentile scaling is computed on."""
    rng = np.random.default_rng([seed, 14])
    return np.sort(rng.choice(n, size=min(n, k), replace=False))


def percentile_range(reads: Iterable[tuple[np.ndarray, np.ndarray]], seed: int,
                     q: tuple[float, float] = PERCENTILES
                     ) -> tuple[list[float], list[float], int]:
    """Per-band ``q`` percentiles of the unmasked pixels of the given samples.

    At most :data:`PERCENTILE_PIXELS` pixels (seeded) of each sample enter, so memory stays
    small and every sample weighs about the same. A band with no spread gets ``hi = lo + 1``.

    Args:
        reads: ``(raw, mask)`` pairs as :func:`read_sample` returns them.
        seed: pixel subsampling seed.
        q: the two percentiles.

    Returns:
        ``(lo, hi, samples_used)``.

    Raises:
        ArchiveError: no usable pixel at all in a band.
    """
    rng = np.random.default_rng([seed, 98])
    per_band: list[list[np.ndarray]] = []
    used = 0
    for raw, mask in reads:
        used += 1
        if not per_band:
            per_band = [[] for _ in range(raw.shape[0])]
        flat = raw.reshape(raw.shape[0], -1)
        valid = ~mask.reshape(mask.shape[0], -1)
        for b in range(raw.shape[0]):
            values = flat[b][valid[b]]
            if values.size > PERCENTILE_PIXELS:
                # With replacement: as good for a percentile, and far cheaper than a
                # permutation of every pixel of every band of every sample.
                values = values[rng.integers(0, values.size, PERCENTILE_PIXELS)]
            per_band[b].append(values)
    lo: list[float] = []
    hi: list[float] = []
    for b, parts in enumerate(per_band):
        values = np.concatenate(parts) if parts else np.empty(0, np.float32)
        if values.size == 0:
            raise ArchiveError(f"band {b + 1} has no valid pixel in the {used} samples the "
                               "percentile scaling looked at (all nodata?)")
        low, high = (float(v) for v in np.percentile(values, q))
        if not high > low:
            high = low + 1.0
        lo.append(float(low))
        hi.append(float(high))
    return lo, hi, used


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
