"""Class names with commas, slashes, parentheses, quotes and non-ASCII letters (issue 14):
real CORINE / BigEarthNet names have them, and every label format must carry them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from alft_cli.config import check_class_names, parse_class_list
from alft_cli.errors import OptionError
from alft_cli.labels import (
    QueryRow,
    header_classes,
    label_studio_config,
    read_label_file,
    write_labels_csv,
    write_query_csv,
)

CLASSES = [
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Transitional woodland/shrub",
    'Sport "and" leisure (facilities)',
    "Prés salés",
]


def test_names_with_commas_and_friends_are_accepted():
    assert check_class_names(CLASSES, "--labels") == CLASSES
    quoted = '"Beaches, dunes, sands", Pastures,"Say ""hi"""'
    assert parse_class_list(quoted) == ["Beaches, dunes, sands", "Pastures", 'Say "hi"']


@pytest.mark.parametrize("name, why", [
    ("a;b", "contains ';', which separates the classes"),
    ("a\nb", "control characters"),
    (" a", "spaces around it"),
    ("", "empty class name"),
])
def test_only_unrepresentable_names_are_refused_with_the_reason(name, why):
    with pytest.raises(OptionError, match=why):
        check_class_names([name, "x"], "gold.csv")


def test_every_label_format_carries_such_names(tmp_path):
    onehot = tmp_path / "gold.csv"
    with onehot.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *CLASSES])
        writer.writerow(["a/b.tif", 1, 0, 1, 1])
    assert header_classes(onehot) == CLASSES
    assert read_label_file(onehot, CLASSES).rows[0].labels == (1, 0, 1, 1)

    listed = tmp_path / "list.csv"
    with listed.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "labels"])
        writer.writerow(["a/b.tif", f"{CLASSES[0]};{CLASSES[3]}"])
    assert read_label_file(listed, CLASSES).rows[0].labels == (1, 0, 0, 1)

    query = tmp_path / "query.csv"
    write_query_csv(query, [QueryRow("a/b.tif", 1, 0.5, 0, [0.9, 0.1, 0.8, 0.2])], CLASSES)
    assert read_label_file(query, CLASSES).rows[0].labels == (1, 0, 1, 0)

    for fmt in ("onehot", "list"):
        out = tmp_path / f"labels_{fmt}.csv"
        write_labels_csv(out, ["a/b.tif"], np.array([[0, 1, 1, 0]]), CLASSES, fmt=fmt)
        assert read_label_file(out, CLASSES).rows[0].labels == (0, 1, 1, 0)

    config = label_studio_config(CLASSES)
    assert "&quot;and&quot;" in config and "Prés salés" in config
    export = tmp_path / "ls.json"
    export.write_text(json.dumps([{
        "id": 1, "data": {"image": "/data/a/b.tif", "alft_key": "a/b.tif"},
        "annotations": [{"id": 2, "was_cancelled": False, "updated_at": "2024-01-01T00:00:00Z",
                         "result": [{"type": "choices", "from_name": "labels", "to_name": "image",
                                     "value": {"choices": [CLASSES[0], CLASSES[2]]}}]}],
    }]), encoding="utf-8")
    assert read_label_file(export, CLASSES).rows[0].labels == (1, 0, 1, 0)
