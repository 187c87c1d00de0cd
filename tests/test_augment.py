"""Per-sample batched augmentations: independence, exactness, range, reproducibility."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import _functional_tensor as FT

from alft_cli import augment as A
from alft_cli import augment_bands as B

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 4, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, size, size, generator=g) * 255


def _d4(img: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(f, k, dims=(-2, -1)) for f in (img, img.flip(-1)) for k in range(4)]


# ------------------------------------------------------------------ geometry


def test_crop_boxes_follow_torchvision_rule():
    boxes = A.sample_crop_boxes(2000, 40, 30, _gen(), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 30).all() and (y2 <= 40).all()
    assert torch.equal(boxes, boxes.round())  # integer pixel boxes, like torchvision
    area = w * h / (40 * 30)
    # Rounding w and h to pixels moves area and ratio slightly outside the nominal ranges.
    assert area.min() > 0.06 and area.max() <= 1.0
    assert (w / h).min() > 0.7 and (w / h).max() < 1.45
    assert len({tuple(b.tolist()) for b in boxes}) > 1500  # per sample, not one per batch


def test_crop_fallback_is_centre_crop():
    # Twice the image's area never fits: every sample takes torchvision's fallback, the
    # largest centre crop with ratio 3/4 of a 10-wide, 40-high image: 10 x round(10 / 0.75).
    boxes = A.sample_crop_boxes(5, 40, 10, _gen(), scale=(2.0, 2.0))
    assert torch.equal(boxes, torch.tensor([[0.0, 13.0, 10.0, 26.0]]).expand(5, 4))


def test_full_box_crop_resize_is_identity():
    x = _images(2, size=16)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(2, 4)
    assert torch.allclose(A.crop_resize(x, boxes, 16), x, atol=1e-4)
    # Half-size box, upsampled 2x: the centre of each output pixel pair maps inside the box.
    small = A.crop_resize(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]).expand(2, 4), 8)
    assert torch.allclose(small, x[:, :, :8, :8], atol=1e-4)


def test_random_resized_crop_per_sample_and_shapes():
    one = _images(1, size=32)
    x = one.expand(6, -1, -1, -1).contiguous()  # six copies of the same image
    out = A.random_resized_crop(x, 24, _gen())
    assert out.shape == (6, 3, 24, 24) and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 255
    assert not torch.allclose(out[0], out[1])  # different crops for identical inputs


@pytest.mark.parametrize(("h", "v", "k"), list(itertools.product([0, 1], [0, 1], range(4))))
def test_dihedral_code_matches_torch_ops(h, v, k):
    img = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    expected = img
    if h:
        expected = expected.flip(-1)
    if v:
        expected = expected.flip(-2)
    expected = torch.rot90(expected, k, dims=(-2, -1))
    code = A.dihedral_code(torch.tensor([bool(h)]), torch.tensor([bool(v)]), torch.tensor([k]))
    assert torch.equal(A.apply_dihedral(img, code), expected)


def test_hand_made_rot90_and_flip():
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    rot = A.apply_dihedral(img, A.dihedral_code(rot90_k=torch.tensor([1])))
    assert rot.view(2, 2).tolist() == [[2.0, 4.0], [1.0, 3.0]]  # counter-clockwise
    flip = A.apply_dihedral(img, A.dihedral_code(hflip=torch.tensor([True])))
    assert flip.view(2, 2).tolist() == [[2.0, 1.0], [4.0, 3.0]]


def test_flip_rot_is_per_sample_symmetry():
    one = _images(1, size=8)
    x = one.expand(64, -1, -1, -1).contiguous()
    out = A.random_flip_rot90(x, _gen(), hflip=0.5, vflip=0.5)
    candidates = _d4(one[0])
    seen = set()
    for sample in out:
        matches = [i for i, c in enumerate(candidates) if torch.equal(sample, c)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 8  # all eight symmetries occur in one batch


def test_finetune_augment():
    x = _images(32, size=8)
    out = A.finetune_augment(x, _gen())
    assert out.shape == x.shape
    for a, b in zip(x, out, strict=True):
        assert any(torch.equal(b, c) for c in _d4(a))
    assert not torch.equal(out, x)


def test_rot90_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        A.random_flip_rot90(torch.zeros(2, 3, 4, 6), _gen())
    out = A.random_flip_rot90(torch.zeros(2, 3, 4, 6), _gen(), vflip=0.5, rot90=False)
    assert out.shape == (2, 3, 4, 6)


# ------------------------------------------------------------------ colour


def test_hsv_round_trip_and_torchvision_agreement():
    x = _images(3, size=16)
    x[0, :, :4, :4] = 100.0  # grey pixels (no hue)
    x[1, 0, :4, :4] = x[1, 1, :4, :4]  # ties between channels
    hsv = A.rgb_to_hsv(x)
    assert torch.allclose(A.hsv_to_rgb(hsv), x, atol=1e-3)
    reference = FT._rgb2hsv(x / 255)
    assert torch.allclose(hsv[:, :2], reference[:, :2], atol=1e-5)
    assert torch.allclose(hsv[:, 2] / 255, reference[:, 2], atol=1e-6)


def test_colour_adjustments_match_torchvision_per_sample():
    x = _images(3, size=12)
    bri = torch.tensor([0.7, 1.0, 1.3])
    con = torch.tensor([1.2, 0.6, 1.0])
    sat = torch.tensor([0.8, 1.2, 0.0])
    hue = torch.tensor([0.1, -0.05, 0.0])
    out = A.adjust_colors(x, bri, con, sat, hue)
    for i in range(3):
        ref = x[i] / 255
        ref = TF.adjust_brightness(ref, bri[i].item())
        ref = TF.adjust_contrast(ref, con[i].item())
        ref = TF.adjust_saturation(ref, sat[i].item())
        ref = TF.adjust_hue(ref, hue[i].item())
        assert torch.allclose(out[i] / 255, ref, atol=1e-4), i


def test_color_jitter_per_sample_probability_and_bands():
    one = _images(1, size=8)
    x = one.expand(16, -1, -1, -1).contiguous()
    out = A.color_jitter(x, _gen(), p=0.5)
    changed = [not torch.equal(o, one[0]) for o in out]
    assert 0 < sum(changed) < 16  # some kept exactly, some jittered
    jittered = out[torch.tensor(changed)]
    assert not torch.allclose(jittered[0], jittered[1])
    assert out.min() >= 0 and out.max() <= 255
    # Four bands: brightness and contrast only, no RGB-only ops.
    x4 = _images(4, c=4, size=8)
    out4 = A.color_jitter(x4, _gen(), p=1.0)
    assert out4.shape == x4.shape and not torch.equal(out4, x4)


def test_grayscale_and_solarize():
    x = _images(8, size=8)
    gray = A.random_grayscale(x, _gen(), p=1.0)
    assert torch.allclose(gray, TF.rgb_to_grayscale(x / 255, 3) * 255, atol=1e-3)
    sol = A.random_solarize(x, _gen(), p=1.0)
    assert torch.equal(sol, torch.where(x >= 128, 255 - x, x))
    assert torch.equal(A.random_solarize(x, _gen(), p=0.0), x)
    x4 = _images(2, c=4, size=8)
    assert torch.equal(A.random_grayscale(x4, _gen(), p=1.0), x4)


def test_blur_matches_torchvision_per_sample():
    x = _images(3, size=16)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = A.blur_with_sigma(x, sigma, kernel_size=7)
    for i in range(3):
        ref = TF.gaussian_blur(x[i : i + 1], [7, 7], [sigma[i].item()] * 2)
        assert torch.allclose(out[i : i + 1], ref, atol=1e-3), i
    const = torch.full((2, 3, 8, 8), 77.0)
    blurred = A.gaussian_blur(const, _gen(), p=1.0)
    assert torch.allclose(blurred, const, atol=1e-3)


# ------------------------------------------------------------------ recipes


@pytest.mark.parametrize("channels", [3, 4])
def test_byol_views_shapes_range_independence(channels):
    one = _images(1, c=channels, size=40)
    x = one.expand(8, -1, -1, -1).contiguous()
    v1, v2 = A.byol_views(x, _gen(), out_size=32)
    for v in (v1, v2):
        assert v.shape == (8, channels, 32, 32)
        assert v.dtype == x.dtype and v.device == x.device
        assert v.min() >= 0 and v.max() <= 255
        assert torch.isfinite(v).all()
        assert not torch.allclose(v[0], v[1])  # identical inputs, different views
    assert not torch.allclose(v1, v2)


def test_byol_views_reproducible_from_generator_state():
    x = _images(4, size=32)
    a = A.byol_views(x, _gen(7), 24)
    b = A.byol_views(x, _gen(7), 24)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    # Resuming from a saved state gives the same next batch.
    g = _gen(3)
    A.byol_views(x, g, 24)
    state = g.get_state()
    first = A.byol_views(x, g, 24)
    g2 = torch.Generator()
    g2.set_state(state)
    again = A.byol_views(x, g2, 24)
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    c = A.byol_views(x, _gen(8), 24)
    assert not torch.equal(a[0], c[0])


def test_view_distributions_are_byol_table_6():
    assert A.BYOL_VIEW1.blur_p == 1.0 and A.BYOL_VIEW1.solarize_p == 0.0
    assert A.BYOL_VIEW2.blur_p == 0.1 and A.BYOL_VIEW2.solarize_p == 0.2
    for view in (A.BYOL_VIEW1, A.BYOL_VIEW2):
        assert view.jitter == (0.4, 0.4, 0.2, 0.1) and view.jitter_p == 0.8
        assert view.grayscale_p == 0.2 and view.hflip == 0.5 and view.scale == (0.08, 1.0)
        assert math.isclose(view.vflip, 0.5) and view.rot90


def test_rejects_non_float():
    with pytest.raises(TypeError):
        A.byol_views(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), _gen())


# ------------------------------------------------------------------ band-agnostic views


def test_rgb_recipe_is_byol_exactly():
    x = _images(4, size=32)
    default = A.byol_views(x, _gen(5), 24)
    explicit = B.make_views(x, _gen(5), 24, recipe="rgb")
    assert all(torch.equal(p, q) for p, q in zip(default, explicit, strict=True))
    with pytest.raises(ValueError, match="unknown view recipe"):
        B.make_views(x, _gen(), 24, recipe="hsv")


def test_view_recipe_choice():
    assert B.view_recipe(3, None) == "rgb"  # 8-bit projects read with Pillow: BYOL as ever
    assert B.view_recipe(4, None) == "rgb"
    assert B.view_recipe(3, ["B04", "B03", "B02"]) == "rgb"
    assert B.view_recipe(3, ["red", "green", "blue"]) == "rgb"
    assert B.view_recipe(3, ["B08", "B04", "B03"]) == "bands"
    assert B.view_recipe(12, [f"B{i:02d}" for i in range(12)]) == "bands"


@pytest.mark.parametrize("channels", [1, 3, 12])
def test_band_views_shapes_range_independence_reproducible(channels):
    one = _images(1, c=channels, size=40)
    x = one.expand(8, -1, -1, -1).contiguous()
    v1, v2 = B.make_views(x, _gen(2), out_size=32, recipe="bands")
    for v in (v1, v2):
        assert v.shape == (8, channels, 32, 32) and v.dtype == x.dtype
        assert v.min() >= 0 and v.max() <= 255 and torch.isfinite(v).all()
        assert not torch.allclose(v[0], v[1])
    again = B.make_views(x, _gen(2), out_size=32, recipe="bands")
    assert torch.equal(v1, again[0]) and torch.equal(v2, again[1])


def test_band_jitter_contrast_keeps_each_band_mean_and_gain_is_per_band():
    x = _images(6, c=5, size=16, seed=1) * 0.5 + 40  # away from the clamp at 0 and 255
    # Contrast alone: every band keeps its own mean (it is blended with it, not the gray).
    out = B.band_jitter(x, _gen(), brightness=0.0, contrast=0.4, band_gain=0.0, p=1.0)
    torch.testing.assert_close(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), rtol=1e-5, atol=1e-3)
    assert not torch.allclose(out, x)
    # Gain alone: each band is scaled by its own factor within +-10%.
    out = B.band_jitter(x, _gen(), brightness=0.0, contrast=0.0, band_gain=0.1, p=1.0)
    ratio = out / x
    per_band = ratio.mean(dim=(2, 3))
    torch.testing.assert_close(ratio, per_band[..., None, None].expand_as(ratio))
    assert per_band.min() >= 0.9 - 1e-6 and per_band.max() <= 1.1 + 1e-6
    assert per_band.std(dim=1).min() > 0  # bands differ within a sample
    # p = 0: unchanged.
    assert torch.equal(B.band_jitter(x, _gen(), p=0.0), x)


def test_gaussian_noise_strength_and_probability():
    x = torch.full((64, 2, 16, 16), 128.0)
    out = B.gaussian_noise(x, _gen(), std=0.03, p=0.5)
    changed = (out != x).flatten(1).any(dim=1)
    assert 16 < int(changed.sum()) < 48
    assert (out - x).abs().std() < 0.03 * 255
    assert torch.equal(B.gaussian_noise(x, _gen(), p=0.0), x)


def test_band_view_distributions():
    assert B.BAND_VIEW1.blur_p == 1.0 and B.BAND_VIEW2.blur_p == 0.1
    for view in (B.BAND_VIEW1, B.BAND_VIEW2):
        assert (view.brightness, view.contrast, view.band_gain) == (0.4, 0.4, 0.1)
        assert view.noise_p == 0.2 and view.scale == (0.08, 1.0) and view.rot90
