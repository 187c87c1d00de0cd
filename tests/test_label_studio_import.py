"""Label Studio round trip at the project level: real exports (Label Studio 1.23.2) import
with the intended answers, through the same all-or-nothing path as the CSV formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alft_cli import api
from alft_cli.errors import LabelFileError
from alft_cli.project import open_project
from alft_cli.store import decode_y

FIXTURES = Path(__file__).parent / "data" / "label_studio"
CLASSES = ["airplane", "bare-soil", "buildings", "cars", "water"]
KEYS = ["airplane/airplane00.jpg", "airplane/airplane01.jpg", "bare-soil/bare-soil00.jpg",
        "buildings/buildings00.jpg", "cars/cars00.jpg", "water/water00.jpg",
        "water/water01.jpg"]
# The fixture README's intended answer per image (None = not a label).
INTENDED = {
    "airplane/airplane00.jpg": {"airplane", "cars"},
    "bare-soil/bare-soil00.jpg": set(),
    "buildings/buildings00.jpg": {"buildings", "water"},
    "cars/cars00.jpg": {"cars"},
    "water/water00.jpg": {"water", "bare-soil"},
    "airplane/airplane01.jpg": None,
    "water/water01.jpg": None,
}


@pytest.fixture()
def ls_project(tmp_path):
    archive = tmp_path / "images"
    rng = np.random.default_rng(0)
    for key in KEYS:
        (archive / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(archive / key)
    root = tmp_path / "proj"
    api.init_pool(archive, root, classes=",".join(CLASSES), initial=0, image_size=16)
    return root


def _stored(root: Path) -> dict[str, set[str]]:
    p = open_project(root)
    try:
        keys = p.store.keys_by_id()
        return {keys[s]: {c for c, v in zip(CLASSES, decode_y(y)) if v}
                for s, y in p.store.labels().items()}
    finally:
        p.close()


@pytest.mark.parametrize("name", ["export.json", "export_min.json", "export.csv",
                                  "export_ui_default.json", "export_snapshot.json"])
def test_every_label_studio_export_imports_the_intended_answers(name, ls_project, tmp_path):
    export = tmp_path / name
    shutil.copy(FIXTURES / name, export)
    r = api.import_labels(ls_project, export)
    assert r.format == "label-studio"
    expected = {k: v for k, v in INTENDED.items() if v is not None}
    assert _stored(ls_project) == expected
    assert any("task" in note or "annotation" in note for note in r.notes)  # task 5 rule


def test_label_studio_export_with_missing_fields_imports_nothing(ls_project, tmp_path):
    tasks = json.loads((FIXTURES / "export.json").read_text())
    del tasks[2]["data"]
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps(tasks))
    with pytest.raises(LabelFileError) as err:
        api.import_labels(ls_project, bad)
    assert "broken.json" in err.value.message
    assert any("task 3" in d for d in err.value.details)
    assert _stored(ls_project) == {}


def test_query_tasks_come_back_from_label_studio(ls_project, tmp_path):
    """alft's own tasks JSON, annotated the way Label Studio exports it, imports by key."""
    api.query(ls_project, budget=3, strategy="random", seed=1, fmt="label-studio")
    info = api.status(ls_project)
    tasks_file = (ls_project / info["rounds"][-1]["query_file"]).with_suffix(
        ".label-studio.json")
    tasks = json.loads(tasks_file.read_text())
    assert len(tasks) == 3
    assert all(t["data"]["image"].startswith("/data/local-files/?d=") for t in tasks)
    for i, task in enumerate(tasks):
        task["id"] = i + 1
        task["annotations"] = [{
            "id": 100 + i, "was_cancelled": False,
            "created_at": "2026-11-22T12:00:00Z", "updated_at": "2026-11-22T12:00:00Z",
            "result": [{"from_name": "labels", "to_name": "image", "type": "choices",
                        "value": {"choices": ["water"]}}]}]
    export = tmp_path / "annotated.json"
    export.write_text(json.dumps(tasks))
    api.import_labels(ls_project, export)
    assert _stored(ls_project) == {t["data"]["alft_key"]: {"water"} for t in tasks}
    assert api.status(ls_project)["pending"] == []
    config = (tasks_file.parent / "label-studio-config.xml").read_text()
    assert 'choice="multiple"' in config and all(f'value="{c}"' in config for c in CLASSES)
