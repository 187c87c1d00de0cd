"""Backbone registry, classifier shapes, torchvision weight loading, checkpoint errors."""

from __future__ import annotations

import pytest
import torch
import torchvision

from alft_cli.errors import CheckpointError, OptionError
from alft_cli.models import (
    BACKBONES,
    Classifier,
    Normalize,
    adapt_conv_weight,
    backbone_state_dict_from_torchvision,
    build_backbone,
    load_state_dict_checked,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_gives_pooled_features_at_32px(name):
    for in_channels in (3, 4):
        net, dim = build_backbone(name, in_channels)
        assert dim == BACKBONES[name].feature_dim
        net.eval()
        with torch.no_grad():
            h = net(torch.randn(2, in_channels, 32, 32))
        assert h.shape == (2, dim)
        assert torch.isfinite(h).all()


def test_unknown_backbone_lists_known_names():
    with pytest.raises(OptionError, match="densenet121") as err:
        build_backbone("vgg_nope")
    assert "resnet18" in err.value.message


def test_stem_adapted_from_rgb_weights():
    w = torch.randn(8, 3, 3, 3)
    w4 = adapt_conv_weight(w, 4)
    assert w4.shape == (8, 4, 3, 3)
    # Bands cycle R, G, B, R, scaled by 3/4.
    assert torch.allclose(w4, torch.cat([w, w[:, :1]], dim=1) * 0.75)
    # Six bands (RGB twice): an RGB image given twice has the RGB response.
    assert torch.allclose(adapt_conv_weight(w, 6).view(8, 2, 3, 3, 3).sum(1), w, atol=1e-6)
    assert torch.allclose(adapt_conv_weight(w, 1)[:, 0], w.sum(1))
    assert torch.equal(adapt_conv_weight(w, 3), w)


def test_classifier_shapes_and_config():
    model = Classifier("resnet18", num_classes=5, in_channels=4).eval()
    x = torch.rand(3, 4, 32, 32) * 255
    with torch.no_grad():
        logits, h = model.forward_with_features(x)
        assert torch.allclose(model(x), logits)
        assert torch.allclose(model.features(x), h)
    assert logits.shape == (3, 5) and h.shape == (3, model.feature_dim)
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == 512
    assert model.config == {
        "backbone": "resnet18",
        "num_classes": 5,
        "in_channels": 4,
        "mean": [0.5] * 4,
        "std": [0.25] * 4,
    }
    clone = Classifier.from_config(model.config)
    load_state_dict_checked(clone, model.state_dict(), "checkpoint")
    with torch.no_grad():
        assert torch.allclose(clone.eval()(x), logits)


def test_classifier_rejects_wrong_stat_count():
    with pytest.raises(OptionError):
        Classifier("resnet18", 3, in_channels=4, mean=[0.5, 0.5, 0.5])


def test_normalize_uses_0_255_input():
    norm = Normalize([0.5, 0.25], [0.25, 0.5])
    x = torch.tensor([255.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    out = norm(x)
    assert torch.allclose(out[0, 0], torch.full((2, 2), 2.0))
    assert torch.allclose(out[0, 1], torch.full((2, 2), -0.5))
    assert torch.allclose(norm(x.to(torch.uint8)), out)
    assert {"mean", "std"} <= set(norm.state_dict())  # travels with checkpoints and ONNX


@pytest.mark.parametrize(
    ("name", "builder"),
    [
        ("resnet18", torchvision.models.resnet18),
        ("mobilenet_v3_small", torchvision.models.mobilenet_v3_small),
        ("densenet121", torchvision.models.densenet121),
    ],
)
def test_torchvision_state_dict_loads(name, builder):
    reference = builder(weights=None).eval()
    sd = reference.state_dict()
    net, _ = build_backbone(name)
    load_state_dict_checked(net, backbone_state_dict_from_torchvision(name, sd), "tv weights")
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # Same weights: the features are what the torchvision head would have seen.
        assert torch.allclose(net(x), _pooled(name, reference, x), atol=1e-5)

    # Four bands: the RGB stem is adapted instead of rejected.
    net4, _ = build_backbone(name, in_channels=4)
    load_state_dict_checked(
        net4, backbone_state_dict_from_torchvision(name, sd, in_channels=4), "tv weights"
    )


def _pooled(name, model, x):
    if name.startswith("resnet"):
        model.fc = torch.nn.Identity()
    else:
        model.classifier = torch.nn.Identity()
    return model(x)


def test_legacy_densenet_keys_and_ddp_prefix():
    sd = torchvision.models.densenet121(weights=None).state_dict()
    legacy = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue  # the published files predate it
        for part in ("norm", "relu", "conv"):
            for i in ("1", "2"):
                key = key.replace(f".{part}{i}.", f".{part}.{i}.")
        legacy["module." + key] = value
    assert any(".norm.1." in k for k in legacy)
    net, _ = build_backbone("densenet121")
    mapped = backbone_state_dict_from_torchvision("densenet121", legacy)
    load_state_dict_checked(net, mapped, "legacy densenet")


def test_mismatched_state_dict_names_keys():
    net, _ = build_backbone("resnet18")
    sd = net.state_dict()
    sd.pop("layer1.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_checked(net, sd, "weights.pt")
    message = err.value.message
    assert "\n" not in message
    assert "weights.pt" in message
    assert "layer1.0.conv1.weight" in message
    assert "extra.weight" in message
    assert "conv1.weight (64, 4, 7, 7) vs (64, 3, 7, 7)" in message


def test_many_missing_keys_are_truncated():
    net, _ = build_backbone("resnet18")
    with pytest.raises(CheckpointError, match=r"\(\+\d+ more\)"):
        load_state_dict_checked(net, {}, "empty")
