"""Batched augmentations with independent random parameters for every sample.

torchvision's transforms draw one set of random parameters per call, so applied to a batch
tensor every image gets the same crop, flip and colour change; BYOL needs a different view
of every image. These functions draw per-sample parameters as tensors and apply them with
vectorised tensor ops on the batch's own device: no Python loop over samples, no copy to or
from the CPU, no device synchronisation (constants are built on the device or passed as Python
scalars), so the GPU never waits for the host.

Conventions: images are float (B, C, H, W) with values in 0..255 (uint8 pixels cast to float,
what ``models.Normalize`` expects); outputs keep dtype, device and value range. Every random
draw comes from the ``torch.Generator`` passed in, which must live on the batch's device, so
a run is reproducible and can be resumed by saving the generator state.

References:
    Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020 (Appendix B: the two view
    distributions). Moellenbrok & Demir, IGARSS 2023 (fine-tuning augmentation: horizontal
    flip and rotations by multiples of 90 degrees).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, the weights of torchvision's rgb_to_grayscale


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=like.device, dtype=torch.float32)
    return low + (high - low) * u


def _bernoulli(n: int, p: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=like.device) < p


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise TypeError(f"expected a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")


# ---------------------------------------------------------------- geometry


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """Per-sample RandomResizedCrop boxes, torchvision's rule vectorised.

    Like ``torchvision.transforms.RandomResizedCrop.get_params``: up to ``attempts`` draws
    of (area fraction, log aspect ratio) per sample, the first that fits wins; samples where
    none fits fall back to the largest centre crop within ``ratio``. All attempts are drawn
    at once and the first valid one picked with ``argmax``, which avoids a loop.

    Returns:
        (B, 4) float boxes ``(x1, y1, x2, y2)`` in pixel units (a box ``(0, 0, W, H)`` is
        the whole image).
    """
    area = height * width
    shape = (batch, attempts)
    u_area = torch.rand(shape, generator=generator, device=device)
    u_ratio = torch.rand(shape, generator=generator, device=device)
    u_pos = torch.rand((batch, 2), generator=generator, device=device)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first valid attempt (0 if none)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Fallback: the centre crop torchvision takes when no attempt fits.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    # torch.randint(0, H - h + 1) per sample, from a uniform draw.
    y1 = torch.where(any_ok, torch.floor(u_pos[:, 0] * (height - h + 1)), (height - h) // 2)
    x1 = torch.where(any_ok, torch.floor(u_pos[:, 1] * (width - w + 1)), (width - w) // 2)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def crop_resize(
    x: torch.Tensor, boxes: torch.Tensor, out_size: int | tuple[int, int]
) -> torch.Tensor:
    """Resample box ``boxes[i]`` of image ``i`` to ``out_size`` with ``roi_align``.

    ``roi_align`` (aligned=True) samples each output pixel bilinearly and averages
    ``ceil(box / out)`` samples per axis when shrinking, which acts as the antialiasing that
    torchvision's resize does; a box covering the whole image at the same size is the
    identity. Values stay within the input's range (convex combinations of pixels).

    Args:
        x: (B, C, H, W) float.
        boxes: (B, 4) ``(x1, y1, x2, y2)`` in pixels.
        out_size: output side or (height, width).

    Returns:
        (B, C, out_h, out_w), same dtype.
    """
    _check(x)
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    # Float32 throughout: box corners up to a few hundred pixels need more precision than
    # bfloat16 has, and roi_align wants input and boxes of one dtype.
    idx = torch.arange(x.shape[0], device=x.device, dtype=torch.float32).unsqueeze(1)
    rois = torch.cat([idx, boxes.to(device=x.device, dtype=torch.float32)], dim=1)
    out = roi_align(x.float(), rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out.to(x.dtype)


def random_resized_crop(
    x: torch.Tensor,
    out_size: int | tuple[int, int],
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop with a different box for every sample.

    Args:
        x: (B, C, H, W) float, 0..255.
        out_size: output side or (height, width).
        generator: random source on ``x.device``.
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio (width / height).

    Returns:
        (B, C, out_h, out_w) crops.
    """
    _check(x)
    b, _, h, w = x.shape
    boxes = sample_crop_boxes(b, h, w, generator, scale, ratio, device=x.device)
    return crop_resize(x, boxes, out_size)


