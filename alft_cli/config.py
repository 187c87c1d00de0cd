"""Validated settings, checked once where they come in (CLI options, config files).

``ProjectConfig`` is the project's fixed identity, written once by ``init-pool`` to
``config.json``: classes, image size, split fractions, normalization statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alft_cli import __version__
from alft_cli.atomic import atomic_write_text
from alft_cli.errors import OptionError, ProjectError

# Bumped whenever the store or config layout changes incompatibly; older alft versions
# refuse newer projects instead of misreading them.
SCHEMA_VERSION = 1
# config.json only: version 2 added ``raster`` (multi-band archives). Projects without it are
# still written as version 1, which every alft reads.
RASTER_SCHEMA_VERSION = 2

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: What init-pool and tag list: the images above plus JPEG 2000 (read with rasterio).
ARCHIVE_EXTENSIONS = IMAGE_EXTENSIONS + (".jp2",)


class RasterConfig(BaseModel):
    """How a multi-band (rasterio) archive is read and scaled; fixed at init-pool.

    See :mod:`alft_cli.rasters` for the exact rule each field stands for.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: str = Field(pattern="^(file|band-folder)$")
    band_names: list[str] = Field(min_length=1, description="all bands, archive order")
    bands: list[str] = Field(min_length=1, max_length=64, description="selected, model order")
    band_indexes: list[int] = Field(description="1-based position of each selected band")
    count: int = Field(ge=1, description="bands per file (file layout); bands (band-folder)")
    dtype: str
    nodata: float | None = Field(default=None, description="--nodata; None: each file's own")
    scale: str = Field(pattern="^(reflectance|percentile|none)$")
    scale_lo: list[float]
    scale_hi: list[float]
    resampling: str = "bilinear"
    percentile_samples: int = 0

    @field_validator("scale_hi")
    @classmethod
    def _ranges(cls, value: list[float], info: object) -> list[float]:
        lo = info.data.get("scale_lo")  # type: ignore[attr-defined]
        if lo is not None and (len(lo) != len(value) or any(h <= low for low, h in
                                                             zip(lo, value))):
            raise ValueError("scale_hi must be above scale_lo for every band")
        return value


