"""Pretraining routes beyond BYOL-from-scratch: supplied weights and noisy-label supervision."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torchvision

from alft_cli import api
from alft_cli.checkpoints import load_safe
from alft_cli.errors import CheckpointError, OptionError
from alft_cli.project import open_project

TINY = dict(backbone="resnet18", batch_size=16, hidden_dim=64, proj_dim=32, device="cpu")


@pytest.fixture()
def bare(tiny_archive, tmp_path):
    root = tmp_path / "p"
    api.init_pool(tiny_archive.root, root, labels_file=tiny_archive.labels_csv, initial=0,
                  image_size=32)
    return root


def test_init_weights_from_a_torchvision_state_dict(bare, tmp_path, monkeypatch):
    torch.manual_seed(123)
    reference = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18-imagenet-like.pth"
    torch.save(reference.state_dict(), weights)
    seen = {}
    import alft_cli.pretrain as pretrain_module

    original = pretrain_module.run_pretrain

    def spy(*args, **kwargs):
        seen["init"] = kwargs["init_backbone"]
        return original(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "run_pretrain", spy)
    api.pretrain(bare, epochs=1, init_weights=weights, **TINY)
    # Every backbone tensor handed to BYOL is the supplied one (the fc head is dropped).
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert seen["init"].keys() == expected.keys()
    assert all(torch.equal(seen["init"][k], expected[k]) for k in expected)
    assert api.status(bare)["pretrained"]["init_weights"] == str(weights)


def test_init_weights_of_another_architecture_is_refused(bare, tmp_path):
    weights = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    with pytest.raises(CheckpointError) as err:
        api.pretrain(bare, epochs=1, init_weights=weights, **TINY)
    assert "\n" not in err.value.message
    assert "layer" in err.value.message  # names a few mismatched keys/shapes
    assert api.status(bare)["pretrained"] is None


def _noisy_file(path, tiny_archive, classes_idx, flip=0.0):
    from alft_cli.noisy import corrupt

    y = tiny_archive.Y[:, classes_idx]
    y = corrupt(y, flip, seed=1) if flip else y
    names = [tiny_archive.classes[i] for i in classes_idx]
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["filename", *names])
        for key, row in zip(tiny_archive.keys, y):
            w.writerow([key, *row.tolist()])
    return path


def test_supervised_noisy_pretraining_never_touches_project_labels(bare, tiny_archive,
                                                                   tmp_path):
    # Other classes than the project's (3 of them), 20% of the bits flipped.
    noisy = _noisy_file(tmp_path / "landcover.csv", tiny_archive, [0, 1, 4], flip=0.2)
    r = api.pretrain(bare, method="supervised-noisy", noisy_labels=noisy, epochs=2, lr=0.01,
                     **TINY)
    assert not r.interrupted
    info = api.status(bare)
    pre = info["pretrained"]
    assert pre["method"] == "supervised-noisy"
    assert info["labeled"] == 0  # noisy labels are not project labels
    assert any("val/test" in note and "30 rows" in note for note in pre["notes"])
    state = load_safe(bare / pre["file"])
    assert state["noisy_classes"] == [tiny_archive.classes[i] for i in (0, 1, 4)]
    assert not any(k.startswith("fc") or k.startswith("head") for k in state["state_dict"])
    # The project's fine-tuning starts from that backbone.
    p = open_project(bare)
    pool = [p.store.keys_by_id()[int(i)] for i in p.store.sample_ids("pool")[:6]]
    p.close()
    gold = {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}
    answers = tmp_path / "a.csv"
    with open(answers, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["filename", *tiny_archive.classes])
        for k in pool:
            w.writerow([k, *gold[k].tolist()])
    api.import_labels(bare, answers)
    ft = api.finetune(bare, epochs=1, batch_size=4, device="cpu")
    assert ft.init == "pretrained"


def test_supervised_noisy_then_byol(bare, tiny_archive, tmp_path):
    noisy = _noisy_file(tmp_path / "n.csv", tiny_archive, [0, 2])
    api.pretrain(bare, method="supervised-noisy", noisy_labels=noisy, epochs=1, then="byol",
                 then_epochs=1, **TINY)
    pre = api.status(bare)["pretrained"]
    assert pre["method"] == "supervised-noisy+byol" and pre["epochs"] == 1
    assert (bare / "pretrain" / "backbone_supervised.pt").exists()


def test_route_options_are_checked(bare, tmp_path):
    with pytest.raises(OptionError, match="noisy-labels"):
        api.pretrain(bare, method="supervised-noisy", epochs=1, **TINY)
    with pytest.raises(OptionError, match="byol or supervised-noisy"):
        api.pretrain(bare, method="simclr", epochs=1, **TINY)


def test_noise_is_seeded_and_at_the_requested_rate():
    from alft_cli.noisy import corrupt

    y = np.zeros((2000, 17), dtype=np.uint8)
    a, b = corrupt(y, 0.2, seed=3), corrupt(y, 0.2, seed=3)
    assert np.array_equal(a, b)
    assert abs(a.mean() - 0.2) < 0.01
