"""The project directory: where every artifact lives, opening it, and its write lock;
:func:`writing` and :func:`reading` are how every command opens it.

Layout::

    DIR/
      config.json           ProjectConfig (fixed at init-pool)
      alft.db               the store (SQLite, WAL)
      cache/images.npy      decoded images (N, C, S, S) uint8, memory-mapped
      skipped.csv           files found but not indexed, with the reason
      pretrain/             BYOL checkpoints and the pretrained backbone
      rounds/round_000/     query.csv, model.pt, metrics.json, ... of round 0
      exports/              ONNX models
      .lock                 write lock (flock) + who holds it
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alft_cli.config import ProjectConfig
from alft_cli.errors import ProjectBusyError, ProjectError
from alft_cli.images import CACHE_FILE
from alft_cli.store import Store

DEFAULT_LOCK_TIMEOUT = 10.0
# An interrupted fine-tuning's checkpoint, in its round's folder (named here, not in
# finetune.py, so that status can look for it without importing torch).
FINETUNE_CHECKPOINT = "finetune_checkpoint.pt"


@dataclass
class Project:
    """An opened project: its folder, fixed config and store."""

    root: Path
    config: ProjectConfig
    store: Store

    # -- paths -----------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        return self.root / "cache" / CACHE_FILE

    @property
    def pretrain_dir(self) -> Path:
        return self.root / "pretrain"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def skipped_file(self) -> Path:
        return self.root / "skipped.csv"

    def round_dir(self, round_: int) -> Path:
        return self.root / "rounds" / f"round_{round_:03d}"

    def finetune_checkpoint(self, round_: int) -> Path:
        """Where an interrupted fine-tuning of ``round_`` left its checkpoint."""
        return self.round_dir(round_) / FINETUNE_CHECKPOINT

    def relative(self, path: Path) -> str:
        """Path as stored in the database: relative to the project root when inside it."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(Path(path).resolve())

    def resolve(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    @property
    def archive(self) -> Path:
        """The archive root: where the recorded location is found now (see
        :func:`archive_location`), else the recorded absolute path."""
        return next((p for p in self.archive_candidates() if p.is_dir()),
                    self.archive_candidates()[-1])

    def archive_candidates(self) -> list[Path]:
        """Where the archive may be, in order: relative to the project (kept when both live
        under one folder, so moving that folder keeps them together), then absolute."""
        recorded = json.loads(self.store.get_meta(ARCHIVE_META) or "null") or {}
        found = []
        if recorded.get("relative"):
            found.append((self.root / recorded["relative"]).resolve())
        found.append(Path(recorded.get("absolute") or self.config.archive))
        return found

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    def close(self) -> None:
        self.store.close()


# Store meta key holding the archive's location ({"absolute": ..., "relative": ...}). It is
# kept in the store rather than config.json so that older alft versions still open projects.
ARCHIVE_META = "archive"


def archive_location(project_root: Path, archive_root: Path) -> dict[str, str | None]:
    """The archive's location as recorded: absolute, plus relative to the project when both
    live under one folder (the project's parent), so moving that folder keeps them together.

    An archive elsewhere (another disk, a shared mount) is recorded only as absolute: moving
    the project alone then keeps working.
    """
    project_root, archive_root = Path(project_root).resolve(), Path(archive_root).resolve()
    shared = project_root.parent
    relative = None
    if shared != Path(shared.anchor) and archive_root.is_relative_to(shared):
        relative = Path(os.path.relpath(archive_root, project_root)).as_posix()
    return {"absolute": str(archive_root), "relative": relative}


def open_project(root: Path | str, readonly: bool = False) -> Project:
    """Open an existing project; clear errors for a missing folder or a newer schema."""
    root = Path(root)
    if not root.exists():
        raise ProjectError(f"project folder {root} does not exist (create one with alft init-pool)")
    if not root.is_dir():
        raise ProjectError(f"{root} is not a folder")
    config = ProjectConfig.load(root / "config.json")
    store = Store.open(root / Store.FILENAME, readonly=readonly)
    return Project(root=root, config=config, store=store)


@contextlib.contextmanager
def project_lock(root: Path, command: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the project's write lock for the duration of one command.

    flock is released by the kernel when the holder dies, so a stale lock (kill -9) is taken
    over without any clean-up. The holder's pid and command are written next to it for the
    "busy" message. Read-only commands never take it.
    """
    if timeout is None:
        timeout = float(os.environ.get("ALFT_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
    lock_path = root / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(lock_path)
                    raise ProjectBusyError(
                        f"project is busy (pid {holder.get('pid', '?')}, command "
                        f"{holder.get('command', '?')}, since {holder.get('since', '?')}); "
                        "try again when it has finished") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command,
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(lock_path: Path) -> dict:
    try:
        return json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def writing(project_dir: Path | str, command: str, args: dict[str, Any]) -> Iterator[Project]:
    """Lock the project, open it, and record the command in the runs table.

    What every writing command does around its work: the run is recorded as ok, failed or
    interrupted, whatever happens inside."""
    root = Path(project_dir)
    if not (root / "config.json").exists():
        open_project(root).close()  # raises the precise "not a project" error
    with project_lock(root, command):
        project = open_project(root)
        try:
            with project.store.transaction():
                run_id = project.store.start_run(command, args)
            status = "failed"
            try:
                yield project
                status = "ok"
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                with project.store.transaction():
                    project.store.finish_run(run_id, status)
        finally:
            project.close()


@contextlib.contextmanager
def reading(project_dir: Path | str) -> Iterator[Project]:
    """Open the project read-only (never waits for a writer) and close it afterwards."""
    project = open_project(project_dir, readonly=True)
    try:
        yield project
    finally:
        project.close()
