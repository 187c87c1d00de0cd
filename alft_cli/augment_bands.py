"""Band-agnostic BYOL views, for band sets other than RGB (multispectral, NIR/SWIR, SAR).

BYOL's colour operations (hue, saturation, grayscale, solarize; Grill et al., NeurIPS 2020,
Appendix B) are defined on RGB. :class:`BandViewParams` says what replaces each and why;
geometry (crops, flips, quarter turns) and blur come from :mod:`alft_cli.augment` unchanged.
Same conventions: float (B, C, H, W) batches with values 0..255, per-sample parameters drawn
from the ``torch.Generator`` passed in, on the batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alft_cli.augment import (
    _bernoulli,
    _blend,
    _check,
    _uniform,
    byol_views,
    gaussian_blur,
    random_flip_rot90,
    random_resized_crop,
)


@dataclass(frozen=True)
class BandViewParams:
    """A view distribution for any set of bands (multispectral, NIR/SWIR, SAR...).

    BYOL's colour operations are defined on RGB; each is replaced by an operation that means
    the same for any band and keeps the spectral signature, which is what tells multispectral
    classes apart:

    - hue and saturation (rotate / scale the RGB colour wheel) -> ``band_gain``: a mild
      independent gain per band (+-10%), a change of band ratios as small as BYOL's hue jitter
      is, the way atmosphere and sensor calibration vary them; a strong one would teach
      invariance to exactly the ratios (red vs NIR) that separate vegetation types;
    - brightness and contrast -> the same strengths, brightness as one factor for all bands
      (illumination) and contrast around each band's own mean (not the mean over bands, which
      would pull bands of different levels towards each other);
    - grayscale (colour removed so that shape must do) -> gaussian noise with probability
      ``noise_p`` (std up to ``noise_std`` of the range): removing the spectrum would erase
      classes that differ only outside the visible bands, while sensor noise is a nuisance
      every band has;
    - solarize (inverting bright pixels) -> dropped: an inverted reflectance is not a
      plausible observation of any scene.

    Crops, flips, quarter turns and blur are kept as in BYOL (geometry is band-agnostic).
    """

    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    band_gain: float = 0.1
    jitter_p: float = 0.8
    noise_p: float = 0.2
    noise_std: float = 0.03
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)


# BYOL's asymmetry is kept through the blur probabilities (always vs rarely).
BAND_VIEW1 = BandViewParams(blur_p=1.0)
BAND_VIEW2 = BandViewParams(blur_p=0.1)


def band_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    band_gain: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """Per-sample brightness and contrast plus a per-(sample, band) gain, with probability
    ``p`` per sample (see :class:`BandViewParams` for why each).

    Factors are uniform in ``[1 - a, 1 + a]`` like torchvision's ColorJitter; the order is
    gain, brightness, contrast.

    Args:
        x: (B, C, H, W) float, 0..255.
        generator: random source on ``x.device``.
        brightness: strength of the brightness factor (shared by all bands of a sample).
        contrast: strength of the contrast factor (each band around its own mean).
        band_gain: strength of the independent per-band gain.
        p: probability that a sample is jittered at all.

    Returns:
        Jittered batch, same shape, values in 0..255.
    """
    _check(x)
    b, c = x.shape[:2]
    f_bright = _uniform(b, max(0.0, 1 - brightness), 1 + brightness, generator, x)
    f_contrast = _uniform(b, max(0.0, 1 - contrast), 1 + contrast, generator, x)
    f_gain = _uniform(b * c, max(0.0, 1 - band_gain), 1 + band_gain, generator, x).view(b, c)
    apply = _bernoulli(b, p, generator, x)
    scale = (f_gain * f_bright.view(-1, 1)).to(x.dtype).view(b, c, 1, 1)
    out = torch.clamp(x * scale, 0.0, 255.0)
    mean = out.mean(dim=(2, 3), keepdim=True)
    out = _blend(out, mean, f_contrast)
    return torch.where(apply.view(-1, 1, 1, 1), out, x)


def gaussian_noise(
    x: torch.Tensor, generator: torch.Generator, std: float = 0.03, p: float = 0.2
) -> torch.Tensor:
    """Add zero-mean gaussian noise with a per-sample std uniform in ``[0, std * 255]`` to
    each sample with probability ``p`` (clamped to 0..255).
    """
    _check(x)
    b = x.shape[0]
    sigma = _uniform(b, 0.0, std * 255.0, generator, x)
    apply = _bernoulli(b, p, generator, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    noisy = torch.clamp(x + noise.to(x.dtype) * sigma.view(-1, 1, 1, 1).to(x.dtype), 0.0, 255.0)
    return torch.where(apply.view(-1, 1, 1, 1), noisy, x)


def band_view(
    x: torch.Tensor, params: BandViewParams, generator: torch.Generator, out_size: int
) -> torch.Tensor:
    """One band-agnostic random view of every image: crop, flips/rotation, band jitter,
    noise, blur (see :class:`BandViewParams`).

    Args:
        x: (B, C, H, W) float, 0..255, any number of bands.
        params: the view distribution.
        generator: random source on ``x.device``.
        out_size: side of the square output.

    Returns:
        (B, C, out_size, out_size), 0..255.
    """
    v = random_resized_crop(x, out_size, generator, scale=params.scale)
    v = random_flip_rot90(v, generator, params.hflip, params.vflip, params.rot90)
    v = band_jitter(v, generator, params.brightness, params.contrast, params.band_gain,
                    p=params.jitter_p)
    v = gaussian_noise(v, generator, params.noise_std, p=params.noise_p)
    v = gaussian_blur(v, generator, params.blur_sigma, p=params.blur_p)
    return v.clamp_(0.0, 255.0)


def view_recipe(in_channels: int, bands: list[str] | None) -> str:
    """Which view recipe a project gets: ``rgb`` (BYOL's, exactly) for 8-bit projects read
    with Pillow (``bands`` None) and for a band selection that is exactly red, green, blue;
    ``bands`` for every other band set."""
    if bands is None:
        return "rgb"
    rgb = [b.lower() for b in bands] in (["b04", "b03", "b02"], ["red", "green", "blue"])
    return "rgb" if rgb and in_channels == 3 else "bands"


def make_views(
    x: torch.Tensor, generator: torch.Generator, out_size: int | None = None,
    recipe: str = "rgb",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two BYOL views of a batch with the project's recipe (see :func:`view_recipe`).

    Args:
        x: (B, C, H, W) float, 0..255.
        generator: random source on ``x.device``.
        out_size: output side; default the input's smaller side.
        recipe: ``rgb``, BYOL's recipe exactly (:func:`alft_cli.augment.byol_views`), or
            ``bands``, the band-agnostic views of :class:`BandViewParams`.

    Returns:
        ``(view1, view2)``, each (B, C, out_size, out_size), 0..255.
    """
    if recipe == "rgb":
        return byol_views(x, generator, out_size)
    if recipe != "bands":
        raise ValueError(f"unknown view recipe {recipe!r}: use rgb or bands")
    size = out_size if out_size is not None else min(x.shape[-2:])
    return band_view(x, BAND_VIEW1, generator, size), band_view(x, BAND_VIEW2, generator, size)
