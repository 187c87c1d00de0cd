"""Tag an archive with an exported model: onnxruntime, streaming, resumable, shardable.

Only the ``.onnx`` file written by ``alft export`` is needed (classes, thresholds and input
size are in its metadata; for a multi-band model also the layout, bands and scaling, see
:mod:`alft_cli.rasters`); no project. Images are listed, decoded by a thread pool (Pillow
releases the GIL) a few batches ahead of the batch being scored, scored in batches, and
appended to the output one batch at a time, so memory stays flat whatever the archive size
and a killed run loses at most one batch (``--resume`` picks it up).

Shards (``--shard i/n``) are chosen by a stable hash of each file's key, so n machines that
list the same archive split it exactly, in any listing order, without talking to each other.

The output itself (format from its name, the ``<out>.model.json`` record of the model that
wrote it, resuming, writing) is :mod:`alft_cli.tagout`.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alft_cli.atomic import atomic_write_text
from alft_cli.config import ARCHIVE_EXTENSIONS, RasterConfig
from alft_cli.errors import ArchiveError, OptionError
from alft_cli.images import (
    NOT_AN_IMAGE,
    ImageDecodeError,
    file_sha256,
    load_image,
    scan_folder,
    scan_manifest,
)
from alft_cli.onnxrun import ModelInfo, cpu_count, open_session_with_reason, read_model_info
from alft_cli.progress import reporter
from alft_cli.tagout import (
    SkipLog,
    Writer,
    check_model_record,
    model_record,
    model_record_path,
    read_done,
    repair_tail,
    resolve_format,
)

# Batches decoded ahead of the one being scored: enough to keep the decoders busy while the
# model runs, few enough that memory does not depend on the archive.
WINDOW_BATCHES = 3


@dataclass
class TagResult:
    """What a tagging run did.

    Attributes:
        tagged: images scored and written by this run.
        skipped: files that could not be used (listed in ``skipped_file``).
        already_done: images of this shard found in the output (``--resume``), not redone.
        provider: the onnxruntime execution provider used.
        out: the output file.
        skipped_file: the side file listing unusable files, or None when there were none.
        seconds: wall time of listing, decoding, scoring and writing (model loading excluded).
        images_per_second: ``tagged / seconds``.
        format: ``csv`` or ``jsonl``, as given or inferred from the output's name.
        model_sha256: the model file's SHA-256, recorded in ``model_file``.
        model_file: the side file naming the model, format and shard that wrote ``out``.
    """

    tagged: int
    skipped: int
    already_done: int
    provider: str
    out: Path
    skipped_file: Path | None
    seconds: float
    images_per_second: float
    format: str = "csv"
    model_sha256: str = ""
    model_file: Path | None = None


# --------------------------------------------------------------------------------------------
# the archive
# --------------------------------------------------------------------------------------------
def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0-based i < n) -> ``(i, n)``; None stays None.

    Raises:
        OptionError: anything else.
    """
    if text is None or str(text).strip() == "":
        return None
    parts = str(text).strip().split("/")
    try:
        index, count = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        index = count = None
    if index is None or count is None or count < 1 or not 0 <= index < count:
        raise OptionError(f"--shard {text!r}: use i/n with 0 <= i < n, e.g. 0/4 ... 3/4")
    return index, count


def in_shard(key: str, index: int, count: int) -> bool:
    """Whether ``key`` belongs to shard ``index`` of ``count`` (a stable hash of the key)."""
    return zlib.crc32(key.encode("utf-8")) % count == index


def list_archive(archive: Path) -> tuple[Path, list[str], list[tuple[str, str]]]:
    """The images of a folder (recursive) or of a manifest CSV with a ``filename`` column.

    Returns:
        ``(root, keys, skipped)``: keys are POSIX paths relative to root (the folder, or the
        manifest's folder), sorted; skipped are ``(key, reason)`` found but unusable.

    Raises:
        ArchiveError: the archive does not exist or the manifest cannot be read.
    """
    if not archive.exists():
        raise ArchiveError(f"archive {archive} does not exist")
    if archive.is_dir():
        scan = scan_folder(archive)
        # Sidecar files (.aux.xml, .tfw, ...) are not unreadable images: tagging ignores
        # them rather than listing thousands of them as skipped.
        return archive, scan.keys, [s for s in scan.skipped
                                    if not s[1].startswith(NOT_AN_IMAGE)]
    if archive.suffix.lower() != ".csv":
        raise ArchiveError(f"{archive}: give a folder of images or a manifest CSV with a "
                           "'filename' column")
    scan = scan_manifest(archive, strict=False)
    return archive.parent, scan.keys, list(scan.skipped)


