"""BigEarthNet labels: the 43 CORINE classes, the 19-class nomenclature, and gold files.

BigEarthNet (Sumbul et al., "BigEarthNet: A Large-Scale Benchmark Archive for Remote Sensing
Image Understanding", IGARSS 2019) labels each Sentinel-2 patch with the CORINE Land Cover
2018 level-3 classes present (43 occur). The 19-class nomenclature (Sumbul et al.,
"BigEarthNet-MM: A Large-Scale, Multimodal, Multilabel Benchmark Archive for Remote Sensing
Image Classification and Retrieval", IEEE GRSM 2021) merges classes that cannot be told apart
from Sentinel-2 alone and drops those that need context (roads, ports, airports, dumps,
construction and mineral extraction sites, green urban and sport areas, bare rock, burnt
areas, intertidal flats); :data:`TO_19` is that published mapping.

Labels are read from

- v1: ``<patch>/<patch>_labels_metadata.json`` holding ``{"labels": [43-class names]}``;
- v2 (reBEN): the ``metadata.parquet`` table (columns ``patch_id`` and ``labels``, 19-class
  names), read with pyarrow when it is installed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from alft_cli.errors import ArchiveError, LabelFileError, OptionError

#: The 43 CORINE Land Cover classes of BigEarthNet v1, in the archive's documented order.
CLASSES_43: tuple[str, ...] = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports",
    "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
    "Sport and leisure facilities", "Non-irrigated arable land", "Permanently irrigated land",
    "Rice fields", "Vineyards", "Fruit trees and berry plantations", "Olive groves", "Pastures",
    "Annual crops associated with permanent crops", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland", "Moors and heathland", "Sclerophyllous vegetation",
    "Transitional woodland/shrub", "Beaches, dunes, sands", "Bare rock",
    "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes",
    "Salines", "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons",
    "Estuaries", "Sea and ocean",
)  # fmt: skip

#: The 19 classes of the BigEarthNet nomenclature (Sumbul et al. 2021), in its order.
CLASSES_19: tuple[str, ...] = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops",
    "Pastures", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation", "Transitional woodland, shrub",
    "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
    "Marine waters",
)  # fmt: skip

#: 43-class name -> 19-class name, or None for the classes the 19-class nomenclature drops.
TO_19: dict[str, str | None] = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Pastures": "Pastures",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        "Land principally occupied by agriculture, with significant areas of natural "
        "vegetation",
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Bare rock": None,
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Burnt areas": None,
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Intertidal flats": None,
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}
LABEL_JSON_SUFFIX = "_labels_metadata.json"
NOMENCLATURES = (43, 19)


def to_19(labels: Iterable[str]) -> list[str]:
    """The 19-class labels of a patch labeled with 43-class names (sorted in 19-class order).

    Raises:
        KeyError: a name that is not one of the 43 classes.
    """
    mapped = {TO_19[name] for name in labels}
    return [c for c in CLASSES_19 if c in mapped]


@dataclass
class BigEarthNetLabels:
    """Gold labels read from a BigEarthNet archive.

    Attributes:
        classes: the columns, in nomenclature order (only the classes that occur).
        rows: ``(key, labels)`` per patch, keys as init-pool makes them (folder paths).
        unmapped: keys whose labels all map to nothing in the 19-class nomenclature (not in
            ``rows``: a patch without a class is no gold label).
        missing: patch folders without a label file or table entry.
        notes: other things worth saying.
    """

    classes: list[str]
    rows: list[tuple[str, list[str]]]
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_labels(root: Path, keys: Sequence[str], nomenclature: int = 43,
                metadata: Path | None = None) -> BigEarthNetLabels:
    """Read the labels of the patch folders ``keys`` (relative to ``root``).

    Args:
        root: the archive.
        keys: patch folders as init-pool lists them (band-folder layout).
        nomenclature: 43 (the labels as stored, v1) or 19 (the published mapping applied).
        metadata: a v2 ``metadata.parquet``; patches are matched to it by folder name
            (``patch_id``). Without it the v1 per-patch JSON files are read.

    Returns:
        Labels per patch, and what could not be used.

    Raises:
        OptionError: unknown nomenclature, or v2 labels (19 classes) asked for as 43.
        LabelFileError: a label file or table that cannot be read, or an unknown class
            name (one line per bad file).
    """
    if nomenclature not in NOMENCLATURES:
        raise OptionError(f"--nomenclature {nomenclature}: use 43 or 19")
    if metadata is not None:
        found, problems = _read_v2(metadata, keys)
        if nomenclature == 43:
            raise OptionError("BigEarthNet v2 metadata holds the 19-class labels; use "
                              "--nomenclature 19")
        known = set(CLASSES_19)
    else:
        found, problems = _read_v1(root, keys)
        known = set(CLASSES_43)
    for key, labels in found.items():
        unknown = [lab for lab in labels if lab not in known]
        if unknown:
            problems.append(f"{key}: unknown class {unknown[0]!r} (not a BigEarthNet "
                            f"{19 if metadata is not None else 43}-class name)")
    if problems:
        raise LabelFileError(f"{len(problems)} BigEarthNet label problems; nothing written",
                             details=problems[:50])
    missing = [k for k in keys if k not in found]
    rows: list[tuple[str, list[str]]] = []
    unmapped: list[str] = []
    order = CLASSES_19 if nomenclature == 19 else CLASSES_43
    for key in keys:
        if key not in found:
            continue
        labels = found[key]
        if nomenclature == 19 and metadata is None:
            labels = to_19(labels)
        if not labels:
            unmapped.append(key)
            continue
        rows.append((key, [c for c in order if c in set(labels)]))
    used = {c for _, labels in rows for c in labels}
    classes = [c for c in order if c in used]
    notes = []
    if unmapped:
        notes.append(f"{len(unmapped)} patches have no class in the {nomenclature}-class "
                     f"nomenclature (e.g. {unmapped[0]}); they get no gold label")
    if missing:
        notes.append(f"{len(missing)} patch folders have no labels (e.g. {missing[0]})")
    return BigEarthNetLabels(classes, rows, unmapped, missing, notes)


def _read_v1(root: Path, keys: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    found: dict[str, list[str]] = {}
    problems: list[str] = []
    for key in keys:
        folder = root / key
        try:
            candidates = sorted(p for p in folder.iterdir() if p.name.endswith(LABEL_JSON_SUFFIX))
        except OSError as exc:
            problems.append(f"{key}: cannot list folder ({exc.strerror or exc})")
            continue
        if not candidates:
            continue
        path = candidates[0]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            labels = data["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise TypeError("'labels' is not a list of names")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{key}/{path.name}: not a BigEarthNet label file ({exc})")
            continue
        found[key] = labels
    return found, problems


def _read_v2(metadata: Path, keys: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise OptionError("reading BigEarthNet v2's metadata.parquet needs pyarrow "
                          "(pip install pyarrow)") from exc
    try:
        table = pq.read_table(metadata, columns=["patch_id", "labels"])
    except Exception as exc:  # pyarrow's ArrowInvalid / OSError / KeyError-like errors
        raise LabelFileError(f"{metadata}: not a BigEarthNet v2 metadata table with "
                             f"'patch_id' and 'labels' columns ({_first_line(exc)})") from exc
    by_patch = {str(pid): [str(x) for x in (labels or [])]
                for pid, labels in zip(table.column("patch_id").to_pylist(),
                                       table.column("labels").to_pylist())}
    found = {key: by_patch[PurePosixPath(key).name] for key in keys
             if PurePosixPath(key).name in by_patch}
    return found, []


def onehot_csv(labels: BigEarthNetLabels) -> str:
    """The one-hot gold CSV (``filename`` + one column per class; headers CSV-quoted)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", *labels.classes])
    for key, names in labels.rows:
        present = set(names)
        writer.writerow([key, *(int(c in present) for c in labels.classes)])
    return buffer.getvalue()


