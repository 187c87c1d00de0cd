"""alft labelstudio push / pull / status against a real Label Studio server (issue 16).

Labelers are simulated through the server's API, the way the labeling page submits answers
(several classes, an empty answer, a skip, two annotations of one image). Everything else
goes through alft's api (and once through the real CLI).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alft_cli import api
from alft_cli.errors import LabelFileError, LabelStudioError, OptionError
from alft_cli.labels import label_studio_config
from alft_cli.labelstudio import api as ls_api
from alft_cli.labelstudio import client as labelstudio_live
from alft_cli.labelstudio.client import Client
from alft_cli.project import open_project
from alft_cli.store import decode_y

pytestmark = pytest.mark.labelstudio

CLASSES = ["airplane", "bare-soil", "cars"]
NAMES = ["river bank/tile #1.png", "a&b?.png", "100% plain.png", "ünï/cödé.png",
         "fields/f1.png", "fields/f2.png", "fields/f3.png", "fields/f4.png"]


def _archive(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in NAMES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture()
def archive(tmp_path):
    return _archive(tmp_path / "archive")


def _project(archive: Path, root: Path, **kw) -> Path:
    api.init_pool(archive, root, classes=",".join(CLASSES), initial=len(NAMES), image_size=16,
                  seed=0, **kw)
    return root


def _labels(root: Path) -> dict[str, set[str]]:
    p = open_project(root, readonly=True)
    try:
        keys = p.store.keys_by_id()
        return {keys[s]: {c for c, v in zip(CLASSES, decode_y(y)) if v}
                for s, y in p.store.labels().items()}
    finally:
        p.close()


def _pending(root: Path) -> list[str]:
    return api.status(root)["pending"]


def _answer(client: Client, task_id: int, choices: list[str] | None) -> None:
    """Submit an answer as the labeling page does (None = skip)."""
    result = [] if not choices else [{"from_name": "labels", "to_name": "image",
                                      "type": "choices", "value": {"choices": choices}}]
    client._sdk.annotations.create(id=task_id, result=result, was_cancelled=choices is None)


def _task_ids(client: Client, project_id: int) -> dict[str, int]:
    return {t.key: t.id for t in client.tasks(project_id)}


# What the labelers answer, by image (None = skipped; two lists = two annotations).
FIRST = {NAMES[0]: [["airplane", "cars"]], NAMES[1]: [[]], NAMES[2]: [None],
         NAMES[3]: [["cars"], ["bare-soil"]], NAMES[4]: [["bare-soil", "airplane"]]}
REST = {NAMES[2]: [["cars"]], NAMES[5]: [["airplane"]], NAMES[6]: [[]],
        NAMES[7]: [["bare-soil", "cars"]]}
EXPECTED_FIRST = {NAMES[0]: {"airplane", "cars"}, NAMES[1]: set(), NAMES[3]: {"bare-soil"},
                  NAMES[4]: {"airplane", "bare-soil"}}


def _give(client: Client, ids: dict[str, int], answers: dict[str, list]) -> None:
    for name, anns in answers.items():
        for choices in anns:
            _answer(client, ids[name], choices)
            time.sleep(0.01)  # the second annotation of a task is strictly newer


def test_push_pull_equals_the_file_route(label_studio, archive, tmp_path):
    client = Client(label_studio.url, label_studio.api_key)
    root = _project(archive, tmp_path / "live")
    push = dict(api_key=label_studio.api_key, url=label_studio.url,
                document_root=label_studio.document_root)
    first = ls_api.push(root, create="alft live", **push)
    assert (first.pushed, first.added, first.existing, first.rounds) == (8, 8, 0, [0])
    assert "alft labelstudio pull" in api.status(root)["next"]
    again = ls_api.push(root, **push)  # the linked project; nothing new
    assert (again.project_id, again.added, again.existing) == (first.project_id, 0, 8)
    assert len(client.tasks(first.project_id)) == 8

    ids = _task_ids(client, first.project_id)
    tasks = client.export(first.project_id, list(ids.values()))
    # Names with spaces, #, &, ?, % and non-ASCII load through the server; round 0 has no
    # model, so no task carries a prediction.
    assert {client.image_status(t["data"]["image"]) for t in tasks} == {200}
    assert all(not t["predictions"] and t["data"]["alft_round"] == 0 for t in tasks)
    by_id = sorted(tasks, key=lambda t: t["id"])
    assert [t["data"]["rank"] for t in by_id] == list(range(1, 9))  # ids follow alft's order

    _give(client, ids, FIRST)
    st = ls_api.status(root, api_key=label_studio.api_key)
    assert (st["pushed"], st["done"], st["skipped"], st["untouched"]) == (8, 4, 1, 3)
    r = ls_api.pull(root, api_key=label_studio.api_key)
    assert (r.imported, r.skipped, r.untouched, r.pending_left) == (4, 1, 3, 4)
    assert _labels(root) == EXPECTED_FIRST
    assert r.files and r.files[0].parent == root / "rounds" / "round_000"
    assert any("most recently updated" in n for n in r.notes)

    # The file route on a twin project: alft's task file imported into Label Studio by
    # hand, the same answers, Label Studio's JSON export, alft import-labels.
    twin = _project(archive, tmp_path / "files", fmt="label-studio",
                    document_root=label_studio.document_root)
    round0 = twin / "rounds" / "round_000"
    assert (round0 / "README.txt").read_text().count("LABEL_STUDIO_LOCAL_FILES") >= 2
    file_tasks = json.loads((round0 / "query.label-studio.json").read_text())
    # The same tasks as the push sent (Label Studio's export lists their predictions: none).
    assert [t["data"] for t in file_tasks] == [t["data"] for t in by_id]
    assert not any(t.get("predictions") for t in file_tasks)
    by_hand = client.create_project("alft by hand",
                                    (round0 / "label-studio-config.xml").read_text())
    client.ensure_local_storage(by_hand.id, archive)
    client.import_tasks(by_hand.id, file_tasks)
    hand_ids = _task_ids(client, by_hand.id)
    assert sorted(hand_ids) == sorted(NAMES)
    assert {client.image_status(t["data"]["image"]) for t in file_tasks} == {200}
    _give(client, hand_ids, FIRST)
    exported = b"".join(client._sdk.projects.exports.download_sync(
        id=by_hand.id, export_type="JSON", download_all_tasks=True))
    (tmp_path / "export.json").write_bytes(exported)
    api.import_labels(twin, tmp_path / "export.json")
    assert _labels(twin) == _labels(root)

    # The rest is answered (the skipped image too, later): the next pull completes it.
    _give(client, ids, REST)
    r = ls_api.pull(root, api_key=label_studio.api_key)
    assert (r.imported, r.skipped, r.untouched, r.pending_left) == (4, 0, 0, 0)
    assert _labels(root) == {**EXPECTED_FIRST, NAMES[2]: {"cars"}, NAMES[5]: {"airplane"},
                             NAMES[6]: set(), NAMES[7]: {"bare-soil", "cars"}}
    with pytest.raises(OptionError, match="no images are pending"):
        ls_api.pull(root, api_key=label_studio.api_key)


def test_refusals_change_nothing(label_studio, archive, tmp_path):
    client = Client(label_studio.url, label_studio.api_key)
    root = _project(archive, tmp_path / "proj")
    db = (root / "alft.db").read_bytes
    push = dict(url=label_studio.url, document_root=label_studio.document_root)

    wrong = client.create_project("alft wrong", label_studio_config(["airplane", "boats"]))
    with pytest.raises(LabelStudioError, match="lacks the project classes bare-soil, cars"):
        ls_api.push(root, api_key=label_studio.api_key, ls_project=wrong.id, **push)
    with pytest.raises(LabelStudioError, match="refused the API key") as e:
        ls_api.push(root, api_key="wrong-key-123456", create="alft bad key", **push)
    assert "wrong-key-123456" not in e.value.message
    with pytest.raises(OptionError, match="document root"):
        ls_api.push(root, api_key=label_studio.api_key, create="alft x",
                             url=label_studio.url, document_root=tmp_path / "elsewhere")
    # A document root the server does not have: found by loading one image, and the project
    # made for the push is taken back.
    before = {p.title for p in client._sdk.projects.list()}
    with pytest.raises(LabelStudioError, match="cannot show the archive's images"):
        ls_api.push(root, api_key=label_studio.api_key, create="alft wrong root",
                             url=label_studio.url, document_root=tmp_path)
    assert {p.title for p in client._sdk.projects.list()} == before
    with pytest.raises(OptionError, match="nothing was pushed"):
        ls_api.pull(root, api_key=label_studio.api_key)
    project = open_project(root, readonly=True)
    assert project.store.ls_current_link() is None and len(project.store.pending()) == 8
    project.close()
    assert db()  # the store is still there and readable

    # Pushed, then: an unknown class in an answer (the config was edited in Label Studio),
    # a deleted task, a deleted project. Each refuses the whole pull with one line.
    r = ls_api.push(root, api_key=label_studio.api_key, create="alft refusals", **push)
    ids = _task_ids(client, r.project_id)
    _answer(client, ids[NAMES[0]], ["cars"])
    _answer(client, ids[NAMES[1]], ["boats"])
    with pytest.raises(LabelFileError) as e:
        ls_api.pull(root, api_key=label_studio.api_key)
    assert f"task {ids[NAMES[1]]}: unknown class 'boats'" in " ".join(e.value.details)
    assert _labels(root) == {} and len(_pending(root)) == 8
    client._sdk.annotations.delete(id=client.export(r.project_id, [ids[NAMES[1]]])[0]
                                   ["annotations"][0]["id"])
    client._sdk.tasks.delete(id=ids[NAMES[7]])
    with pytest.raises(LabelStudioError, match=r"no longer has 1 pushed task .*fields/f4.png"):
        ls_api.pull(root, api_key=label_studio.api_key)
    assert _labels(root) == {}
    assert ls_api.push(root, api_key=label_studio.api_key, **push).added == 1
    assert ls_api.pull(root, api_key=label_studio.api_key).imported == 1
    client.delete_project(r.project_id)
    with pytest.raises(LabelStudioError, match=f"has no project {r.project_id} .deleted"):
        ls_api.pull(root, api_key=label_studio.api_key)
    assert _labels(root) == {NAMES[0]: {"cars"}}


class _Proxy:
    """A TCP relay to the server that the test can stop and start: a server going away."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = 0
        self.conns: list[socket.socket] = []
        self.start()

    def start(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        try:  # wakes the accept() of the relay thread (close alone does not, on Linux)
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns.clear()

    def _accept(self) -> None:
        listener = self.listener
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_server_gone_mid_pull_then_wait(label_studio, archive, tmp_path, monkeypatch):
    client = Client(label_studio.url, label_studio.api_key)
    proxy = _Proxy(int(label_studio.url.rsplit(":", 1)[1]))
    via = f"http://127.0.0.1:{proxy.port}"
    root = _project(archive, tmp_path / "proj")
    r = ls_api.push(root, api_key=label_studio.api_key, url=via, create="alft gone",
                             document_root=label_studio.document_root)
    ids = _task_ids(client, r.project_id)
    _give(client, ids, FIRST)

    export = labelstudio_live.Client.export

    def dying_export(self, *args, **kwargs):
        proxy.stop()  # the project was read; the server goes away before the export
        return export(self, *args, **kwargs)

    monkeypatch.setattr(labelstudio_live.Client, "export", dying_export)
    with pytest.raises(LabelStudioError, match=f"cannot reach Label Studio at {via}"):
        ls_api.pull(root, api_key=label_studio.api_key)
    assert _labels(root) == {} and len(_pending(root)) == 8
    assert not list((root / "rounds" / "round_000").glob("label-studio-pull*"))
    monkeypatch.setattr(labelstudio_live.Client, "export", export)
    proxy.start()  # back on the same port: the next pull completes
    assert ls_api.pull(root, api_key=label_studio.api_key).imported == 4
    assert _labels(root) == EXPECTED_FIRST

    # --wait: a labeler answers the rest while pull looks every 0.2 s.
    timer = threading.Timer(0.5, _give, args=(client, ids, REST))
    timer.start()
    started = time.monotonic()
    r = ls_api.pull(root, api_key=label_studio.api_key, wait=True, interval_s=0.2,
                             timeout_s=60)
    timer.join()
    assert (r.pending_left, r.untouched) == (0, 0) and r.looks >= 2
    assert time.monotonic() - started < 30
    proxy.stop()


def test_wait_is_bounded_and_cli_round_trip(label_studio, archive, tmp_path, cli):
    root = _project(archive, tmp_path / "proj")
    env = {"LABEL_STUDIO_API_KEY": label_studio.api_key,
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root)}
    res = cli("labelstudio", "push", "-p", root, "--url", label_studio.url, "--create",
              "alft cli", env=env)
    assert res.code == 0, res.stderr
    assert "8 new tasks" in res.stdout and label_studio.api_key not in res.stdout + res.stderr
    res = cli("labelstudio", "status", "-p", root, "--json", env=env)
    assert res.code == 0, res.stderr
    info = json.loads(res.stdout)
    assert (info["pushed"], info["untouched"], info["not_pushed"]) == (8, 8, 0)

    started = time.monotonic()
    r = ls_api.pull(root, api_key=label_studio.api_key, wait=True, interval_s=0.2,
                             timeout_s=1.0)
    assert 1.0 <= time.monotonic() - started < 10 and (r.imported, r.untouched) == (0, 8)

    bad = cli("labelstudio", "pull", "-p", root,
              env={"LABEL_STUDIO_API_KEY": "not-the-key-0042"})
    assert bad.code == 1 and bad.stderr.startswith("error: Label Studio at")
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "not-the-key-0042" not in bad.stdout + bad.stderr
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"not-the-key-0042" not in data and label_studio.api_key.encode() not in data


