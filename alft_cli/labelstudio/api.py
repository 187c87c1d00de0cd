"""The face of ``alft labelstudio push|pull|status``: a live Label Studio server in the loop.

A layer above :mod:`alft_cli.api`: answers enter the project only through
:func:`alft_cli.api.import_labels` (a pull hands it the fetched tasks as a Label Studio JSON
export), so they pass exactly the validation of the file route. :mod:`.rounds` decides what a
push sends and a pull fetches; :mod:`.client` talks to the server (label-studio-sdk).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from alft_cli import api
from alft_cli.atomic import atomic_open
from alft_cli.errors import OptionError
from alft_cli.labels.queryfiles import fresh_path
from alft_cli.labelstudio import rounds
from alft_cli.labelstudio.rounds import LsPullResult, LsPushResult
from alft_cli.progress import reporter
from alft_cli.project import reading, writing

__all__ = ["LsPullResult", "LsPushResult", "pull", "push", "status"]


def push(project_dir: Path | str, *, api_key: str, url: str | None = None,
                     ls_project: int | None = None, create: str | None = None,
                     image_url_prefix: str | None = None,
                     document_root: Path | str | None = None) -> LsPushResult:
    """Send the pending images to a Label Studio project as tasks, and record where.

    ``create`` makes a project with alft's labeling config; otherwise ``ls_project`` (default:
    the one pushed to last) must have a config naming the project classes. Tasks are
    recognised by ``data.alft_key`` and ``data.alft_round``, so pushing again adds none twice.
    The link (URL, project id, task id per image) is stored in one transaction once the
    server holds the tasks; a push that dies before that is simply run again.
    """
    if ls_project is not None and create:
        raise OptionError("--ls-project and --create: give one (an existing project or a new one)")
    args = {"url": url, "project": ls_project, "create": create,
            "image_url_prefix": image_url_prefix,
            "document_root": str(document_root) if document_root else None}
    with writing(project_dir, "labelstudio push", args) as project:
        store = project.store
        plan = rounds.push(
            project, store.ls_current_link(), api_key=api_key, url=url, ls_project=ls_project,
            create=create, image_url_prefix=image_url_prefix, document_root=document_root)
        with store.transaction():
            link = store.ls_link_save(plan.url, plan.project.id, plan.project.title)
            for round_, items in plan.task_ids.items():
                store.ls_tasks_save(link, round_, items)
        return LsPushResult(plan.url, plan.project.id, plan.project.title, plan.created,
                            sum(len(v) for v in plan.task_ids.values()), plan.added,
                            plan.existing, sorted(plan.task_ids), plan.images, plan.notes)


def pull(project_dir: Path | str, *, api_key: str, url: str | None = None,
                     wait: bool = False, timeout_s: float = 3600.0,
                     interval_s: float = 30.0) -> LsPullResult:
    """Import the answers given in Label Studio to the pushed pending images.

    Each look exports the pushed tasks of the pending images; those with a submitted answer
    are written as a Label Studio JSON export in the round folder and imported by
    :func:`alft_cli.api.import_labels`: the same validation, all or nothing, newest annotation wins.
    Skipped and unanswered tasks stay pending. With ``wait`` it looks again every
    ``interval_s`` until no task is left unanswered or ``timeout_s`` has passed.
    """
    if wait and not (timeout_s > 0 and interval_s > 0):
        raise OptionError("--timeout and --interval must be positive")
    deadline = time.monotonic() + timeout_s
    files: list[Path] = []
    notes: list[str] = []
    imported = looks = 0
    with reporter().task("answers from Label Studio", total=None) as progress:
        while True:
            looks += 1
            with reading(project_dir) as project:
                got = rounds.fetch(project, project.store.ls_current_link(),
                                               api_key=api_key, url=url)
                round_dir = project.round_dir(got.round)
            if got.counts["done"]:
                answered = [t for t in got.exported if t.get("annotations")]
                file = fresh_path(round_dir / "label-studio-pull.json")
                with atomic_open(file, "w") as fh:
                    json.dump(answered, fh, ensure_ascii=False, indent=1)
                result = api.import_labels(project_dir, file)
                files.append(file)
                imported += got.counts["done"]
                notes += result.notes
            progress.update(total=imported + got.counts["skipped"] + got.counts["untouched"],
                            completed=imported, left=got.counts["untouched"])
            if not wait or not got.counts["untouched"] or time.monotonic() >= deadline:
                break
            time.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))
    with reading(project_dir) as project:
        pending_left = len(project.store.pending())
    return LsPullResult(got.url, got.project.id, imported, got.counts["skipped"],
                        got.counts["untouched"], got.not_pushed, pending_left, files, looks,
                        notes)


def status(project_dir: Path | str, *, api_key: str,
                       url: str | None = None) -> dict[str, Any]:
    """Where the pending images were pushed and how many are answered; changes nothing.

    Keys: ``url``, ``project_id``, ``title``, ``last_push_at``, ``pushed`` (pending images
    with a task), ``done`` (a submitted answer, not imported yet), ``skipped``,
    ``untouched``, ``not_pushed``.
    """
    with reading(project_dir) as project:
        link = project.store.ls_current_link()
        got = rounds.fetch(project, link, api_key=api_key, url=url)
        return {"url": got.url, "project_id": got.project.id, "title": got.project.title,
                "last_push_at": link.last_push_at, "pushed": len(got.exported), **got.counts,
                "not_pushed": got.not_pushed}
