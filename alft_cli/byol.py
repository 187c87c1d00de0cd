"""BYOL parts: projection/prediction heads, loss, momentum update, momentum schedule.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020. The online network (backbone, projector, predictor) predicts the target
network's projection of another view of the same image; the target (backbone, projector) is an
exponential moving average of the online one and gets no gradients. Built from small pieces
in the manner of lightly (``BYOLProjectionHead``, ``update_momentum``, ``cosine_schedule``);
the training loop lives in ``pretrain.py``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class MLPHead(nn.Sequential):
    """Linear -> BatchNorm -> ReLU -> Linear: BYOL's projector and predictor (Sec. 3.3).

    Args:
        in_dim: input size.
        hidden_dim: hidden size (4096 in the paper).
        out_dim: output size (256 in the paper).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Normalised MSE between predictions and target projections (BYOL Eq. 2).

    ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``, averaged over the batch; in [0, 4].

    Args:
        p: online predictions (B, d).
        z: target projections (B, d); treated as given (callers pass them without grad).

    Returns:
        Scalar loss.
    """
    # Compute in float32: under autocast the cosine of half-precision vectors loses the
    # small differences the loss is about.
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.float(), dim=-1)
    return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, tau: float) -> None:
    """Exponential moving average ``target = tau * target + (1 - tau) * online``.

    Parameters are averaged (BYOL Eq. 1); buffers such as BatchNorm running statistics are
    copied from the online network, since an average of them has no meaning of its own.

    Args:
        online: the network being trained.
        target: its moving average, same architecture.
        tau: decay in [0, 1]; 1 leaves the target unchanged, 0 copies the online network.
    """
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError("online and target networks have different parameters")
    if t_params:
        # One fused kernel per group instead of one per tensor (densenet121 has ~360 of them).
        # lerp(t, o, w) = t + w (o - t) = tau t + (1 - tau) o with w = 1 - tau.
        torch._foreach_lerp_(t_params, o_params, 1.0 - float(tau))
    for t_buf, o_buf in zip(target.buffers(), online.buffers(), strict=True):
        t_buf.copy_(o_buf)


def cosine_tau(step: int, total_steps: int, base: float = 0.996) -> float:
    """BYOL's momentum schedule: ``1 - (1 - base) (cos(pi step / total) + 1) / 2``.

    Rises from ``base`` at step 0 to 1.0 at ``total_steps`` (Grill et al., Sec. 3.2).

    Args:
        step: current optimisation step (clamped to [0, total_steps]).
        total_steps: number of steps of the whole run.
        base: starting decay.

    Returns:
        The decay tau for this step.
    """
    if total_steps <= 0:
        return 1.0
    frac = min(max(step, 0), total_steps) / total_steps
    return 1.0 - (1.0 - base) * (math.cos(math.pi * frac) + 1.0) / 2.0


class BYOL(nn.Module):
    """Online (backbone, projector, predictor) and momentum target (backbone, projector).

    Args:
        backbone: maps a normalised image batch to (B, feature_dim) features; it is trained
            in place and is what ``pretrain`` saves.
        feature_dim: backbone output size.
        hidden_dim: hidden size of projector and predictor.
        proj_dim: projection size.
    """

    def __init__(
        self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 4096, proj_dim: int = 256
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = MLPHead(feature_dim, hidden_dim, proj_dim)
        self.predictor = MLPHead(proj_dim, hidden_dim, proj_dim)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for param in [*self.target_backbone.parameters(), *self.target_projector.parameters()]:
            param.requires_grad_(False)

    def _online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_backbone(x))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Symmetric BYOL loss of two views of the same images (BYOL Eq. 2 plus its swap).

        Each view goes through the networks separately so BatchNorm statistics are per
        view, as in the paper.

        Args:
            view1: first views, normalised (B, C, H, W).
            view2: second views of the same images, same shape.

        Returns:
            Scalar loss in [0, 8].
        """
        p1, p2 = self._online(view1), self._online(view2)
        z1, z2 = self._target(view1), self._target(view2)
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    def update_target(self, tau: float) -> None:
        """Move the target networks towards the online ones (call after each step)."""
        update_momentum(self.backbone, self.target_backbone, tau)
        update_momentum(self.projector, self.target_projector, tau)
