"""`--strategy auto` in a project without gold val labels: its evidence is the last query's
suggestions checked against the labels people gave (never test labels)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from alft_cli import api
from alft_cli.labels import write_labels_csv
from alft_cli.metrics import multilabel_metrics


def _answer(project, tiny_archive, query_file, out):
    gold = {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}
    keys = [row["filename"] for row in csv.DictReader(open(query_file))]
    write_labels_csv(out, keys, np.stack([gold[k] for k in keys]), tiny_archive.classes)
    api.import_labels(project, out)
    return keys


@pytest.mark.slow
def test_auto_without_val_labels_uses_answered_suggestions(tiny_archive, tmp_path):
    project = tmp_path / "proj"
    # No --labels: no gold val/test labels, so no validation F1 will ever exist.
    api.init_pool(tiny_archive.root, project, classes=list(tiny_archive.classes), initial=12,
                  image_size=32, seed=0)
    first = api.status(project)["rounds"][0]
    _answer(project, tiny_archive, project / first["query_file"], tmp_path / "a0.csv")
    api.finetune(project, epochs=2, batch_size=6, lr_step=0, backbone="resnet18",
                 device="cpu", seed=0)
    assert api.status(project)["rounds"][0]["metrics"].get("val") in (None, {})

    # Nothing answered from a model yet: auto has no evidence and stays random.
    r1 = api.query(project, budget=12, strategy="auto", seed=1, device="cpu")
    note = next(n for n in r1.notes if n.startswith("auto:"))
    assert "no answered model suggestions" in note and "0% of the batch by MGE" in note
    suggested = {row["filename"]: np.array([float(row[f"p_{c}"])
                                            for c in tiny_archive.classes])
                 for row in csv.DictReader(open(r1.query_file))}
    keys = _answer(project, tiny_archive, r1.query_file, tmp_path / "a1.csv")
    api.finetune(project, epochs=1, batch_size=6, lr_step=0, device="cpu", seed=0)

    # Now the round-0 model's suggestions on those 12 images are checked against the labels.
    gold = {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}
    want = multilabel_metrics(np.stack([gold[k] for k in keys]),
                              np.stack([suggested[k] for k in keys]),
                              tiny_archive.classes)["micro_f1"]
    r2 = api.query(project, budget=6, strategy="auto", seed=2, device="cpu")
    note = next(n for n in r2.notes if n.startswith("auto:"))
    assert "round 0's suggestions on the 12 images of round 1's query" in note, note
    assert f"micro-F1 {want:.3f}" in note, (note, want)


def test_auto_reports_validation_evidence(project, tmp_path, tiny_archive):
    # The conftest project has gold val labels: auto uses the model's validation F1.
    first = api.status(project)["rounds"][0]
    _answer(project, tiny_archive, project / first["query_file"], tmp_path / "a0.csv")
    api.finetune(project, epochs=1, batch_size=5, lr_step=0, backbone="resnet18",
                 device="cpu", seed=0)
    val_f1 = api.status(project)["rounds"][0]["metrics"]["val"]["micro_f1"]
    r = api.query(project, budget=5, strategy="auto", seed=1, device="cpu")
    note = next(n for n in r.notes if n.startswith("auto:"))
    assert f"validation micro-F1 {val_f1:.3f} of round 0's model" in note, note
