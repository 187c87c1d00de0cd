"""A synthetic Sentinel-2-like multi-label archive: 12-band uint16 GeoTIFFs, both layouts.

The multispectral counterpart of :mod:`alft_cli.synthetic`, for the demo and the tests
(nothing is downloaded). Each patch is a mosaic of one to three land-cover regions with
irregular, noise-warped borders; every region has its class's reflectance spectrum over the
12 BigEarthNet bands (B01-B09, B8A, B11, B12; Sentinel-2 L2A digital numbers = reflectance x
10000), a shared brightness texture, a scene-wide illumination change and sensor noise.

The class names are real CORINE Land Cover names as BigEarthNet uses them (so they include a
comma and a slash), and the spectra follow textbook shapes: vegetation has a low red and a high
near-infrared plateau, water is dark beyond the visible, soil and built-up rise slowly into the
short-wave infrared. ``Broad-leaved forest`` and ``Coniferous forest`` have the *same*
visible spectrum (B01-B04) and the same texture; conifers reflect much less in the red edge,
near infrared and SWIR. So only a model that sees bands outside the visible can tell them
apart, which is what the all-bands vs RGB comparison in docs/RESULTS.md measures.

Layouts (see :mod:`alft_cli.rasters`):

- ``band-folder`` (BigEarthNet v1): ``images/<patch>/<patch>_B01.tif ...`` one single-band
  file per band at its native resolution (10 m bands at S px, 20 m at S/2, 60 m at S/6),
  plus ``<patch>_labels_metadata.json`` holding ``{"labels": [...]}``; the key is ``<patch>``.
- ``file`` (EuroSAT-MS style): ``images/<patch>.tif``, all 12 bands on the 10 m grid (coarser
  bands block-averaged, then repeated), band descriptions ``B01`` ...; the key is the file.

Every file is georeferenced (UTM zone 33N, 10/20/60 m pixels, each patch at its own place).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alft_cli.errors import ArchiveError, OptionError
from alft_cli.scenes import fractal
from alft_cli.synthetic import SyntheticArchive, write_gold_csv

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
RESOLUTION_M = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
                "B08": 10, "B8A": 20, "B09": 60, "B11": 20, "B12": 20}
VISIBLE = ("B01", "B02", "B03", "B04")
LAYOUTS = ("band-folder", "file")

# fmt: off
#: Reflectance spectra over :data:`BANDS` and the base probability that a patch contains each
#: class. Broad-leaved and coniferous forest share B01-B04 exactly.
SPECTRA: dict[str, tuple[float, ...]] = {
    #    B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12
    "Discontinuous urban fabric":
        (.100, .110, .120, .130, .150, .170, .180, .190, .200, .200, .240, .210),
    "Non-irrigated arable land":
        (.070, .080, .110, .150, .180, .200, .220, .230, .240, .240, .300, .250),
    "Pastures":
        (.040, .040, .080, .050, .130, .280, .330, .360, .370, .370, .240, .120),
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        (.055, .065, .095, .095, .150, .230, .270, .290, .300, .300, .270, .170),
    "Broad-leaved forest":
        (.030, .030, .060, .030, .090, .280, .380, .420, .430, .430, .210, .090),
    "Coniferous forest":
        (.030, .030, .060, .030, .060, .150, .190, .210, .220, .220, .110, .050),
    "Transitional woodland/shrub":
        (.045, .050, .075, .065, .120, .210, .260, .280, .290, .290, .230, .130),
    "Water bodies":
        (.070, .060, .050, .030, .020, .015, .012, .010, .010, .008, .005, .003),
    "Bare rock":
        (.140, .160, .190, .220, .240, .250, .260, .270, .270, .270, .330, .300),
}
PRIOR: dict[str, float] = {
    "Discontinuous urban fabric": 0.20, "Non-irrigated arable land": 0.30, "Pastures": 0.25,
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        0.15,
    "Broad-leaved forest": 0.30, "Coniferous forest": 0.30, "Transitional woodland/shrub": 0.15,
    "Water bodies": 0.20, "Bare rock": 0.05,
}
# fmt: on
CLASSES: tuple[str, ...] = tuple(SPECTRA)
#: Smallest share of a patch a class must cover to be labeled.
MIN_COVER = 0.05
_ORIGIN = (500_000.0, 5_300_000.0)  # UTM 33N, metres
_EPSG = 32633


def generate_s2_archive(
    out_dir: Path,
    n_images: int = 200,
    image_size: int = 60,
    seed: int = 0,
    layout: str = "band-folder",
    classes: Sequence[str] | None = None,
) -> SyntheticArchive:
    """Write a synthetic 12-band Sentinel-2-like archive plus its one-hot ``labels.csv``.

    Example:
        >>> arch = generate_s2_archive(Path("s2demo"), n_images=200, layout="band-folder")
        >>> arch.keys[0]  # a patch folder, relative to arch.root
        'S2A_MSIL2A_20170613T101031_0_0'

    Args:
        out_dir: Folder to write into; its ``images`` subfolder must be empty or absent.
        n_images: Number of patches.
        image_size: Side of the 10 m bands in pixels (at least 12; 20 m bands get half, 60 m
            bands a sixth, rounded up).
        seed: Same seed, same patches (and the same patches in both layouts).
        layout: ``band-folder`` or ``file``.
        classes: Classes to draw and label, in CSV column order; None for all of
            :data:`CLASSES`.

    Returns:
        Paths, classes, the label matrix and the keys (patch folders or files).
    """
    import rasterio
    from affine import Affine

    def from_origin(x: float, y: float, dx: float, dy: float) -> Affine:
        # rasterio.transform.from_origin, without its deprecated Affine '*' (a warning).
        return Affine(dx, 0.0, x, 0.0, -dy, y)

    chosen = tuple(classes) if classes is not None else CLASSES
    unknown = [c for c in chosen if c not in SPECTRA]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise OptionError(f"synthetic Sentinel-2 classes must be distinct names from "
                          f"{', '.join(CLASSES)}; got {', '.join(unknown) or 'none/repeats'}")
    if layout not in LAYOUTS:
        raise OptionError(f"layout {layout!r}: use {' or '.join(LAYOUTS)}")
    if image_size < 12:
        raise OptionError(f"synthetic Sentinel-2 patches need --image-size >= 12, got "
                          f"{image_size}")
    if n_images < 1:
        raise OptionError(f"n_images must be >= 1, got {n_images}")
    out_dir = Path(out_dir)
    root = out_dir / "images"
    if root.exists() and any(p.is_file() for p in root.rglob("*")):
        raise ArchiveError(f"{root} already holds files; choose an empty output folder")
    root.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    rows: list[np.ndarray] = []
    per_row = 64
    for i in range(n_images):
        rng = np.random.default_rng([seed, i, 2])
        refl, present = s2_patch(rng, image_size, chosen)
        patch = f"S2A_MSIL2A_20170613T101031_{i // per_row}_{i % per_row}"
        x0 = _ORIGIN[0] + (i % per_row) * image_size * 10.0
        y0 = _ORIGIN[1] - (i // per_row) * image_size * 10.0
        bands = {b: _to_resolution(refl[k], RESOLUTION_M[b] // 10) for k, b in enumerate(BANDS)}
        labels = [c for c, p in zip(chosen, present) if p]
        if layout == "band-folder":
            folder = root / patch
            folder.mkdir()
            for band, data in bands.items():
                res = RESOLUTION_M[band]
                _write(rasterio, folder / f"{patch}_{band}.tif", data[None],
                       from_origin(x0, y0, res, res), [band])
            meta = {"labels": labels,
                    "coordinates": {"ulx": x0, "uly": y0, "lrx": x0 + image_size * 10.0,
                                    "lry": y0 - image_size * 10.0},
                    "projection": f"EPSG:{_EPSG}", "tile_source": "synthetic (alft)",
                    "acquisition_date": "2017-06-13 10:10:31"}
            (folder / f"{patch}_labels_metadata.json").write_text(json.dumps(meta),
                                                                  encoding="utf-8")
            keys.append(patch)
        else:
            # One file on the 10 m grid: coarser bands repeated back up, as resampled products
            # (EuroSAT-MS) store them.
            stack = np.stack([_upsample(bands[b], image_size) for b in BANDS])
            _write(rasterio, root / f"{patch}.tif", stack, from_origin(x0, y0, 10.0, 10.0),
                   list(BANDS))
            keys.append(f"{patch}.tif")
        rows.append(present)
    Y = np.stack(rows).astype(np.uint8)
    labels_csv = write_gold_csv(out_dir, keys, Y, chosen)
    return SyntheticArchive(root=root, labels_csv=labels_csv, classes=chosen, Y=Y, keys=keys)


def s2_patch(rng: np.random.Generator, size: int, classes: Sequence[str] = CLASSES
             ) -> tuple[np.ndarray, np.ndarray]:
    """One patch: ``(reflectance (12, S, S) float32, labels (len(classes),) uint8)``.

    Regions are the cells of a Voronoi diagram of 1-3 seeds, with distances warped by smooth
    noise so that borders are irregular; a class is labeled when it covers at least
    :data:`MIN_COVER` of the patch.
    """
    prior = np.array([PRIOR[c] for c in classes])
    k = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    k = min(k, len(classes))
    picked = rng.choice(len(classes), size=k, replace=False, p=prior / prior.sum())
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    X, Y = c[None, :], c[:, None]
    seeds = rng.uniform(0.1, 0.9, size=(k, 2))
    dist = np.stack([np.hypot(X - sx, Y - sy) + 0.12 * fractal(rng, size, 3, 2)
                     for sx, sy in seeds])
    region = np.argmin(dist, axis=0)
    refl = np.empty((len(BANDS), size, size), dtype=np.float32)
    texture = 1.0 + 0.07 * fractal(rng, size, 8, 3)
    for j, cls in enumerate(picked):
        mask = region == j
        spectrum = np.asarray(SPECTRA[classes[cls]], dtype=np.float32)
        # Each region's own brightness (soil moisture, canopy density), same for all bands.
        gain = np.float32(rng.uniform(0.88, 1.12))
        refl[:, mask] = spectrum[:, None] * gain * texture[mask][None, :]
    illumination = np.float32(rng.uniform(0.9, 1.1))
    refl = refl * illumination + rng.normal(0, 0.004, refl.shape).astype(np.float32)
    cover = np.bincount(region.ravel(), minlength=k) / region.size
    present = np.zeros(len(classes), dtype=np.uint8)
    for j, cls in enumerate(picked):
        if cover[j] >= MIN_COVER:
            present[cls] = 1
    return np.clip(refl, 0.0, 1.0), present


def _to_resolution(band: np.ndarray, factor: int) -> np.ndarray:
    """Block-average a 10 m band to ``factor`` x coarser pixels (edge pixels padded), as uint16
    digital numbers."""
    if factor > 1:
        size = band.shape[0]
        n = -(-size // factor)
        padded = np.pad(band, ((0, n * factor - size), (0, n * factor - size)), mode="edge")
        band = padded.reshape(n, factor, n, factor).mean(axis=(1, 3))
    return np.clip(np.rint(band * 10000.0), 0, 65535).astype(np.uint16)


def _upsample(band: np.ndarray, size: int) -> np.ndarray:
    factor = -(-size // band.shape[0])
    return np.repeat(np.repeat(band, factor, axis=0), factor, axis=1)[:size, :size]


def _write(rasterio: object, path: Path, data: np.ndarray, transform: object,
           names: list[str]) -> None:
    profile = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2],
               "count": data.shape[0], "dtype": "uint16", "crs": f"EPSG:{_EPSG}",
               "transform": transform}
    with rasterio.open(path, "w", **profile) as dst:  # type: ignore[attr-defined]
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
