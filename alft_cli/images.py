"""Decode archive images into fixed-size arrays, and the project's decoded-image cache.

One function, :func:`load_image`, turns a JPEG, PNG or 8-bit TIFF into an ``(S, S, C)`` uint8
array; training, query scoring, export parity checks and ``alft tag`` all go through it, so a
model sees the same pixels wherever it runs. Multi-band and 16-bit rasters take the rasterio
path of :mod:`alft_cli.rasters` instead, with one scaling for the whole archive. Conversions
(documented in the ONNX metadata too, where a plain script can follow them exactly):

- the file is decoded at full resolution by Pillow (no reduced-scale JPEG decoding: libjpeg's
  DCT scaling gives other pixels than the resize below, and they differ between libjpeg
  builds, so a model deployed elsewhere would see other images than in training);
- grayscale / palette / CMYK / RGBA -> RGB (``Image.convert("RGB")``; alpha dropped, it
  carries no scene content);
- 16-bit integer and float images met on this path -> 8-bit by a per-image 0.5-99.5
  percentile stretch (archives of such images are indexed on the rasterio path, with an
  archive-wide scaling; this covers the odd file in an 8-bit archive);
- resize to ``S x S`` with ``Image.resize((S, S), Image.Resampling.BILINEAR)``, which
  antialiases when shrinking; aspect ratio is not kept (scenes are near-square tiles).

The cache (``cache/images.npy``) is a memory-mapped ``(N, C, S, S)`` array written once by
``init-pool``: uint8 for 8-bit archives (1 byte per band and pixel), float16 for archives
read with rasterio (2 bytes: the scaled 0..255 values with 11 significant bits, finer than
the radiometric noise of 12-bit sensors). Epochs read it instead of re-decoding, and only the
pages in use are in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from alft_cli.config import IMAGE_EXTENSIONS

# Refuse images above this many pixels: decoding one would need gigabytes. Tile them first.
MAX_PIXELS = 20_000 * 20_000
MIN_SIDE = 8
RESIZE_METHOD = (
    "decode at full resolution with Pillow (no JPEG draft/reduced-scale decoding), then "
    "Image.resize((S, S), Image.Resampling.BILINEAR) (antialiased when shrinking), aspect not "
    "kept")
CONVERSIONS = ("gray/palette/CMYK/RGBA->RGB with Image.convert('RGB'); 16-bit/float->8-bit "
               "by per-image 0.5-99.5 percentile stretch")

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Pillow warns (UserWarning) about the damage it works around in a file ("Corrupt EXIF data",
# "Truncated File Read", "Metadata Warning"). The decoded pixels or the skip reason already say
# what matters; the chatter on stderr reads like a crash. Set once, for Pillow's own modules
# only: warnings.catch_warnings() is not thread-safe and decoding runs in threads.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


NOT_AN_IMAGE = "not an image file"


class ImageDecodeError(Exception):
    """The file cannot be used as an image; the message says why (one line)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded, resized image and what had to be done to it."""

    array: np.ndarray  # (S, S, C) uint8
    width: int
    height: int
    note: str | None


def load_image(path: Path | str, size: int, channels: int = 3) -> Decoded:
    """Decode ``path`` and resize it to ``size x size`` with ``channels`` bands (uint8).

    Raises:
        ImageDecodeError: unreadable, corrupt, not an image, too small or too large.
    """
    try:
        with _open_refusing_bombs(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(f"too large ({width}x{height}); tile it first")
            if min(width, height) < MIN_SIDE:
                raise ImageDecodeError(f"too small ({width}x{height} < {MIN_SIDE} px)")
            # No img.draft() for JPEGs: decoding at a reduced scale would be faster on large
            # files, but its pixels differ from the documented resize (issue 15).
            img.load()
            array, note = _to_uint8_bands(img, channels)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"too large ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a readable image") from exc
    except PermissionError as exc:
        raise ImageDecodeError("permission denied") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image ({_short(exc)})") from exc
    return Decoded(_resize(array, size), width, height, note)


_OPEN_LOCK = threading.Lock()


def _open_refusing_bombs(path: Path | str) -> Image.Image:
    """``Image.open`` with Pillow's decompression-bomb warning (size above
    ``Image.MAX_IMAGE_PIXELS``) raised as an error instead of printed.

    Warning filters are process-wide and ``catch_warnings`` restores them on exit, so two
    threads doing this at once could switch the filter off under each other (the image would
    then be decoded after all). Opening reads only the header, so doing it one thread at a
    time costs nothing; decoding (``load``) stays parallel.
    """
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def _to_uint8_bands(img: Image.Image, channels: int) -> tuple[np.ndarray, str | None]:
    mode = img.mode
    note: str | None = None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") or mode.startswith("I;"):
        data = np.asarray(img, dtype=np.float64)
        array = _stretch(data)[..., None]
        note = f"{mode}->8-bit stretch"
    elif mode == "RGBA" and channels == 4:
        # A 4-band project (e.g. RGB + near-infrared stored as RGBA): keep every band.
        array = np.asarray(img)
    elif mode in ("1", "L", "LA", "P", "PA", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        target = "L" if mode in ("1", "L", "LA") and channels == 1 else "RGB"
        array = np.asarray(img.convert(target))
        if array.ndim == 2:
            array = array[..., None]
        note = f"{mode}->{target}"
    elif mode == "RGB":
        array = np.asarray(img)
    else:
        array = np.asarray(img.convert("RGB"))
        note = f"{mode}->RGB"
    if array.ndim == 2:
        array = array[..., None]
    bands = array.shape[2]
    if bands == channels:
        return np.ascontiguousarray(array, dtype=np.uint8), note
    if bands == 1:
        return np.repeat(array, channels, axis=2).astype(np.uint8), (note or "") + " gray->bands"
    if channels == 1:
        gray = np.asarray(Image.fromarray(array[..., :3].astype(np.uint8)).convert("L"))
        return gray[..., None], (note or "") + " ->gray"
    raise ImageDecodeError(f"has {bands} bands, the project expects {channels}")


def _stretch(data: np.ndarray) -> np.ndarray:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, dtype=np.uint8)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    # NaN (no data) -> the low end; +-inf -> the ends of the range, not an overflow warning.
    scaled = (np.nan_to_num(data, nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size and array.shape[1] == size:
        return array
    if array.shape[2] == 3:
        return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR))
    # Pillow has no multi-band image type beyond RGB(A); resize band by band.
    bands = [Image.fromarray(np.ascontiguousarray(array[..., c]))
             .resize((size, size), Image.Resampling.BILINEAR) for c in range(array.shape[2])]
    return np.stack([np.asarray(b) for b in bands], axis=2)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ScanResult:
    """What a walk of an archive found."""

    keys: list[str]                      # usable candidates, sorted
    skipped: list[tuple[str, str]]       # (key, reason) found but not indexable


def scan_folder(root: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> ScanResult:
    """List image files under ``root`` recursively as POSIX keys relative to ``root``.

    Symlinked directories are not descended (no loops); symlinked files are kept only when
    they resolve inside the archive. Names that differ only in case are kept once (the first
    in sorted order), since they would collide on case-insensitive file systems and in
    labeling tools. Everything found but not listed is reported in ``skipped`` with the reason
    (other file types, names that a label file cannot name, FIFOs and devices, links leaving
    the archive), so that nothing in an archive is left out silently.
    """
    root_resolved = root.resolve()
    keys: list[str] = []
    skipped: list[tuple[str, str]] = []

    def onerror(err: OSError) -> None:
        rel = _relative(Path(err.filename or root), root)
        skipped.append((rel, f"cannot list folder ({err.strerror or err})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        dirnames.sort()
        for name in dirnames:
            full = Path(dirpath, name)
            if full.is_symlink():
                skipped.append((_relative(full, root) + "/", "symlinked folder not followed"))
        # One relative folder per folder and one lstat per file: BigEarthNet has 7 million
        # files, and per-file Path objects and two stat calls made listing a visible share
        # of init-pool.
        rel_dir = _relative(Path(dirpath), root)
        prefix = "" if rel_dir in ("", ".") else rel_dir + "/"
        for name in sorted(filenames):
            full_name = os.path.join(dirpath, name)
            rel = prefix + name
            if not name.lower().endswith(extensions):
                suffix = Path(name).suffix.lower()
                skipped.append((rel, f"{NOT_AN_IMAGE} ({suffix or 'no extension'}; "
                                     f"alft reads {'/'.join(extensions)})"))
                continue
            problem = _name_problem(rel)
            if problem:
                skipped.append((rel, f"{problem}; rename the file"))
                continue
            try:
                mode = os.lstat(full_name).st_mode
            except OSError:
                skipped.append((rel, "cannot be read (vanished while listing?)"))
                continue
            if stat.S_ISLNK(mode):
                try:
                    target = Path(full_name).resolve(strict=True)
                except (OSError, RuntimeError):
                    skipped.append((rel, "broken or looping symlink"))
                    continue
                if not target.is_relative_to(root_resolved):
                    skipped.append((rel, "symlink points outside the archive"))
                    continue
                regular = target.is_file()
            else:
                regular = stat.S_ISREG(mode)
            if not regular:
                # A FIFO would block the decoder forever; devices and sockets are no images.
                skipped.append((rel, "not a regular file"))
                continue
            keys.append(rel)
    keys.sort()
    return _drop_case_duplicates(keys, [(_printable(k), reason) for k, reason in skipped])


def _name_problem(rel: str) -> str | None:
    """Why a file name could never be written to and read back from a label file, if so."""
    if not _is_utf8(rel):
        # The store, the CSV files and labeling tools all need text names.
        return "file name is not valid UTF-8"
    if "\\" in rel:
        return "file name contains '\\', which label files read as a folder separator"
    if _CONTROL.search(rel):
        return "file name contains control characters (newline, tab, ...)"
    if rel != rel.strip():
        return "file name starts with a space, which label files strip"
    return None


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _is_utf8(name: str) -> bool:
    # os.walk returns undecodable bytes of a file name as lone surrogates (PEP 383).
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    """``name`` with undecodable bytes shown as ``\\xff`` (storable, printable)."""
    if _is_utf8(name):
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan_manifest(manifest: Path, strict: bool) -> ScanResult:
    """The images a manifest CSV lists (``filename`` column, relative to its folder).

    ``strict`` (init-pool: an index must be exactly what was asked for): an empty, outside
    or '..' name, or a name listed twice, refuses the whole manifest, one line per row.
    Otherwise (tagging) such rows are skipped with a reason and duplicates are kept once.
    Files that do not exist are skipped with a reason either way.

    Raises:
        ArchiveError: unreadable manifest, no ``filename`` column, or (strict) bad rows.
    """
    import csv
    import io

    from alft_cli.errors import ArchiveError

    root = manifest.parent.resolve()
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{manifest}: cannot read manifest ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "filename" not in fields:
        raise ArchiveError(f"{manifest}: manifest needs a 'filename' column")
    column = (reader.fieldnames or [])[fields.index("filename")]
    keys: list[str] = []
    seen: set[str] = set()
    skipped: list[tuple[str, str]] = []
    problems: list[str] = []

    def bad(line: int, name: str, reason: str) -> None:
        if strict:
            problems.append(f"{manifest.name} row {line}: {reason}")
        elif name:
            skipped.append((name, reason))

    for line, row in enumerate(reader, start=2):
        name = (row.get(column) or "").strip().replace("\\", "/")
        if not name:
            bad(line, name, "empty filename")
            continue
        if Path(name).is_absolute():
            try:
                name = Path(name).resolve().relative_to(root).as_posix()
            except ValueError:
                bad(line, name, f"{name} is outside the manifest's folder {root}")
                continue
        name = name.removeprefix("./")
        if ".." in Path(name).parts:
            bad(line, name, f"'..' in {name}")
            continue
        if name in seen:
            if strict:
                problems.append(f"{manifest.name} row {line}: {name} is listed twice")
            continue
        seen.add(name)
        if not (root / name).is_file():
            skipped.append((name, "listed in the manifest but not found"))
            continue
        keys.append(name)
    if problems:
        raise ArchiveError(f"{manifest}: {len(problems)} bad rows; nothing indexed",
                           details=problems[:50])
    return _drop_case_duplicates(sorted(keys), skipped)


def _drop_case_duplicates(keys: list[str], skipped: list[tuple[str, str]]) -> ScanResult:
    seen: dict[str, str] = {}
    kept: list[str] = []
    for key in keys:
        folded = key.casefold()
        if folded in seen:
            skipped.append((key, f"name differs only in case from {seen[folded]}"))
            continue
        seen[folded] = key
        kept.append(key)
    return ScanResult(kept, sorted(skipped))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass(frozen=True)
class CacheItem:
    """Result of decoding one archive file for the cache."""

    key: str
    decoded: Decoded | None
    reason: str | None
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""


def decode_many(root: Path, keys: Iterable[str], size: int, channels: int,
                workers: int | None = None, hash_files: bool = True) -> Iterator[CacheItem]:
    """Decode ``keys`` (relative to ``root``) in parallel threads, yielding in input order.

    Pillow releases the GIL while decoding, so threads scale without pickling arrays.
    At most ``4 * workers`` results are in flight, which bounds memory for any archive size.
    """
    workers = workers or max(1, min(8, os.cpu_count() or 1))

    def work(key: str) -> CacheItem:
        path = root / key
        try:
            stat = path.stat()
            if stat.st_size == 0:
                return CacheItem(key, None, "empty file (0 bytes)")
            decoded = load_image(path, size, channels)
            digest = file_sha256(path) if hash_files else ""
        except ImageDecodeError as exc:
            return CacheItem(key, None, str(exc))
        except PermissionError:
            return CacheItem(key, None, "permission denied")
        except OSError as exc:
            return CacheItem(key, None, f"cannot read ({exc.strerror or exc})")
        return CacheItem(key, decoded, None, stat.st_size, stat.st_mtime_ns, digest)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: list = []
        for key in keys:
            window.append(pool.submit(work, key))
            if len(window) >= 4 * workers:
                yield window.pop(0).result()
        for future in window:
            yield future.result()


CACHE_FILE = "images.npy"


def open_cache(path: Path, mode: str = "r") -> np.ndarray:
    """Memory-map the decoded-image cache ``(N, C, S, S)`` (uint8 or float16, values 0..255)."""
    return np.load(path, mmap_mode=mode)


def create_cache(path: Path, n: int, channels: int, size: int,
                 dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """Create an empty cache file and return it memory-mapped for writing.

    Args:
        path: the ``.npy`` file.
        n: samples.
        channels: bands per sample.
        size: side in pixels.
        dtype: uint8 (8-bit archives) or float16 (rasterio archives: scaled 0..255 values).
    """
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype),
                                     shape=(n, channels, size, size))