def test_example_script_labels_the_initial_list(label_studio, project, tiny_archive):
    """examples/al_rounds_labelstudio.sh with 0 rounds: push the initial list, a stand-in
    labeler answers it in Label Studio from the gold labels, pull --wait imports it."""
    here = Path(__file__).resolve().parents[1]
    gold = tiny_archive.labels_csv
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "LABEL_STUDIO_API_KEY": label_studio.api_key, "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
           "LS_LABELER": f"{sys.executable} {here / 'examples' / 'ls_answer_from_gold.py'} "
                         f"{gold}",
           "INTERVAL": "0.5", "WAIT": "120", "LS_TITLE": "alft example"}
    proc = subprocess.run(["bash", str(here / "examples" / "al_rounds_labelstudio.sh"),
                           str(project), "0", "5"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(gold, newline="") as fh:
        rows = list(csv.reader(fh))
    truth = {r[0]: {c for c, v in zip(rows[0][1:], r[1:]) if v == "1"} for r in rows[1:]}
    p = open_project(project, readonly=True)
    try:
        keys, classes = p.store.keys_by_id(), p.classes
        got = {keys[s]: {c for c, v in zip(classes, decode_y(y)) if v}
               for s, y in p.store.labels().items()}
        assert len(got) == 10 and not p.store.pending()
    finally:
        p.close()
    assert got == {k: truth[k] for k in got}


def test_multiband_push_shows_quicklooks(label_studio, tmp_path):
    """A 12-band sample cannot be shown by a browser: push sends its RGB quicklook (served
    from the project's rounds/ folder), also for a quicklook rendered at push time."""
    from alft_cli.synthetic_s2 import generate_s2_archive

    demo = generate_s2_archive(tmp_path / "s2", n_images=6, image_size=32, seed=1)
    root = tmp_path / "ms"
    api.init_pool(demo.root, root, labels_file=demo.labels_csv, val_fraction=0,
                  test_fraction=0, initial=4, image_size=32, seed=0)
    first_png = sorted((root / "rounds" / "round_000" / "quicklooks").glob("*.png"))[0]
    first_png.unlink()  # rendered again at push time
    client = Client(label_studio.url, label_studio.api_key)
    r = ls_api.push(root, create="alft multiband", api_key=label_studio.api_key,
                    url=label_studio.url, document_root=label_studio.document_root)
    assert r.added == 4 and "quicklooks" in r.images
    tasks = client.export(r.project_id, list(_task_ids(client, r.project_id).values()))
    urls = [t["data"]["image"] for t in tasks]
    assert all(u.endswith(".png") and "/rounds/round_000/quicklooks/" in u for u in urls)
    assert {client.image_status(u) for u in urls} == {200}
    assert first_png.is_file()