def list_raster_archive(archive: Path, spec: RasterConfig
                        ) -> tuple[Path, dict[str, object], list[tuple[str, str]]]:
    """The samples of a multi-band archive in the model's layout, checked against its bands.

    Returns:
        ``(root, samples by key, skipped)``.

    Raises:
        ArchiveError: another layout than the model's, or bands that do not match the
            model's (one line naming both).
    """
    from alft_cli import rasters

    if not archive.exists():
        raise ArchiveError(f"archive {archive} does not exist")
    if archive.is_dir():
        root, listing = archive, scan_folder(archive, ARCHIVE_EXTENSIONS)
    elif archive.suffix.lower() == ".csv":
        root, listing = archive.parent, scan_manifest(archive, strict=False)
    else:
        raise ArchiveError(f"{archive}: give a folder or a manifest CSV with a 'filename' "
                           "column")
    try:
        found = rasters.group_layout(listing.keys, listing.skipped, "auto").layout
    except ArchiveError:
        found = spec.layout  # mixed: read it the model's way, the rest is skipped
    if found != spec.layout and listing.keys:
        raise ArchiveError(f"{archive} is in the {found} layout; this model reads "
                           f"{spec.layout} archives")
    scan = rasters.group_layout(listing.keys, listing.skipped, spec.layout)
    if scan.samples:
        probe = rasters.probe(root, scan)
        if spec.layout == "file":
            # Names are compared when both sides have them (descriptions or colours); files
            # without names can only be checked by their band count.
            named = not any(n.isdigit() for n in probe.names + spec.band_names)
            bad = probe.count != spec.count or (named and probe.names != spec.band_names)
        else:
            bad = any(b not in probe.names for b in spec.bands)
        if bad:
            raise ArchiveError(f"{archive}: its bands ({', '.join(probe.names)}) do not match "
                               f"the model's ({', '.join(spec.band_names)}; it uses "
                               f"{', '.join(spec.bands)})")
        if probe.dtype != spec.dtype:
            raise ArchiveError(f"{archive} is {probe.dtype}; the model was trained on "
                               f"{spec.dtype} data and scales it as such")
    skipped = [s for s in scan.skipped if not s[1].startswith(NOT_AN_IMAGE)]
    return root, {s.key: s for s in scan.samples}, skipped


def _decode(root: Path, key: str, size: int, channels: int
            ) -> tuple[np.ndarray | None, str | None]:
    """One file -> (C, S, S) float32 ready for the model, or (None, reason)."""
    path = root / key
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        array = load_image(path, size, channels).array
    except ImageDecodeError as exc:
        return None, str(exc)
    except FileNotFoundError:
        return None, "not found"
    except PermissionError:
        return None, "permission denied"
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    # Layout and dtype here, in the worker thread, keep the scoring thread free.
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32), None


