"""Procedural multi-label aerial scenes: the built-in demo archive.

Nothing is downloaded: the README demo and every test run on scenes drawn here. Each scene is
a top-down view of land cover in the style of the UC Merced multi-label archive (Chaudhuri et
al., "Multilabel Remote Sensing Image Retrieval Using a Semisupervised Graph-Theoretic
Method", IEEE TGRS 2018): grass as the open ground, tree crowns with shadows, striped crop
fields, brown bare soil, water with sandy shores, roads with cars on them, buildings with
shadows lined up along the roads, and sports courts.

A scene is drawn in three steps:

1. Pick a scene type (the image's subfolder: ``residential``, ``farmland``, ``waterfront``,
   ``parkland``). Each type gives every class a base inclusion probability
   (:data:`SCENE_TYPES`).
2. Include each class with its probability (after the ``imbalance`` scaling, see
   :func:`scene_probs`) and draw the included elements into a class map and an RGB canvas at
   twice the output size, later elements hiding earlier ones.
3. Label the image from the final class map: a class is present when it still covers at
   least :data:`MIN_COVER` of the image, so an element that ended up hidden or clipped is not
   labeled. The canvas is then box-downsampled (anti-aliasing) and given a mild illumination
   change and sensor noise.

Every image has its own generator seeded by ``(seed, index)``, so the first images of a larger
archive are the images of a smaller one, and the same seed writes byte-identical files.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from alft_cli.errors import ArchiveError, OptionError
from alft_cli.scenes import CLASSES, INDEX, Canvas, compose

#: Base inclusion probability of each class per scene type (the image's subfolder). ``cars``
#: is conditional on a road being drawn and ``sand`` on water being drawn, which keeps the
#: realistic co-occurrences (cars on roads, sand on shores). ``grass`` is the open ground: when
#: it is not included, the scene tries to cover the ground with field and bare-soil parcels.
# fmt: off
_PROB_COLUMNS = ("grass", "trees", "road", "buildings", "water", "cars", "field", "bare-soil",
                 "sand", "court")
_BASE_PROBS: dict[str, tuple[float, ...]] = {
    # scene type:   grass trees road  bldgs water cars  field soil  sand  court
    "residential": (0.95, 0.80, 0.90, 0.95, 0.10, 0.75, 0.05, 0.15, 0.30, 0.20),
    "farmland":    (0.50, 0.50, 0.35, 0.20, 0.15, 0.40, 0.95, 0.60, 0.30, 0.00),
    "waterfront":  (0.85, 0.60, 0.40, 0.35, 0.95, 0.60, 0.10, 0.15, 0.70, 0.05),
    "parkland":    (0.95, 0.85, 0.40, 0.15, 0.30, 0.50, 0.10, 0.20, 0.30, 0.45),
}
# fmt: on
SCENE_TYPES: dict[str, dict[str, float]] = {
    scene: dict(zip(_PROB_COLUMNS, p, strict=True)) for scene, p in _BASE_PROBS.items()
}

#: Smallest fraction of the image a class must cover to be labeled. Cars are tiny by nature, so
#: one visible car counts; everything else must cover 1% (about 6 x 6 pixels at 64 px).
MIN_COVER: dict[str, float] = {c: 0.01 for c in CLASSES} | {"cars": 0.001}

#: Classes that are only ever drawn on or next to another one.
NEEDS: dict[str, str] = {"cars": "road", "sand": "water"}

#: Image formats Pillow writes for each accepted extension.
FORMATS: dict[str, str] = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "tif": "TIFF",
    "tiff": "TIFF",
}

# Drawn at twice the output size and box-downsampled, so edges are anti-aliased and thin
# elements (road markings, car outlines) survive as mixed pixels instead of aliasing.
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class SyntheticArchive:
    """What :func:`generate_archive` wrote.

    Attributes:
        root: The images folder (``out_dir/images``); ``keys`` are relative to it.
        labels_csv: The one-hot label file (``out_dir/labels.csv``).
        classes: Class names, in the column order of ``labels.csv`` and ``Y``.
        Y: Labels, shape ``(N, C)``, dtype ``uint8``, row ``i`` for ``keys[i]``.
        keys: Image paths relative to ``root``, POSIX style, e.g. ``farmland/farmland_0003.png``.
    """

    root: Path
    labels_csv: Path
    classes: tuple[str, ...]
    Y: np.ndarray
    keys: list[str]


def check_classes(classes: Sequence[str] | None) -> tuple[str, ...]:
    """Validate a class selection.

    Args:
        classes: Class names from :data:`CLASSES`, or None for all of them.

    Returns:
        The selection as a tuple, in the given order.

    Raises:
        OptionError: A name is unknown or repeated, or a class is selected without the class
            it is drawn on (see :data:`NEEDS`).
    """
    if classes is None:
        return CLASSES
    chosen = tuple(classes)
    unknown = [c for c in chosen if c not in INDEX]
    if unknown:
        raise OptionError(
            f"unknown synthetic class(es) {', '.join(unknown)}; known: {', '.join(CLASSES)}"
        )
    if len(set(chosen)) != len(chosen) or not chosen:
        raise OptionError("synthetic classes must be non-empty and without repeats")
    for c, host in NEEDS.items():
        if c in chosen and host not in chosen:
            raise OptionError(f"synthetic class {c!r} is only drawn with {host!r}; select both")
    return chosen


def scene_probs(scene: str, classes: Sequence[str] = CLASSES, imbalance: float = 1.0) -> np.ndarray:
    """Inclusion probabilities of the selected classes for one scene type.

    The rule: ``p_c = SCENE_TYPES[scene][c] * imbalance ** -(rank_c / (K - 1))``, where
    ``rank_c`` is the position of ``c`` among the ``K`` selected classes taken in the natural
    frequency order :data:`CLASSES` (0 = most common, whatever order ``classes`` is given in).
    The most common class keeps its probability and the rarest is divided by ``imbalance``.
    Observed label frequencies follow the same trend but not exactly: cars also need a road and
    sand needs water (both scaled too), and occlusion removes some labels.

    Args:
        scene: A key of :data:`SCENE_TYPES`.
        classes: The selected classes.
        imbalance: 1.0 for the natural frequencies; larger makes rare classes rarer.

    Returns:
        Probabilities aligned with ``classes``.
    """
    chosen = check_classes(classes)
    if imbalance < 1.0:
        raise OptionError(f"imbalance must be >= 1, got {imbalance}")
    natural = sorted(chosen, key=INDEX.__getitem__)
    span = max(len(chosen) - 1, 1)
    base = SCENE_TYPES[scene]
    return np.array(
        [base[c] * imbalance ** -(natural.index(c) / span) for c in chosen], dtype=np.float64
    )


def synthetic_scene(
    rng: np.random.Generator,
    image_size: int,
    classes: Sequence[str] = CLASSES,
    probs: Sequence[float] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene and its labels.

    Args:
        rng: The scene's random generator (all randomness comes from it).
        image_size: Output side in pixels (at least 16).
        classes: Which classes may be drawn (see :func:`check_classes`); ``grass`` is always
            the ground, but labeled only when selected.
        probs: Inclusion probability of each selected class, aligned with ``classes``
            (e.g. from :func:`scene_probs`); None means 0.5 each.

    Returns:
        ``(image, labels)``: an ``(image_size, image_size, 3)`` uint8 RGB array and a
        ``(len(classes),)`` uint8 0/1 vector computed from what is visible in the image.
    """
    chosen = check_classes(classes)
    if image_size < 16:
        raise OptionError(f"synthetic image size must be >= 16, got {image_size}")
    p = np.full(len(chosen), 0.5) if probs is None else np.asarray(probs, dtype=np.float64)
    if p.shape != (len(chosen),):
        raise OptionError(f"probs must have one entry per class ({len(chosen)}), got {p.shape}")
    # One draw per selected class in a fixed order, so a scene depends only on its generator.
    include = {c: bool(u < pc) for c, pc, u in zip(chosen, p, rng.random(len(chosen)), strict=True)}
    for c, host in NEEDS.items():
        include[c] = include.get(c, False) and include.get(host, False)
    canvas = Canvas(rng, image_size * _SUPERSAMPLE)
    compose(canvas, include)
    cover = np.bincount(canvas.cmap.ravel(), minlength=len(CLASSES)) / canvas.cmap.size
    labels = np.array([cover[INDEX[c]] >= MIN_COVER[c] for c in chosen], dtype=np.uint8)
    return canvas.finish(_SUPERSAMPLE), labels


