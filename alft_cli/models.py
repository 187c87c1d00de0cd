"""Backbones and the multi-label classifier.

The paper (Moellenbrok & Demir, "Active learning guided fine-tuning for enhancing
self-supervised based multi-label classification of remote sensing images", IGARSS 2023)
pretrains a DenseNet-121 with BYOL and fine-tunes it with a linear head and a binary
cross-entropy loss. Its query strategy (MGE+Clustering) needs the global-average-pooled
features ``h`` next to the logits, so the classifier returns both from one pass.

Backbones are plain torchvision models built with ``weights=None`` (nothing is ever
downloaded) whose ImageNet head is replaced by ``nn.Identity``. Keeping the torchvision module
itself, rather than re-assembling its parts, keeps the state-dict keys identical to
torchvision's, so a user-supplied torchvision checkpoint loads after dropping the head keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from alft_cli.errors import CheckpointError, OptionError


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one torchvision backbone and where its parts are.

    Attributes:
        builder: torchvision constructor, called with ``weights=None``.
        feature_dim: size D of the pooled features the backbone returns.
        first_conv: dotted path of the stem convolution (replaced for ``in_channels != 3``).
        head: dotted path of the ImageNet classifier (replaced by ``nn.Identity``); its
            state-dict keys are dropped when a torchvision checkpoint is loaded.
    """

    builder: Callable[..., nn.Module]
    feature_dim: int
    first_conv: str
    head: str


BACKBONES: dict[str, BackboneSpec] = {
    # The paper's backbone.
    "densenet121": BackboneSpec(tvm.densenet121, 1024, "features.conv0", "classifier"),
    "resnet18": BackboneSpec(tvm.resnet18, 512, "conv1", "fc"),
    "resnet34": BackboneSpec(tvm.resnet34, 512, "conv1", "fc"),
    "resnet50": BackboneSpec(tvm.resnet50, 2048, "conv1", "fc"),
    # MobileNetV3's classifier starts with a 576->1024 (960->1280) layer; the pooled features
    # before it are the representation, so the whole classifier goes.
    "mobilenet_v3_small": BackboneSpec(tvm.mobilenet_v3_small, 576, "features.0.0", "classifier"),
    "mobilenet_v3_large": BackboneSpec(tvm.mobilenet_v3_large, 960, "features.0.0", "classifier"),
    "efficientnet_b0": BackboneSpec(tvm.efficientnet_b0, 1280, "features.0.0", "classifier"),
    # ConvNeXt's classifier begins with a LayerNorm that belongs to the representation; only
    # the final Linear is the ImageNet head.
    "convnext_tiny": BackboneSpec(tvm.convnext_tiny, 768, "features.0.0", "classifier.2"),
}

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise OptionError(f"unknown backbone {name!r}; known backbones: {known}") from None


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    # nn.Sequential children are named "0", "1", ...; setattr registers them like any other.
    setattr(parent, attr, module)


def adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn an RGB stem-conv weight (O, 3, k, k) into one for ``in_channels`` inputs.

    Channels are repeated cyclically (R, G, B, R, ...) and scaled by ``3 / in_channels`` so the
    response to an input whose bands all look alike stays the same as for RGB; for one band
    this is the sum of the RGB kernels (the same rule as timm's ``adapt_input_conv``).

    Args:
        weight: the original weight, shape (O, 3, k, k).
        in_channels: number of input bands wanted.

    Returns:
        A new tensor of shape (O, in_channels, k, k).
    """
    rgb = weight.shape[1]
    if in_channels == rgb:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // rgb)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (rgb / in_channels)


def build_backbone(name: str, in_channels: int = 3) -> tuple[nn.Module, int]:
    """Build a randomly initialised backbone that returns pooled features.

    Args:
        name: a key of ``BACKBONES``.
        in_channels: number of input bands; the stem conv is rebuilt with the same
            configuration when it is not 3, initialised by ``adapt_conv_weight``.

    Returns:
        ``(module, D)``: the module maps a normalised (B, in_channels, H, W) float tensor to
        (B, D) global-average-pooled features. Its state-dict keys are torchvision's, minus
        the ImageNet head.

    Raises:
        OptionError: unknown name or ``in_channels < 1``.
    """
    spec = _spec(name)
    if in_channels < 1:
        raise OptionError(f"in_channels must be >= 1, got {in_channels}")
    model = spec.builder(weights=None)
    _set_submodule(model, spec.head, nn.Identity())
    if in_channels != 3:
        old = model.get_submodule(spec.first_conv)
        assert isinstance(old, nn.Conv2d)
        new = nn.Conv2d(
            in_channels,
            old.out_channels,
            kernel_size=old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            dilation=old.dilation,
            groups=old.groups,
            bias=old.bias is not None,
            padding_mode=old.padding_mode,
        )
        with torch.no_grad():
            new.weight.copy_(adapt_conv_weight(old.weight, in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        _set_submodule(model, spec.first_conv, new)
    return model, spec.feature_dim


# Old torchvision DenseNet checkpoints (the published ImageNet ones) name layers "norm.1"
# where the modules are now "norm1"; torchvision renames them the same way when it loads.
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def backbone_state_dict_from_torchvision(
    name: str, state_dict: Mapping[str, torch.Tensor], in_channels: int = 3
) -> dict[str, torch.Tensor]:
    """Map a plain torchvision state dict onto ``build_backbone(name, in_channels)``'s keys.

    Drops the ImageNet head, strips a DDP ``module.`` prefix, renames legacy DenseNet keys,
    and adapts an RGB stem conv to ``in_channels`` bands with ``adapt_conv_weight``.

    Args:
        name: a key of ``BACKBONES``.
        state_dict: e.g. ``torchvision.models.resnet18().state_dict()`` or a loaded ``.pth``.
        in_channels: the bands of the backbone it will be loaded into.

    Returns:
        A new dict, ready for ``load_state_dict_checked(backbone, sd, ...)``.
    """
    spec = _spec(name)
    items = dict(state_dict)
    if items and all(k.startswith("module.") for k in items):
        items = {k[len("module.") :]: v for k, v in items.items()}
    head = spec.head + "."
    out: dict[str, torch.Tensor] = {}
    for key, value in items.items():
        if key.startswith(head):
            continue
        if name.startswith("densenet"):
            match = _DENSENET_LEGACY.match(key)
            if match:
                key = match.group(1) + match.group(2)
        out[key] = value
    conv_key = spec.first_conv + ".weight"
    weight = out.get(conv_key)
    if weight is not None and weight.ndim == 4 and weight.shape[1] != in_channels:
        if weight.shape[1] != 3:
            raise CheckpointError(
                f"{conv_key} has {weight.shape[1]} input bands; only RGB weights can be "
                f"adapted to {in_channels} bands"
            )
        out[conv_key] = adapt_conv_weight(weight, in_channels)
    return out


def _first(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return shown + (f" (+{more} more)" if more > 0 else "")


def load_state_dict_checked(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str
) -> None:
    """Strictly load ``state_dict`` into ``module``, with a readable one-line error.

    ``nn.Module.load_state_dict`` reports mismatches as a multi-line RuntimeError that
    lists every key; users only need to see which file does not fit and a few examples.

    Args:
        module: the model to load into.
        state_dict: the weights.
        what: how to name the weights in the message (e.g. a file path).

    Raises:
        CheckpointError: keys missing or unexpected, or shapes that differ.
    """
    expected = module.state_dict()
    # BatchNorm fills in a missing num_batches_tracked itself for files written before it
    # existed (e.g. torchvision's published DenseNet weights); that is not a mismatch.
    missing = [
        k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")
    ]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict
        and hasattr(state_dict[k], "shape")
        and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches (file vs model): {_first(shapes)}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model; " + "; ".join(problems))
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # anything the checks above did not foresee
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what} does not fit the model; {first}") from exc


class Normalize(nn.Module):
    """``(x / 255 - mean) / std`` per channel, for raw 0..255 pixel values.

    It lives inside the model so that the exported ONNX graph takes raw pixels and no caller
    can normalise with the wrong statistics.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise OptionError(f"mean has {len(mean)} values but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise OptionError(f"std must be positive, got {list(std)}")
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a (B, C, H, W) batch of 0..255 values (any float dtype or uint8)."""
        if not x.is_floating_point():
            x = x.float()
        return (x / 255.0 - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Classifier(nn.Module):
    """Normalize -> backbone -> linear head: the paper's fine-tuned multi-label model.

    Outputs are logits; the per-class probabilities are ``sigmoid(logits)`` (multi-label,
    trained with binary cross-entropy as in the paper).

    Args:
        backbone: a key of ``BACKBONES``.
        num_classes: number of labels C.
        in_channels: number of input bands.
        mean: per-channel mean of ``x / 255`` (default 0.5 for every band).
        std: per-channel std of ``x / 255`` (default 0.25 for every band).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise OptionError(f"num_classes must be >= 1, got {num_classes}")
        mean = [DEFAULT_MEAN] * in_channels if mean is None else [float(m) for m in mean]
        std = [DEFAULT_STD] * in_channels if std is None else [float(s) for s in std]
        if len(mean) != in_channels or len(std) != in_channels:
            raise OptionError(
                f"mean/std need {in_channels} values (one per band), got {len(mean)}/{len(std)}"
            )
        # Everything needed to rebuild this model from a checkpoint.
        self.config: dict[str, Any] = {
            "backbone": backbone,
            "num_classes": int(num_classes),
            "in_channels": int(in_channels),
            "mean": mean,
            "std": std,
        }
        self.normalize = Normalize(mean, std)
        self.backbone, self.feature_dim = build_backbone(backbone, in_channels)
        self.head = nn.Linear(self.feature_dim, num_classes)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Classifier:
        """Rebuild an (untrained) model from ``Classifier.config``."""
        return cls(**dict(config))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``h`` (B, D) of a 0..255 batch (B, C, H, W)."""
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of a 0..255 batch (B, C, H, W), in float32."""
        return self.logits(self.features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, h)`` from one pass, for query scoring; logits in float32."""
        h = self.features(x)
        return self.logits(h), h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The linear head in float32 whatever autocast is on.

        Under bf16 autocast (CUDA) the head would return bf16 logits: 8 bits of mantissa
        put a ~3% relative error on 1 - p of confident samples, so MGE scores and their ties
        and order would differ between a GPU and a CPU run. The head is one small matmul;
        fp32 costs nothing.
        """
        with torch.autocast(h.device.type, enabled=False):
            return self.head(h.float())