def _decode_raster(root: Path, sample: object, size: int, spec: RasterConfig
                   ) -> tuple[np.ndarray | None, str | None]:
    """One multi-band sample -> (C, S, S) float32 model input, or (None, reason)."""
    from alft_cli import rasters

    try:
        return rasters.model_input(root, sample, spec, size), None  # type: ignore[arg-type]
    except rasters.RasterError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def tag_archive(model_path: Path, archive: Path, out: Path, fmt: str | None = None,
                device: str = "auto", shard: str | None = None, resume: bool = False,
                batch_size: int = 32, workers: int | None = None,
                threads: int | None = None, overwrite: bool = False) -> TagResult:
    """Score every image of an archive with an exported model; write probabilities and labels.

    The CSV has ``filename`` (relative to the archive, POSIX), one probability column per
    class (6 decimals) and ``labels``: the classes whose probability reaches their threshold,
    joined by ``;``. JSONL has one ``{"filename", "probabilities": {class: p}, "labels"}``
    object per line. Unusable files are listed in ``<out>.skipped.csv`` and the run goes on.
    ``<out>.model.json`` records the model (SHA-256), format and shard that wrote ``out``;
    resuming with others is refused.

    Example:
        >>> tag_archive(Path("exports/alft_round003.onnx"), Path("/data/tiles"),
        ...             Path("tags_0.csv"), shard="0/4", resume=True)

    Args:
        model_path: a .onnx file written by ``alft export``.
        archive: a folder of images (searched recursively) or a manifest CSV with a
            ``filename`` column (paths relative to the manifest's folder).
        out: the output file.
        fmt: ``csv`` or ``jsonl``; None: from ``out``'s extension (``.jsonl``, ``.ndjson``:
            JSONL; ``.csv`` or anything else: CSV).
        device: ``auto`` (CUDA when usable, else CPU), ``cpu`` or ``cuda``.
        shard: ``"i/n"``: tag only the files whose key hashes to shard i of n.
        resume: continue an interrupted run of the same model: keep the rows already in
            ``out``.
        batch_size: images per inference call.
        workers: decoding threads; default: the usable cores (at most 8).
        threads: onnxruntime intra-op threads on the CPU; default: the usable cores.
        overwrite: replace an existing ``out`` (and its side files) instead of refusing.

    Returns:
        Counts, provider, timing.

    Raises:
        OptionError: bad option; ``out`` exists without ``resume`` or ``overwrite``; or
            ``resume`` of an output written by another model, format or shard.
        CheckpointError: the model is unreadable or not an alft model.
        ArchiveError: the archive does not exist or cannot be listed.
    """
    rep = reporter()
    model_path, archive, out = Path(model_path), Path(archive), Path(out)
    fmt = resolve_format(fmt, out)
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: must be at least 1")
    if workers is not None and workers < 1:
        raise OptionError(f"--workers {workers}: must be at least 1")
    if threads is not None and threads < 1:
        raise OptionError(f"--threads {threads}: must be at least 1")
    shard_spec = parse_shard(shard)
    if out.is_dir():
        raise OptionError(f"--out {out} is a folder; give a file name")
    if resume and overwrite:
        raise OptionError("--resume keeps what is in the output, --overwrite replaces it; "
                          "give one of them")
    if out.exists() and not (resume or overwrite):
        raise OptionError(f"{out} exists; use --resume (same model) to continue it, "
                          "--overwrite to replace it, or another --out")
    if not archive.exists():
        raise ArchiveError(f"archive {archive} does not exist")

    session, provider, no_gpu = open_session_with_reason(model_path, device, threads)
    info = read_model_info(session, model_path)
    if fmt == "csv" and {"filename", "labels"} & set(info.classes):
        raise OptionError("a class is named 'filename' or 'labels', which the CSV needs for "
                          "itself; use --format jsonl")
    where = "GPU" if provider.startswith("CUDA") else "CPU"
    rep.info(f"tagging on {where} with onnxruntime {provider}"
             + (f" (GPU not used: {no_gpu})" if no_gpu else "")
             + f"; {model_path.name}: {len(info.classes)} classes, {info.image_size} px")

    started = time.perf_counter()
    samples: dict[str, object] | None = None
    if info.raster is not None:
        root, samples, listing_skipped = list_raster_archive(archive, info.raster)
        keys = list(samples)
    else:
        root, keys, listing_skipped = list_archive(archive)
    if shard_spec is not None:
        keys = [k for k in keys if in_shard(k, *shard_spec)]
        listing_skipped = [s for s in listing_skipped if in_shard(s[0], *shard_spec)]

    sha256 = file_sha256(model_path)
    record = model_record(model_path, sha256, fmt, shard_spec)
    done: set[str] = set()
    new_file = True
    if overwrite:
        for path in (out, model_record_path(out)):
            path.unlink(missing_ok=True)
    if resume and out.exists():
        if not check_model_record(out, record):
            rep.warn(f"{out} has no record of the model that wrote it (written by an older "
                     f"alft?); resuming it with {model_path.name}, assumed to be that model")
        removed = repair_tail(out)
        if removed:
            rep.warn(f"{out}: removed a partial last line ({removed} bytes) left by an "
                     "interrupted run")
        done = read_done(out, fmt, info.classes)
        new_file = out.stat().st_size == 0
    todo = [k for k in keys if k not in done]
    already = len(keys) - len(todo)
    del done
    if already:
        rep.info(f"resuming: {already} images already in {out}, {len(todo)} to go")

    out.parent.mkdir(parents=True, exist_ok=True)
    # Written before the first row: a run killed at any point leaves an output whose model
    # is known.
    atomic_write_text(model_record_path(out), json.dumps(record, indent=2) + "\n")
    skip_log = SkipLog(out.with_name(out.name + ".skipped.csv"))
    skip_log.path.unlink(missing_ok=True)  # it describes this run only
    for key, reason in listing_skipped:
        skip_log.add(key, reason)
    tagged = 0
    workers = workers or min(8, cpu_count())
    try:
        with open(out, "a", encoding="utf-8", newline="") as handle, \
                ThreadPoolExecutor(max_workers=workers) as pool, \
                rep.task("tagging", total=len(todo)) as task:
            writer = Writer(handle, fmt, info.classes, info.thresholds, header=new_file)
            try:
                for processed, batch_keys, arrays in _decoded_batches(
                        pool, root, todo, batch_size, info, skip_log, samples):
                    if batch_keys:
                        x = np.stack(arrays)
                        probabilities = session.run([info.output_name],
                                                    {info.input_name: x})[0]
                        writer.write(batch_keys, probabilities)
                        tagged += len(batch_keys)
                    elapsed = time.perf_counter() - started
                    task.advance(processed, img_s=tagged / max(elapsed, 1e-9))
            finally:
                # On Ctrl-C, drop the decodes queued ahead instead of finishing them.
                pool.shutdown(wait=True, cancel_futures=True)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        skip_log.close()
    seconds = time.perf_counter() - started
    if skip_log.count:
        rep.warn(f"{skip_log.count} files could not be used; see {skip_log.path}")
    return TagResult(tagged, skip_log.count, already, provider, out,
                     skip_log.path if skip_log.count else None, seconds,
                     tagged / seconds if seconds > 0 else 0.0, fmt, sha256,
                     model_record_path(out))


