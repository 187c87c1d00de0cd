"""Where a project's queries went in Label Studio: the store's ls_links / ls_tasks tables."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from PIL import Image

from alft_cli import api
from alft_cli.project import open_project

CLASSES = ["airplane", "bare-soil", "cars"]


@pytest.fixture()
def small_project(tmp_path):
    archive = tmp_path / "archive"
    rng = np.random.default_rng(0)
    for i in range(8):
        path = archive / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    root = tmp_path / "proj"
    api.init_pool(archive, root, classes=",".join(CLASSES), initial=4, image_size=16)
    return root


def test_old_projects_have_no_link_and_get_the_tables_on_first_push(small_project):
    with sqlite3.connect(small_project / "alft.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "ls_links" not in tables  # made only when something is pushed
    ro = open_project(small_project, readonly=True)
    assert ro.store.ls_current_link() is None and ro.store.ls_tasks(1) == {}
    ro.close()

    p = open_project(small_project)
    pending = [s for _, s in p.store.pending()]
    with p.store.transaction():
        link = p.store.ls_link_save("http://ls:8080", 7, "alft round 0")
        p.store.ls_tasks_save(link, 0, [(pending[0], 11), (pending[1], 12)])
    with p.store.transaction():  # a second push: same link, one task re-made
        assert p.store.ls_link_save("http://ls:8080", 7, "alft round 0") == link
        p.store.ls_tasks_save(link, 0, [(pending[1], 13)])
    p.close()

    ro = open_project(small_project, readonly=True)
    current = ro.store.ls_current_link()
    assert (current.url, current.project_id, current.title) == ("http://ls:8080", 7,
                                                                  "alft round 0")
    assert ro.store.ls_tasks(current.id) == {(0, pending[0]): 11, (0, pending[1]): 13}
    ro.close()


def test_link_tables_roll_back_with_the_transaction(small_project):
    p = open_project(small_project)
    with pytest.raises(RuntimeError), p.store.transaction():
        p.store.ls_link_save("http://ls:8080", 7, None)
        raise RuntimeError("push died")
    assert not p.store.has_table("ls_links")  # DDL is transactional in SQLite
    with p.store.transaction():
        first = p.store.ls_link_save("http://a:1", 1, None)
    with p.store.transaction():
        p.store.ls_link_save("http://b:2", 2, None)
    assert p.store.ls_current_link().url == "http://b:2"
    with p.store.transaction():  # pushing to the first again makes it current
        assert p.store.ls_link_save("http://a:1", 1, None) == first
    assert p.store.ls_current_link().id == first
    p.close()
