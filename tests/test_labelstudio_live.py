"""The Label Studio client (alft_cli.labelstudio.client): pure helpers, then a real server.

The server tests use the session's real Label Studio (``label_studio`` fixture, marked
``labelstudio``); everything they check was done by the server itself.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alft_cli.errors import LabelStudioError, OptionError
from alft_cli.labels import QueryRow, label_studio_config
from alft_cli.labels.lstasks import (
    image_url_function,
    local_files_url,
    order_score,
    write_label_studio_files,
)
from alft_cli.labelstudio.client import Client, check_url, config_problems

CLASSES = ["airplane", "bare-soil", "cars"]
ODD_NAMES = ["river bank/tile #1.jpg", "a&b?.jpg", "100% plain.png", "ünï/cödé.jpg"]


# ---- pure helpers ---------------------------------------------------------------------------


def test_order_score_ascends_with_rank_inside_0_1():
    scores = [order_score(r, 40) for r in range(1, 41)]
    assert scores == sorted(scores) and len(set(scores)) == 40
    assert 0 < scores[0] and scores[-1] < 1
    with pytest.raises(ValueError):
        order_score(0, 3)


def test_local_files_url_is_relative_to_the_root_and_percent_encoded(tmp_path):
    url = local_files_url(tmp_path / "arch" / "river bank" / "tile #1.jpg", tmp_path)
    assert url == "/data/local-files/?d=arch/river%20bank/tile%20%231.jpg"
    assert local_files_url(tmp_path / "a&b?.jpg", tmp_path).endswith("?d=a%26b%3F.jpg")
    with pytest.raises(OptionError, match="LOCAL_FILES_DOCUMENT_ROOT"):
        local_files_url(Path("/elsewhere/x.jpg"), tmp_path)


def test_task_files_encode_names_and_say_how_to_show_the_images(tmp_path):
    rows = [QueryRow(n, i, 0.5, 0, None) for i, n in enumerate(ODD_NAMES, 1)]
    tasks_file, config, readme = write_label_studio_files(
        tmp_path / "query.csv", rows, CLASSES, tmp_path / "arch", "alft", round_=0,
        root=tmp_path)
    tasks = json.loads(tasks_file.read_text())
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=arch/river%20bank/tile%20%231.jpg"
    assert tasks[1]["data"]["image"].endswith("?d=arch/a%26b%3F.jpg")
    assert [t["data"]["alft_round"] for t in tasks] == [0] * 4
    assert all("predictions" not in t for t in tasks)  # no model: nothing pretends to suggest
    text = readme.read_text()
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={tmp_path}" in text
    assert "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true" in text
    assert f"path {tmp_path / 'arch'}" in text and "no model suggestions" in text
    assert config.read_text() == label_studio_config(CLASSES)

    tasks_file, _, readme = write_label_studio_files(
        tmp_path / "q2.csv", rows, CLASSES, tmp_path / "arch", "alft", round_=0,
        image_url_prefix="https://files.example.org/a/")
    image = json.loads(tasks_file.read_text())[0]["data"]["image"]
    assert image == "https://files.example.org/a/river%20bank/tile%20%231.jpg"
    assert "https://files.example.org/a/<path in the archive>" in readme.read_text()
    with pytest.raises(OptionError, match="document root itself"):
        image_url_function(tmp_path, root=tmp_path)


def test_check_url():
    assert check_url(" http://localhost:8080/ ") == "http://localhost:8080"
    assert check_url("https://ls.example.org/sub/") == "https://ls.example.org/sub"
    for bad in ("localhost:8080", "ftp://x", "", "http://u:secret@host:8080"):
        with pytest.raises(LabelStudioError) as e:
            check_url(bad)
        assert "secret" not in e.value.message


def test_alft_config_passes_its_own_check():
    assert config_problems(label_studio_config(CLASSES), CLASSES) == []
    # import-labels compares class names ignoring case, and so does the check.
    assert config_problems(label_studio_config(["Airplane", "BARE-soil", "cars"]), CLASSES) == []


@pytest.mark.parametrize("config, expected", [
    ("<View", "not valid XML"),
    ('<View><Image name="image" value="$image"/></View>', "no Choices naming"),
    ('<View><Image name="image" value="$image"/><Choices name="labels" toName="image" '
     'choice="multiple"><Choice value="airplane"/><Choice value="cars"/></Choices></View>',
     "lacks the project classes bare-soil"),
    ('<View><Image name="image" value="$image"/><Choices name="labels" toName="image" '
     'choice="multiple"><Choice value="airplane"/><Choice value="bare-soil"/>'
     '<Choice value="cars"/><Choice value="boats"/></Choices></View>',
     "offers boats, which are not project classes"),
    ('<View><Image name="image" value="$image"/><Choices name="labels" toName="image">'
     '<Choice value="airplane"/><Choice value="bare-soil"/><Choice value="cars"/></Choices>'
     '</View>', "allows one choice per image"),
    ('<View><Image name="img" value="$img"/><Choices name="labels" toName="img" '
     'choice="multiple"><Choice value="airplane"/><Choice value="bare-soil"/>'
     '<Choice value="cars"/></Choices></View>', 'does not label an <Image value="$image">'),
    ('<View><Image name="image" value="$image"/><Choices name="a" toName="image" '
     'choice="multiple"><Choice value="airplane"/></Choices><Choices name="b" toName="image" '
     'choice="multiple"><Choice value="cars"/></Choices></View>', "several Choices"),
])
def test_config_problems_name_what_is_wrong(config, expected):
    problems = config_problems(config, CLASSES)
    assert problems and expected in "; ".join(problems)


def test_config_choice_alias_is_what_results_hold():
    config = ('<View><Image name="image" value="$image"/><Choices name="labels" toName="image" '
              'choice="multiple"><Choice value="Plane" alias="airplane"/>'
              '<Choice value="Soil" alias="bare-soil"/><Choice value="cars"/></Choices></View>')
    assert config_problems(config, CLASSES) == []


# ---- a real server --------------------------------------------------------------------------


def _images(root: Path, names: list[str]) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def _tasks(names: list[str], urls: list[str], round_: int = 1) -> list[dict]:
    n = len(names)
    return [{"data": {"image": url, "alft_key": name, "alft_round": round_, "rank": rank},
             "predictions": [{"model_version": f"alft-r{round_}",
                              "score": order_score(rank, n),
                              "result": [{"from_name": "labels", "to_name": "image",
                                          "type": "choices", "value": {"choices": ["cars"]}}]}]}
            for rank, (name, url) in enumerate(zip(names, urls), 1)]


@pytest.fixture(scope="module")
def client(label_studio):
    return Client(label_studio.url, label_studio.api_key)


@pytest.mark.labelstudio
def test_server_started_and_both_kinds_of_key_work(label_studio, client):
    print(f"Label Studio started in {label_studio.start_seconds:.1f} s")
    assert client.whoami() == "alft-tests@localhost"  # the legacy token
    # A Personal Access Token (what Account & Settings shows by default): the SDK trades
    # it for short-lived access tokens.
    pat = client._sdk.tokens.create().token
    assert Client(label_studio.url, pat).whoami() == "alft-tests@localhost"


@pytest.mark.labelstudio
def test_push_is_idempotent_and_keeps_alft_order(client, label_studio, tmp_path):
    archive = tmp_path / "archive"
    paths = _images(archive, ODD_NAMES)
    urls = [local_files_url(p, label_studio.document_root) for p in paths]
    project = client.create_project("alft push test", label_studio_config(CLASSES))
    assert client.check_project(project.id, CLASSES).title == "alft push test"
    assert client.ensure_local_storage(project.id, archive) is True
    assert client.ensure_local_storage(project.id, archive / "river bank") is False

    # Every odd name loads through the real server exactly as the labeling page asks for it.
    assert [client.image_status(u) for u in urls] == [200] * len(urls)
    assert client.image_status(urls[0].replace("%231", "%232")) == 404

    tasks = _tasks(ODD_NAMES, urls)
    first = client.push(project.id, tasks)
    assert (first.added, first.existing) == (4, 0)
    ids = [first.task_ids[(n, 1)] for n in ODD_NAMES]
    assert ids == sorted(ids)  # imported in alft's order
    again = client.push(project.id, tasks)
    assert (again.added, again.existing) == (0, 4) and again.task_ids == first.task_ids
    # A push that died after part of the import: only the missing ones are added.
    client.import_tasks(project.id, [])
    assert len(client.tasks(project.id)) == 4
    more = _tasks(["extra.jpg"], ["/data/local-files/?d=x"], round_=2)
    assert client.push(project.id, tasks + more).added == 1
    assert client.push(project.id, more).stale == 4  # round 1's tasks, unanswered
    assert len(client.tasks(project.id)) == 5

    # The data manager sorted by prediction score ascending lists alft's order.
    query = json.dumps({"ordering": ["tasks:predictions_score"]})
    listed = [t.id for t in client._sdk.tasks.list(project=project.id, query=query)]
    assert listed[:4] == ids

    exported = client.export(project.id, ids[:2] + [10**6])
    assert [t["id"] for t in exported] == ids[:2]
    assert exported[0]["data"]["alft_key"] == ODD_NAMES[0]


@pytest.mark.labelstudio
def test_wrong_config_is_refused_with_one_line(client):
    config = label_studio_config(["airplane", "cars", "boats"])
    project = client.create_project("alft wrong config", config)
    with pytest.raises(LabelStudioError) as e:
        client.check_project(project.id, CLASSES)
    assert "lacks the project classes bare-soil" in e.value.message
    assert "offers boats" in e.value.message and "\n" not in e.value.message


@pytest.mark.labelstudio
def test_errors_are_one_line_without_the_key(label_studio, client):
    bad_key = "not-the-key-" + "7" * 20
    messages = []

    def refused(call, expected):
        with pytest.raises(LabelStudioError) as e:
            call()
        messages.append(e.value.message)
        assert expected in e.value.message, e.value.message
        assert "\n" not in e.value.message

    refused(lambda: Client(label_studio.url, bad_key).whoami(), "refused the API key (401")
    refused(lambda: client.project(987654), "has no project 987654 (deleted?)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(lambda: Client(f"http://127.0.0.1:{port}", bad_key, timeout=5).whoami(),
            "cannot reach Label Studio")
    # A Local Files storage outside the document root: Label Studio's own reason.
    project = client.create_project("alft storage", label_studio_config(CLASSES))
    refused(lambda: client.ensure_local_storage(project.id, Path("/")),
            "LOCAL_FILES_DOCUMENT_ROOT")
    assert not [m for m in messages if bad_key in m or label_studio.api_key in m]
