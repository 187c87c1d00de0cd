"""RGB quicklooks of multi-band samples, for the people who label them.

Nobody can label a 12-band GeoTIFF in a spreadsheet or in Label Studio. For every queried
sample of a multi-band project, ``alft query`` writes a PNG next to the query file: true
colour from the bands named red, green and blue (Sentinel-2 ``B04, B03, B02``; or the file's
``red``/``green``/``blue`` colour interpretation), or the bands given with
``--preview-bands``, with a per-band 2-98% stretch of that image. The stretch is for display
only: the model never sees it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from alft_cli.errors import OptionError

TRUE_COLOUR = (("B04", "B03", "B02"), ("red", "green", "blue"))
STRETCH = (2.0, 98.0)
#: Quicklooks smaller than this are enlarged (nearest neighbour: pixels stay pixels), so a
#: 120 px patch is not a thumbnail in a labeling tool.
MIN_SIDE = 256
FOLDER = "quicklooks"


def preview_bands(names: Sequence[str], wanted: str | Sequence[str] | None = None) -> list[str]:
    """The three bands (or one) a quicklook shows.

    Args:
        names: the bands available.
        wanted: ``--preview-bands`` (names or 1-based indexes, three or one); None: true
            colour when the bands are there, else the first three bands (or the first).

    Raises:
        OptionError: a preview band that is not available, or not 1 or 3 of them.
    """
    from alft_cli.rasters import resolve_bands

    if wanted is not None and not (isinstance(wanted, str) and not wanted.strip()):
        try:
            chosen = resolve_bands(list(names), wanted)
        except OptionError as exc:
            raise OptionError(str(exc).replace("--bands", "--preview-bands")) from exc
        if len(chosen) not in (1, 3):
            raise OptionError(f"--preview-bands: give 3 bands (red, green, blue) or 1, got "
                              f"{len(chosen)}")
        return chosen
    lower = {n.lower(): n for n in names}
    for triple in TRUE_COLOUR:
        if all(t.lower() in lower for t in triple):
            return [lower[t.lower()] for t in triple]
    return list(names[:3]) if len(names) >= 3 else list(names[:1])


def render(bands: np.ndarray) -> np.ndarray:
    """``(k, S, S)`` values (k = 3 or 1) -> ``(S', S', 3)`` uint8 with a per-band 2-98%
    stretch; enlarged to at least :data:`MIN_SIDE` px by nearest neighbour."""
    data = np.asarray(bands, dtype=np.float32)
    out = np.empty(data.shape, dtype=np.uint8)
    for i, band in enumerate(data):
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, STRETCH) if finite.size else (0.0, 1.0)
        if not hi > lo:
            hi = lo + 1.0
        scaled = np.clip((np.nan_to_num(band, nan=lo) - lo) / (hi - lo), 0, 1) * 255
        out[i] = np.rint(scaled).astype(np.uint8)
    rgb = np.repeat(out, 3, axis=0) if out.shape[0] == 1 else out
    rgb = rgb.transpose(1, 2, 0)
    side = rgb.shape[0]
    factor = max(1, -(-MIN_SIDE // side))
    if factor > 1:
        rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    return np.ascontiguousarray(rgb)


def file_name(rank: int, key: str) -> str:
    """A quicklook's file name: the query rank and the key with folder separators and other
    characters that file systems or URLs dislike replaced (the rank keeps names unique)."""
    safe = re.sub(r"[^\w.\-]+", "_", key.replace("/", "__"), flags=re.UNICODE).strip("._")
    return f"{rank:04d}_{safe[:120] or 'sample'}.png"


def write(folder: Path, rank: int, key: str, bands: np.ndarray) -> Path:
    """Write one quicklook PNG into ``folder``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(rank, key)
    Image.fromarray(render(bands)).save(path, "PNG")
    return path


def for_query(project: object, ids: Sequence[int], keys: Sequence[str], folder: Path,
              wanted: str | Sequence[str] | None = None) -> dict[str, str]:
    """Write the quicklooks of a query's samples (rank = position + 1) into ``folder``.

    The bands come from the decode cache when the project uses them, else they are read
    from the archive (e.g. true colour for a project trained on B08, B11, B12 only).

    Returns:
        key -> the quicklook's path relative to ``folder``'s parent (the query file's folder).
    """
    from alft_cli import rasters
    from alft_cli.data import CachedImages

    raster = project.config.raster  # type: ignore[attr-defined]
    chosen = preview_bands(raster.band_names, wanted)
    out: dict[str, str] = {}
    if all(b in raster.bands for b in chosen):
        index = [raster.bands.index(b) for b in chosen]
        images = CachedImages(project.cache_path).read(np.asarray(ids, dtype=np.int64))  # type: ignore[attr-defined]
        for rank, (key, image) in enumerate(zip(keys, images), start=1):
            path = write(folder, rank, key, image[index].astype(np.float32))
            out[key] = path.relative_to(folder.parent).as_posix()
        return out
    spec = raster.model_copy(update={
        "bands": chosen, "band_indexes": [raster.band_names.index(b) + 1 for b in chosen],
        "scale_lo": [0.0] * len(chosen), "scale_hi": [1.0] * len(chosen)})
    root = project.archive  # type: ignore[attr-defined]
    size = project.config.image_size  # type: ignore[attr-defined]
    for rank, key in enumerate(keys, start=1):
        try:
            raw, mask, _ = rasters.read_sample(root, rasters.sample_for(root, key, spec.layout),
                                               spec, size)
        except (rasters.RasterError, OSError):
            continue  # the archive changed since init-pool; the row keeps no quicklook
        raw[mask] = np.nan
        path = write(folder, rank, key, raw)
        out[key] = path.relative_to(folder.parent).as_posix()
    return out


def initial_quicklook(project: object, query_file: Path, rank: int, key: str) -> str | None:
    """The quicklook init-pool wrote for the initial list's row ``rank`` (relative to the
    query file's folder), or None (an RGB project, or none was written)."""
    if project.config.raster is None:  # type: ignore[attr-defined]
        return None
    rel = f"{FOLDER}/{file_name(rank, key)}"
    return rel if (query_file.parent / rel).is_file() else None