def generate_archive(
    out_dir: Path,
    n_images: int = 300,
    image_size: int = 64,
    seed: int = 0,
    imbalance: float = 1.0,
    formats: Sequence[str] = ("png",),
    classes: Sequence[str] | None = None,
) -> SyntheticArchive:
    """Write a synthetic multi-label archive: images in subfolders plus a one-hot label file.

    Images go to ``out_dir/images/<scene>/<scene>_<index>.<ext>`` (``<scene>`` is the scene
    type, as UC Merced groups images by scene), the formats taken in turn from ``formats``.
    ``out_dir/labels.csv`` has the header ``filename,<class1>,...`` and one row per image with
    the path relative to ``out_dir/images`` and 0/1 values.

    Example:
        >>> archive = generate_archive(Path("demo"), n_images=300, imbalance=4.0)
        >>> archive.Y.mean(axis=0)  # label frequencies, rarer classes at the end

    Args:
        out_dir: Folder to write into; its ``images`` subfolder must be empty or absent.
        n_images: Number of images.
        image_size: Side of the square images in pixels.
        seed: Same seed, same bytes.
        imbalance: 1.0 for the natural frequencies; larger makes the rarer classes rarer by up
            to this factor (exact rule in :func:`scene_probs`).
        formats: Image formats used in turn: ``png``, ``jpg``/``jpeg``, ``tif``/``tiff``.
        classes: Classes to draw and label, in the CSV column order; None for all
            (:data:`CLASSES`).

    Returns:
        The archive's paths, classes, label matrix and image keys.
    """
    chosen = check_classes(classes)
    if n_images < 1:
        raise OptionError(f"n_images must be >= 1, got {n_images}")
    fmts = [f.lower().lstrip(".") for f in formats]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise OptionError(
            f"unsupported synthetic format(s) {', '.join(bad) or '(none)'}; use png, jpg or tif"
        )
    out_dir = Path(out_dir)
    root = out_dir / "images"
    if root.exists() and any(p.is_file() for p in root.rglob("*")):
        # Stale images from another run would be indexed without labels; refuse, never delete.
        raise ArchiveError(f"{root} already holds files; choose an empty output folder")
    probs = {s: scene_probs(s, chosen, imbalance) for s in SCENE_TYPES}
    scenes = list(SCENE_TYPES)
    keys: list[str] = []
    rows: list[np.ndarray] = []
    for i in range(n_images):
        rng = np.random.default_rng([seed, i])
        scene = scenes[int(rng.integers(len(scenes)))]
        image, labels = synthetic_scene(rng, image_size, chosen, probs[scene])
        ext = fmts[i % len(fmts)]
        key = f"{scene}/{scene}_{i:04d}.{ext}"
        (root / scene).mkdir(parents=True, exist_ok=True)
        _save(Image.fromarray(image), root / key, FORMATS[ext])
        keys.append(key)
        rows.append(labels)
    Y = np.stack(rows)
    labels_csv = write_gold_csv(out_dir, keys, Y, chosen)
    return SyntheticArchive(root=root, labels_csv=labels_csv, classes=chosen, Y=Y, keys=keys)


def _save(image: Image.Image, path: Path, fmt: str) -> None:
    if fmt == "JPEG":
        # High quality and no chroma subsampling: at 32-64 px, 4:2:0 subsampling would wash out
        # the colour of small elements (cars, thin shores) that define their labels.
        image.save(path, fmt, quality=95, subsampling=0)
    else:
        image.save(path, fmt)


def write_gold_csv(out_dir: Path, keys: Sequence[str], Y: np.ndarray,
                   classes: Sequence[str]) -> Path:
    """The archive's gold labels as ``out_dir/labels.csv`` (one-hot, keys in order)."""
    labels_csv = out_dir / "labels.csv"
    with labels_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["filename", *classes])
        for key, row in zip(keys, Y, strict=True):
            writer.writerow([key, *(int(v) for v in row)])
    return labels_csv
