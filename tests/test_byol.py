"""BYOL parts: loss properties, momentum update, schedule, gradients only in the online net."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from alft_cli.byol import BYOL, MLPHead, byol_loss, cosine_tau, update_momentum

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _tiny_byol() -> BYOL:
    torch.manual_seed(0)
    return BYOL(_tiny_backbone(), feature_dim=8, hidden_dim=32, proj_dim=16)


def test_mlp_head_layout():
    head = MLPHead(8, 32, 16)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head(torch.randn(4, 8)).shape == (4, 16)


def test_loss_values_and_symmetry():
    torch.manual_seed(0)
    p, z = torch.randn(6, 16), torch.randn(6, 16)
    assert byol_loss(p, z).item() == pytest.approx(byol_loss(z, p).item(), abs=1e-6)
    assert byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-6)
    # Scale does not matter, only direction.
    assert byol_loss(p, 3.0 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)
    loss = byol_loss(p, z).item()
    assert 0.0 <= loss <= 4.0
    cos = torch.nn.functional.cosine_similarity(p, z, dim=-1)
    assert loss == pytest.approx((2 - 2 * cos).mean().item(), abs=1e-6)


def test_update_momentum_endpoints_and_average():
    online, target = nn.Linear(4, 3), nn.Linear(4, 3)
    before = copy.deepcopy(target.state_dict())
    update_momentum(online, target, tau=1.0)
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k])

    update_momentum(online, target, tau=0.5)
    for (k, v), o in zip(target.state_dict().items(), online.state_dict().values(), strict=True):
        assert torch.allclose(v, (before[k] + o) / 2)

    update_momentum(online, target, tau=0.0)
    for v, o in zip(target.state_dict().values(), online.state_dict().values(), strict=True):
        assert torch.equal(v, o)


def test_update_momentum_copies_buffers():
    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    online.train()(torch.randn(8, 3) * 5 + 2)
    update_momentum(online, target, tau=1.0)  # parameters untouched, buffers copied
    assert torch.equal(target.running_mean, online.running_mean)
    assert target.num_batches_tracked.item() == 1


def test_cosine_tau_schedule():
    assert cosine_tau(0, 100) == pytest.approx(0.996)
    assert cosine_tau(100, 100) == pytest.approx(1.0)
    assert cosine_tau(50, 100) == pytest.approx(0.998)
    taus = [cosine_tau(s, 100) for s in range(101)]
    assert all(a <= b for a, b in zip(taus, taus[1:], strict=False))
    assert cosine_tau(500, 100) == pytest.approx(1.0)  # clamped past the end
    assert cosine_tau(0, 0) == 1.0


def test_target_is_a_frozen_copy():
    model = _tiny_byol()
    assert all(not p.requires_grad for p in model.target_backbone.parameters())
    assert all(not p.requires_grad for p in model.target_projector.parameters())
    for a, b in zip(model.backbone.parameters(), model.target_backbone.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_step_trains_only_online_and_lowers_loss():
    model = _tiny_byol().train()
    torch.manual_seed(1)
    v1, v2 = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)
    online = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(online, lr=0.1)

    loss0 = model(v1, v2)
    assert 0.0 <= loss0.item() <= 8.0
    loss0.backward()
    for name, p in model.named_parameters():
        if name.startswith("target_"):
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name

    target_before = copy.deepcopy(model.target_backbone.state_dict())
    losses = [loss0.item()]
    opt.step()
    for _ in range(5):
        opt.zero_grad()
        loss = model(v1, v2)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    # tau = 1: target unchanged even though the online net moved.
    model.update_target(1.0)
    for k, v in model.target_backbone.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, target_before[k])
    model.update_target(0.0)
    for a, b in zip(model.projector.parameters(), model.target_projector.parameters(), strict=True):
        assert torch.equal(a, b)
