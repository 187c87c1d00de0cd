"""Model-only baselines for the benchmarks' loop ÷ model-only ratios (not part of the package).

Each function times the model's own work on batches already in device memory, as alft's
real loops would run it (same autocast, channels_last, optimizer), so that a loop's rate
divided by it says what the data path and the bookkeeping cost. Times are taken after a
warm-up and with the device synchronised before each clock read.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[int], None], calls: int, device: torch.device,
                     warmup: int = 2) -> float:
    """Mean wall time of ``fn(i)`` over ``calls`` calls after ``warmup`` untimed ones."""
    for i in range(warmup):
        fn(i)
    sync(device)
    started = time.perf_counter()
    for i in range(calls):
        fn(i)
    sync(device)
    return (time.perf_counter() - started) / max(calls, 1)


def byol_model_only(backbone: str, images: list[torch.Tensor], device: torch.device,
                    hidden_dim: int, proj_dim: int, steps: int) -> float:
    """Images/s of BYOL's step (forward, backward, Adam, EMA) on pre-augmented views.

    ``images`` are uint8 (B, C, S, S) batches on the device; their views are made once,
    before the clock starts, so what is timed is the model alone.
    """
    from alft_cli.augment import byol_views
    from alft_cli.byol import BYOL
    from alft_cli.models import Normalize, build_backbone
    from alft_cli.training import autocast, model_to_device_layout, to_device_layout

    channels, size = images[0].shape[1], images[0].shape[-1]
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    views = [byol_views(x.float(), generator, size) for x in images]
    net, dim = build_backbone(backbone, channels)
    model = BYOL(net, dim, hidden_dim, proj_dim).to(device)
    model_to_device_layout(model, device)
    normalize = Normalize([0.5] * channels, [0.25] * channels).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step(i: int) -> None:
        v1, v2 = views[i % len(views)]
        a, b = to_device_layout(normalize(v1), device), to_device_layout(normalize(v2), device)
        with autocast(device):
            loss = model(a, b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(0.99)

    return len(images[0]) / seconds_per_call(step, steps, device)


def finetune_model_only(backbone: str, images: torch.Tensor, targets: torch.Tensor,
                        device: torch.device, steps: int) -> float:
    """Seconds per fine-tuning step (forward, BCE, backward, SGD) on one batch in memory:
    the paper's step (batch 10, SGD lr 0.025, momentum 0.9) without augmentation or data."""
    from alft_cli.models import Classifier
    from alft_cli.training import autocast, model_to_device_layout, to_device_layout

    model = Classifier(backbone, targets.shape[1], in_channels=images.shape[1]).to(device)
    model_to_device_layout(model, device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = to_device_layout(images.float(), device)

    def step(_: int) -> None:
        with autocast(device):
            logits = model(x)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return seconds_per_call(step, steps, device)


@torch.no_grad()
def scoring_model_only(model: torch.nn.Module, images: list[torch.Tensor],
                       device: torch.device, repeats: int = 1) -> float:
    """Images/s of the scoring forward (features + sigmoid probabilities) on uint8 batches
    already on the device; nothing is copied back to the host."""
    from alft_cli.training import autocast, model_to_device_layout, to_device_layout

    model.eval()
    model_to_device_layout(model, device)

    def forward(i: int) -> None:
        x = to_device_layout(images[i % len(images)].float(), device)
        with autocast(device):
            logits, _ = model.forward_with_features(x)
        torch.sigmoid(logits)

    n = len(images) * repeats
    per_batch = seconds_per_call(forward, n, device, warmup=min(2, len(images)))
    return sum(len(x) for x in images) / len(images) / per_batch