class ProjectConfig(BaseModel):
    """The fixed settings of one project (config.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    alft_version: str = __version__
    # Absolute path of the archive root; sample keys are relative to it.
    archive: str
    manifest: str | None = Field(default=None, description="manifest CSV the index came from")
    classes: list[str]
    image_size: int = Field(ge=16, le=4096)
    in_channels: int = Field(default=3, ge=1, le=64)
    seed: int = 0
    val_fraction: float = Field(ge=0.0, lt=1.0)
    test_fraction: float = Field(ge=0.0, lt=1.0)
    initial: int = Field(ge=0)
    mean: list[float]
    std: list[float]
    created_at: str
    raster: RasterConfig | None = None

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one class is needed")
        lowered = [c.lower() for c in value]
        if len(set(lowered)) != len(lowered):
            raise ValueError("class names must be unique (case-insensitively)")
        return value

    def save(self, path: Path) -> None:
        # An RGB project's config.json stays exactly what it was before multi-band support.
        exclude = {"raster"} if self.raster is None else None
        atomic_write_text(path, self.model_dump_json(indent=2, exclude=exclude) + "\n")

    @classmethod
    def load(cls, path: Path) -> ProjectConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ProjectError(f"{path.parent} is not an alft project (no config.json)") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProjectError(f"{path}: unreadable project config ({exc})") from exc
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if isinstance(version, int) and version > RASTER_SCHEMA_VERSION:
            raise ProjectError(
                f"{path.parent} was written by a newer alft ({raw.get('alft_version', '?')}, "
                f"schema {version}); this alft {__version__} reads schema <= "
                f"{RASTER_SCHEMA_VERSION}. Upgrade alft."
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ProjectError(f"{path}: invalid project config: {_first_error(exc)}") from exc


def parse_class_list(text: str) -> list[str]:
    """Parse ``--classes a,b,c`` into a clean list; refuses empties and duplicates.

    The list is read as one CSV row, so a name with a comma is given in double quotes:
    ``--classes '"Beaches, dunes, sands",Pastures'``.
    """
    import csv

    try:
        row = next(csv.reader([text], skipinitialspace=True), [])
    except csv.Error as exc:
        raise OptionError(f"--classes: cannot read {text!r} as a comma-separated list "
                          f"({exc})") from exc
    return check_class_names([part.strip() for part in row], "--classes")


def check_class_names(names: list[str], where: str) -> list[str]:
    """Class names must survive every label format: not empty, no ';' (the separator of the
    list CSV's labels field and of tag's labels column: the one character no format can
    escape), no control characters, no spaces around them, unique case-insensitively.

    Commas, slashes, parentheses, quotes and non-ASCII letters are fine: CSV headers and
    fields are quoted where needed (real CORINE names such as "Beaches, dunes, sands" and
    "Transitional woodland/shrub" have them)."""
    for name in names:
        if not name.strip():
            raise OptionError(f"{where}: empty class name")
        if ";" in name:
            raise OptionError(f"{where}: class name {name!r} contains ';', which separates "
                              "the classes of a list CSV's labels field; rename the class")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise OptionError(f"{where}: class name {name!r} contains control characters "
                              "(newline, tab, ...)")
        if name != name.strip():
            raise OptionError(f"{where}: class name {name!r} has spaces around it")
    lowered = [n.lower() for n in names]
    dupes = sorted({n for n in lowered if lowered.count(n) > 1})
    if dupes:
        raise OptionError(f"{where}: duplicate class names {', '.join(dupes)}")
    return names


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", "invalid")


class PretrainConfig(BaseModel):
    """BYOL pretraining settings. Defaults follow Moellenbrok & Demir (IGARSS 2023)."""

    model_config = ConfigDict(extra="forbid")

    method: str = "byol"
    backbone: str = "densenet121"
    epochs: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=100, ge=2)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    hidden_dim: int = Field(default=4096, ge=8)
    proj_dim: int = Field(default=256, ge=8)
    tau_base: float = Field(default=0.996, ge=0, le=1)
    seed: int = 0
    checkpoint_every: int = Field(default=10, ge=0)
    resume: bool = False
    device: str = "auto"


class FinetuneConfig(BaseModel):
    """Fine-tuning settings. Defaults follow the paper: SGD lr 0.025, batch 10, 100 epochs,
    lr x0.1 after epoch 80, random horizontal flip + rot90 augmentation - except SGD momentum
    0.9 (and weight decay 0), which the paper does not give, and BatchNorm statistics
    re-estimated on the labeled set after training (``precise_bn``): deviations listed in
    docs/RESULTS.md, with their measured effect."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=10, ge=1)
    lr: float = Field(default=0.025, gt=0)
    lr_step: int = Field(default=80, ge=0, description="epoch after which lr is x0.1 (0: never)")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    init: str = "previous"
    freeze_backbone: bool = False
    backbone: str | None = None
    seed: int = 0
    checkpoint_every: int = Field(default=10, ge=0)
    resume: bool = False
    device: str = "auto"
    eval_batch_size: int = Field(default=64, ge=1)
    # Re-estimate the BatchNorm statistics on the labeled set after training (finetune.py).
    precise_bn: bool = True

    @field_validator("init")
    @classmethod
    def _init_known(cls, value: str) -> str:
        if value not in ("previous", "pretrained", "scratch"):
            raise ValueError("init must be previous, pretrained or scratch")
        return value


def validated(model: type[BaseModel], **values: object) -> BaseModel:
    """Build a settings model from CLI/API values; a bad value is a one-line OptionError."""
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "--" + str(err["loc"][0]).replace("_", "-") if err.get("loc") else "option"
        raise OptionError(f"{name}: {err.get('msg', 'invalid value')}") from exc