# The eight symmetries of a square (the dihedral group D4), each written as
# "transpose (t), then flip rows (r), then flip columns (c)": code = t + 2 r + 4 c.
# Cached: the index maps are rebuilt only for a new size or device.
@functools.lru_cache(maxsize=16)
def _dihedral_maps(size: int, device: torch.device) -> torch.Tensor:
    grid = torch.arange(size * size, device=device).view(size, size)
    maps = []
    for code in range(8):
        g = grid.t() if code & 1 else grid
        if code & 2:
            g = g.flip(0)
        if code & 4:
            g = g.flip(1)
        maps.append(g.reshape(-1))
    return torch.stack(maps)  # (8, size*size): out.flat[p] = x.flat[maps[code, p]]


def apply_dihedral(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Apply symmetry ``code[i]`` (0..7, see ``dihedral_code``) to image ``i`` of a square batch.

    One gather moves every pixel once, whatever mix of flips and rotations the batch holds.
    """
    b, c, h, w = x.shape
    if h != w and bool(((code & 1) != 0).any()):  # a device sync, but only on this error path
        raise ValueError(f"rotations by 90 degrees need square images, got {h}x{w}")
    maps = _dihedral_maps(h, x.device) if h == w else _flip_maps(h, w, x.device)
    index = maps[code.long()]  # (B, H*W)
    out = x.reshape(b, c, h * w).gather(2, index.unsqueeze(1).expand(b, c, h * w))
    return out.view(b, c, h, w)


@functools.lru_cache(maxsize=16)
def _flip_maps(h: int, w: int, device: torch.device) -> torch.Tensor:
    # Non-square images: only the codes without a transpose exist; odd codes are never used.
    grid = torch.arange(h * w, device=device).view(h, w)
    maps = []
    for code in range(8):
        g = grid.flip(0) if code & 2 else grid
        g = g.flip(1) if code & 4 else g
        maps.append(g.reshape(-1))
    return torch.stack(maps)


def dihedral_code(
    hflip: torch.Tensor | None = None,
    vflip: torch.Tensor | None = None,
    rot90_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """Compose per-sample ops ``hflip``, then ``vflip``, then ``torch.rot90(k)`` into D4 codes.

    Args:
        hflip: (B,) bool, flip left-right.
        vflip: (B,) bool, flip up-down.
        rot90_k: (B,) int in 0..3, counter-clockwise quarter turns as ``torch.rot90``.

    Returns:
        (B,) int64 codes for ``apply_dihedral``.
    """
    ref = next(t for t in (hflip, vflip, rot90_k) if t is not None)
    zeros = torch.zeros(ref.shape[0], dtype=torch.long, device=ref.device)
    t, r, c = zeros, zeros, zeros
    if hflip is not None:
        c = c ^ hflip.long()
    if vflip is not None:
        r = r ^ vflip.long()
    if rot90_k is not None:
        k = rot90_k.long() % 4
        for i in range(3):
            # torch.rot90(k=1) = transpose after a column flip = row flip after a transpose;
            # prepending it to "c-flip r-flip transpose" swaps the flips (transposing turns a
            # row flip into a column flip) and toggles the transpose.
            turn = k > i
            t, r, c = (
                torch.where(turn, t ^ 1, t),
                torch.where(turn, c ^ 1, r),
                torch.where(turn, r, c),
            )
    return t + 2 * r + 4 * c


def random_flip_rot90(
    x: torch.Tensor,
    generator: torch.Generator,
    hflip: float = 0.5,
    vflip: float = 0.0,
    rot90: bool = True,
) -> torch.Tensor:
    """Per-sample random horizontal/vertical flips and quarter turns, in one gather.

    Args:
        x: (B, C, H, W); must be square when ``rot90``.
        generator: random source on ``x.device``.
        hflip: probability of a left-right flip.
        vflip: probability of an up-down flip.
        rot90: rotate by k * 90 degrees, k uniform in {0, 1, 2, 3}.

    Returns:
        Transformed batch, same shape.
    """
    _check(x)
    b = x.shape[0]
    if rot90 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotations by 90 degrees need square images, got {tuple(x.shape[-2:])}")
    h = _bernoulli(b, hflip, generator, x)
    v = _bernoulli(b, vflip, generator, x)
    k = None
    if rot90:
        k = torch.randint(0, 4, (b,), generator=generator, device=x.device)
    return apply_dihedral(x, dihedral_code(h, v, k))


# ---------------------------------------------------------------- colour


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) -> HSV with hue in [0, 1), saturation in [0, 1], value as input.

    Scale-free: value keeps the input's scale (0..255 here), as torchvision's ``_rgb2hsv``
    does for 0..1.
    """
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)  # amax, not max: max(dim) also computes indices, several times slower
    minc = x.amin(dim=1)
    delta = maxc - minc
    gray = delta == 0
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    d = torch.where(gray, torch.ones_like(delta), delta)
    # Hue sector by which channel is the max (ties: red, then green, as torchvision).
    h = torch.where(
        maxc == r,
        (g - b) / d,
        torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d),
    )
    h = torch.where(gray, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV (B, 3, H, W) as returned by ``rgb_to_hsv`` -> RGB on the value's scale.

    Closed form ``f(n) = v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``
    for n = 5, 3, 1 (R, G, B): one broadcast expression, no per-sector masks.
    """
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _hue_wheel(6.0 * h, v, v * s)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of an RGB batch."""
    # Python scalars, not a weight tensor: building a small CUDA tensor from a list is a
    # blocking host-to-device copy on every call.
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # torchvision's _blend: factor * x + (1 - factor) * other, clamped to the pixel range.
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    return torch.clamp(f * x + (1.0 - f) * other, 0.0, 255.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB image ``i`` by ``shift[i]`` turns (in [-0.5, 0.5]).

    ``hsv_to_rgb(h + shift, s, v)`` of ``rgb_to_hsv(x)``, fused: with ``v = max`` and
    ``v s = max - min`` (the chroma) the saturation never needs to be formed, which saves a
    third of the work of the two separate conversions.
    """
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    chroma = maxc - x.amin(dim=1)
    # Grey pixels (chroma 0) have numerators 0 too; any finite hue gives back the grey.
    d = chroma.clamp_min(torch.finfo(x.dtype).tiny)
    h6 = torch.where(
        maxc == r, (g - b) / d, torch.where(maxc == g, (b - r) / d + 2.0, (r - g) / d + 4.0)
    )
    h6 = (h6 + 6.0 * shift.view(-1, 1, 1).to(x.dtype)).unsqueeze(1)
    return _hue_wheel(h6, maxc.unsqueeze(1), chroma.unsqueeze(1))


def _hue_wheel(h6: torch.Tensor, v: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    # f(n) = v - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1 (R, G, B).
    n = torch.arange(5, 0, -2, device=h6.device, dtype=h6.dtype).view(1, 3, 1, 1)  # 5, 3, 1
    k = torch.remainder(n + h6, 6.0)
    return v - chroma * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """ColorJitter with per-sample factors, applied to each sample with probability ``p``.

    Factors are drawn as in torchvision: brightness, contrast, saturation uniform in
    ``[1 - a, 1 + a]``, hue shift uniform in ``[-hue, hue]``. torchvision (and BYOL) apply
    the four in a random order; here the order is fixed (brightness, contrast, saturation,
    hue), because a per-sample order would evaluate every operation at every position (four
    HSV round trips) and a per-batch one needs the order on the host (a device sync). The
    factors, which carry the augmentation's strength, are still per sample.

    Saturation and hue need RGB; for other band counts they are skipped and contrast blends
    with the mean over all bands.

    Args:
        x: (B, C, H, W) float, 0..255.
        generator: random source on ``x.device``.
        brightness: strength a of the brightness factor.
        contrast: strength of the contrast factor.
        saturation: strength of the saturation factor (RGB only).
        hue: largest hue shift in turns (RGB only).
        p: probability that a sample is jittered at all.

    Returns:
        Jittered batch, same shape, values in 0..255.
    """
    _check(x)
    b = x.shape[0]
    # Draw every factor whether used or not, so the stream of random numbers (and thus the
    # rest of a run) does not depend on which operations are switched on.
    f_bright = _uniform(b, max(0.0, 1 - brightness), 1 + brightness, generator, x)
    f_contrast = _uniform(b, max(0.0, 1 - contrast), 1 + contrast, generator, x)
    f_sat = _uniform(b, max(0.0, 1 - saturation), 1 + saturation, generator, x)
    f_hue = _uniform(b, -hue, hue, generator, x)
    apply = _bernoulli(b, p, generator, x)
    out = adjust_colors(
        x,
        f_bright if brightness > 0 else None,
        f_contrast if contrast > 0 else None,
        f_sat if saturation > 0 else None,
        f_hue if hue > 0 else None,
    )
    return torch.where(apply.view(-1, 1, 1, 1), out, x)


def adjust_colors(
    x: torch.Tensor,
    brightness: torch.Tensor | None = None,
    contrast: torch.Tensor | None = None,
    saturation: torch.Tensor | None = None,
    hue: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply given per-sample colour factors in the order brightness, contrast, saturation, hue.

    Each step is torchvision's ``adjust_*`` on the 0..255 scale with factor ``[i]`` for
    sample ``i`` (``None`` skips it). Saturation and hue are skipped unless ``x`` is RGB.

    Args:
        x: (B, C, H, W) float, 0..255.
        brightness: (B,) factors, 1 = unchanged.
        contrast: (B,) factors, 1 = unchanged.
        saturation: (B,) factors, 1 = unchanged.
        hue: (B,) hue shifts in turns, 0 = unchanged.

    Returns:
        Adjusted batch, values in 0..255.
    """
    rgb = x.shape[1] == 3
    out = x
    if brightness is not None:
        out = torch.clamp(out * brightness.view(-1, 1, 1, 1).to(x.dtype), 0.0, 255.0)
    if contrast is not None:
        ref = grayscale(out) if rgb else out
        out = _blend(out, ref.mean(dim=(1, 2, 3), keepdim=True), contrast)
    if rgb and saturation is not None:
        out = _blend(out, grayscale(out), saturation)
    if rgb and hue is not None:
        out = adjust_hue(out, hue)
    return out


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Replace RGB sample ``i`` by its luma (in all three bands) with probability ``p``.

    Non-RGB batches are returned unchanged (the random draw is still made).
    """
    _check(x)
    apply = _bernoulli(x.shape[0], p, generator, x)
    if x.shape[1] != 3 or p <= 0:
        return x
    return torch.where(apply.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


def gaussian_blur(
    x: torch.Tensor,
    generator: torch.Generator,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 1.0,
    kernel_size: int | None = None,
) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma, applied with probability ``p``.

    Separable (a vertical then a horizontal 1-D kernel) on the reflect-padded batch, as
    torchvision's ``gaussian_blur``; each sample gets its own kernel through a depthwise
    convolution.

    Args:
        x: (B, C, H, W) float.
        generator: random source on ``x.device``.
        sigma: range of the per-sample standard deviation, in pixels (BYOL: 0.1..2.0).
        p: probability that a sample is blurred.
        kernel_size: odd kernel side; default about 10% of the image side, as BYOL's 23 px
            at 224 px.

    Returns:
        Blurred batch, same shape.
    """
    _check(x)
    b, c, h, w = x.shape
    sig = _uniform(b, sigma[0], sigma[1], generator, x)
    apply = _bernoulli(b, p, generator, x)
    if p <= 0:
        return x
    if kernel_size is None:
        kernel_size = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    return torch.where(apply.view(-1, 1, 1, 1), blur_with_sigma(x, sig, kernel_size), x)


def blur_with_sigma(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian blur of sample ``i`` with standard deviation ``sigma[i]`` (pixels).

    Same kernel and reflect padding as ``torchvision.transforms.functional.gaussian_blur``.

    Args:
        x: (B, C, H, W) float.
        sigma: (B,) positive.
        kernel_size: odd kernel side (reduced to fit images smaller than the kernel).

    Returns:
        Blurred batch, same shape.
    """
    b, c, h, w = x.shape
    sig = sigma.to(device=x.device, dtype=torch.float32)
    radius = min(kernel_size // 2, h - 1, w - 1)  # reflect padding needs pad < side
    if radius < 1:
        return x
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2.0 * sig.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype)  # (B, K)
    # One depthwise group per (image, band): the batch folds into the channel axis, so a
    # single convolution applies B different kernels.
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, K)
    size = 2 * radius + 1
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    padded = padded.reshape(1, b * c, h + 2 * radius, w + 2 * radius)
    out = F.conv2d(padded, kernel.view(b * c, 1, size, 1), groups=b * c)
    return F.conv2d(out, kernel.view(b * c, 1, 1, size), groups=b * c).view(b, c, h, w)


def random_solarize(
    x: torch.Tensor, generator: torch.Generator, p: float = 0.2, threshold: float = 128.0
) -> torch.Tensor:
    """Invert pixels at or above ``threshold`` (``255 - x``) of each sample with probability ``p``.

    BYOL's threshold is 0.5 on a 0..1 scale, 128 on 0..255.
    """
    _check(x)
    apply = _bernoulli(x.shape[0], p, generator, x)
    if p <= 0:
        return x
    return torch.where(apply.view(-1, 1, 1, 1) & (x >= threshold), 255.0 - x, x)


# ---------------------------------------------------------------- recipes


@dataclass(frozen=True)
class ViewParams:
    """One BYOL view distribution (Grill et al., Table 6) plus overhead-imagery symmetries."""

    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


# BYOL's asymmetric pair: view 1 always blurred, never solarised; view 2 rarely blurred,
# sometimes solarised. Remote-sensing scenes have no "up", so both add vertical flips and
# quarter turns.
BYOL_VIEW1 = ViewParams(blur_p=1.0, solarize_p=0.0)
BYOL_VIEW2 = ViewParams(blur_p=0.1, solarize_p=0.2)


def augment_view(
    x: torch.Tensor, params: ViewParams, generator: torch.Generator, out_size: int
) -> torch.Tensor:
    """One random view of every image: crop, flips/rotation, colour, blur, solarize.

    Args:
        x: (B, C, H, W) float, 0..255; the batch may be larger than ``out_size``.
        params: the view distribution.
        generator: random source on ``x.device``.
        out_size: side of the square output.

    Returns:
        (B, C, out_size, out_size), 0..255.
    """
    v = random_resized_crop(x, out_size, generator, scale=params.scale)
    v = random_flip_rot90(v, generator, params.hflip, params.vflip, params.rot90)
    bri, con, sat, hue = params.jitter
    v = color_jitter(v, generator, bri, con, sat, hue, p=params.jitter_p)
    v = random_grayscale(v, generator, params.grayscale_p)
    v = gaussian_blur(v, generator, params.blur_sigma, p=params.blur_p)
    v = random_solarize(v, generator, params.solarize_p)
    # Every step keeps values in range up to float rounding (weights summing to 1 + 1e-7);
    # clamp so that the documented 0..255 holds exactly.
    return v.clamp_(0.0, 255.0)


def byol_views(
    x: torch.Tensor, generator: torch.Generator, out_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BYOL's two augmented views of a batch (Grill et al., Appendix B, Table 6).

    For band sets other than RGB, :func:`alft_cli.augment_bands.make_views` picks the
    band-agnostic views instead.

    Args:
        x: (B, C, H, W) float, 0..255.
        generator: random source on ``x.device``.
        out_size: output side; default the input's smaller side.

    Returns:
        ``(view1, view2)``, each (B, C, out_size, out_size), 0..255.
    """
    size = out_size if out_size is not None else min(x.shape[-2:])
    return (
        augment_view(x, BYOL_VIEW1, generator, size),
        augment_view(x, BYOL_VIEW2, generator, size),
    )


def finetune_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's fine-tuning augmentation: random horizontal flip and rotation by 0, 90,
    180 or 270 degrees, per sample (Moellenbrok & Demir, IGARSS 2023). Square images only.
    """
    return random_flip_rot90(x, generator, hflip=0.5, vflip=0.0, rot90=True)