def check_archive_keys(keys: Sequence[str]) -> None:
    """Refuse an archive without band folders: BigEarthNet labels belong to patch folders."""
    if not keys:
        raise ArchiveError("no BigEarthNet patch folders found (folders holding "
                           "<patch>_B01.tif ... files)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def write_gold(archive: Path, out: Path, nomenclature: int = 43,
               metadata: Path | None = None) -> BigEarthNetLabels:
    """Write the one-hot gold file of a BigEarthNet archive to ``out``: keys are the patch
    folders as init-pool makes them, labels from the per-patch JSONs (v1) or ``metadata``
    (v2's parquet table). Refuses an existing ``out`` and an archive without usable labels."""
    from alft_cli import rasters
    from alft_cli.atomic import atomic_write_text
    from alft_cli.config import ARCHIVE_EXTENSIONS
    from alft_cli.images import scan_folder

    if not archive.is_dir():
        raise ArchiveError(f"archive {archive} is not a folder")
    if out.exists():
        raise OptionError(f"{out} exists; choose another --out")
    listing = scan_folder(archive, ARCHIVE_EXTENSIONS)
    keys = [s.key for s in rasters.group_layout(listing.keys, listing.skipped,
                                                "band-folder").samples]
    found = read_labels(archive, keys, nomenclature, metadata)
    if not found.rows:
        raise ArchiveError(f"{archive}: none of the {len(keys)} patch folders has a usable "
                           "label" + (f" ({found.notes[0]})" if found.notes else ""))
    atomic_write_text(out, onehot_csv(found))
    return found