def _decoded_batches(pool: ThreadPoolExecutor, root: Path, keys: list[str], batch_size: int,
                     info: ModelInfo, skip_log: SkipLog,
                     samples: dict[str, object] | None = None
                     ) -> Iterator[tuple[int, list[str], list[np.ndarray]]]:
    """Yield (files processed, usable keys, their arrays) per batch while the next batches
    decode in the pool.

    At most ``WINDOW_BATCHES`` batches are submitted ahead, so while the caller scores batch
    k, batches k+1.. decode, and memory is bounded by the window, not the archive.
    """
    def submit(start: int) -> tuple[list[str], list[Future]]:
        chunk = keys[start:start + batch_size]
        if samples is not None and info.raster is not None:
            return chunk, [pool.submit(_decode_raster, root, samples[k], info.image_size,
                                       info.raster) for k in chunk]
        return chunk, [pool.submit(_decode, root, k, info.image_size, info.in_channels)
                       for k in chunk]

    starts = iter(range(0, len(keys), batch_size))
    inflight: deque[tuple[list[str], list[Future]]] = deque()
    for start in starts:
        inflight.append(submit(start))
        if len(inflight) >= WINDOW_BATCHES:
            break
    while inflight:
        chunk, futures = inflight.popleft()
        following = next(starts, None)
        if following is not None:  # keep the window full before waiting on this batch
            inflight.append(submit(following))
        good_keys: list[str] = []
        arrays: list[np.ndarray] = []
        for key, future in zip(chunk, futures):
            array, reason = future.result()
            if array is None:
                skip_log.add(key, reason or "unreadable")
            else:
                good_keys.append(key)
                arrays.append(array)
        yield len(chunk), good_keys, arrays
