"""What ``alft demo-data`` writes: the built-in synthetic archives, options checked first."""

from __future__ import annotations

from pathlib import Path

from alft_cli.errors import OptionError
from alft_cli.synthetic import generate_archive
from alft_cli.synthetic_s2 import generate_s2_archive


def demo_archive(out: Path, *, n_images: int = 400, image_size: int = 64,
                 imbalance: float = 1.0, seed: int = 0, bands: int | None = None,
                 layout: str = "band-folder") -> object:
    """What ``alft demo-data`` writes: this RGB archive (PNG/JPEG/TIFF), or with ``bands=12``
    the Sentinel-2-like one of :mod:`alft_cli.synthetic_s2`; options checked first."""
    if bands is not None and bands != 12:
        raise OptionError(f"--bands {bands}: the synthetic multispectral archive has 12 bands "
                          "(Sentinel-2 as in BigEarthNet)")
    if n_images < 1:
        raise OptionError("--n-images must be >= 1")
    if image_size < 16:
        raise OptionError("--image-size must be >= 16")
    if imbalance < 1:
        raise OptionError("--imbalance must be >= 1 (1 = natural frequencies)")
    if (out / "labels.csv").exists() or (out / "images").exists():
        raise OptionError(f"{out} already holds an archive; choose a new folder")
    if bands is not None:
        if imbalance != 1:
            raise OptionError("--imbalance is for the RGB archive; not with --bands")
        return generate_s2_archive(out, n_images=n_images, image_size=image_size, seed=seed,
                                   layout=layout)
    return generate_archive(out, n_images=n_images, image_size=image_size, seed=seed,
                            imbalance=imbalance, formats=("png", "jpg", "tif"))
