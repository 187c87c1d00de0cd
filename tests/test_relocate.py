"""A moved archive: found again when it moved with the project, re-pointed only to the same
files (size and SHA-256 as indexed), never to others."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alft_cli import api
from alft_cli.errors import ArchiveError
from alft_cli.project import archive_location, open_project
from alft_cli.relocate import relocate_project


@pytest.fixture()
def team(archive_copy, tmp_path):
    """team/archive (a private copy of the tiny archive) and team/proj over it."""
    base = tmp_path / "team"
    base.mkdir()
    archive = base / "archive"
    shutil.move(archive_copy, archive)
    api.init_pool(archive / "images", base / "proj", classes="a,b", initial=4,
                  image_size=32)
    return base


def _relocate(project_dir: Path, new: Path):
    project = open_project(project_dir)
    try:
        return relocate_project(project, new)
    finally:
        project.close()


def test_archive_location_is_relative_only_under_the_projects_folder(tmp_path):
    team = tmp_path / "team"
    assert archive_location(team / "proj", team / "data" / "images") == {
        "absolute": str((team / "data" / "images").resolve()),
        "relative": "../data/images"}
    assert archive_location(team / "proj", team / "proj" / "images")["relative"] == "images"
    assert archive_location(team / "proj", tmp_path / "elsewhere")["relative"] is None
    assert archive_location(Path("/proj"), Path("/data/images"))["relative"] is None


def test_relocate_checks_every_file_then_switches(team, tmp_path):
    moved = tmp_path / "moved"
    shutil.move(team / "archive", moved)
    project = open_project(team / "proj", readonly=True)
    assert not project.archive.exists()
    project.close()
    result = _relocate(team / "proj", moved / "images")
    assert result.new == (moved / "images").resolve() and result.checked == 60
    assert result.relative is None  # not under the project's folder: absolute only
    project = open_project(team / "proj", readonly=True)
    assert project.archive == (moved / "images").resolve()
    project.close()
    config = json.loads((team / "proj" / "config.json").read_text())
    assert config["archive"] == str((moved / "images").resolve())


@pytest.mark.parametrize("damage", ["content", "size", "missing"])
def test_relocate_to_other_files_is_refused_and_changes_nothing(damage, team, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(team / "archive", other)
    victim = next(p for p in sorted((other / "images").rglob("*.png")))
    data = victim.read_bytes()
    if damage == "content":
        victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "size":
        victim.write_bytes(data + b"\0")
    else:
        victim.unlink()
    config_before = (team / "proj" / "config.json").read_text()
    with pytest.raises(ArchiveError, match="1 of 60 missing or different") as info:
        _relocate(team / "proj", other / "images")
    key = victim.relative_to(other / "images").as_posix()
    assert [d for d in info.value.details if d.startswith(key)], info.value.details
    assert (team / "proj" / "config.json").read_text() == config_before
    project = open_project(team / "proj", readonly=True)
    assert project.archive == (team / "archive" / "images").resolve()
    project.close()


def test_archive_and_project_moved_together_are_found_again(team, tmp_path):
    _relocate(team / "proj", team / "archive" / "images")  # records ../archive/images
    moved = tmp_path / "team-moved"
    team.rename(moved)
    project = open_project(moved / "proj", readonly=True)
    try:
        assert project.archive.resolve() == (moved / "archive" / "images").resolve()
    finally:
        project.close()
