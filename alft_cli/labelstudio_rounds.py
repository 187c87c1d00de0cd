"""A project's pending query and Label Studio: what push sends, what pull reads back.

Pure bookkeeping between the store and :mod:`alft_cli.labelstudio_live`; the store itself is
written only by :mod:`alft_cli.api`, and answers enter the project only through
``api.import_labels`` (a pull writes them as a Label Studio JSON export first).

* :func:`pending_tasks` lists the pending images with their query rank and, where the query
  had a model, the model's probabilities (read back from the query file's ``p_`` columns).
* :func:`image_urls` decides how Label Studio loads the images: a Local Files storage for the
  archive (checked by loading one image through the server) or ``--image-url-prefix``.
* :func:`answer_counts` says how many pushed tasks are done, skipped or untouched.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alft_cli.errors import LabelStudioError, OptionError
from alft_cli.labelstudio_live import Client, local_files_url

DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"


@dataclass(frozen=True)
class PendingTask:
    """One pending image of a query, with what its Label Studio task needs."""

    round: int
    sample_id: int
    key: str
    rank: int
    size: int  # images in its round's query: ranks run 1..size
    probabilities: list[float] | None
    model_round: int | None


def pending_tasks(project: Any) -> tuple[list[PendingTask], list[str]]:
    """The pending images of ``project`` (an open :class:`~alft_cli.project.Project`), by
    round then rank, and notes (e.g. a query file gone, so no model suggestions).

    Raises:
        OptionError: If nothing is pending.
    """
    store = project.store
    pending = store.pending_queries()
    if not pending:
        raise OptionError("nothing to push: no images are pending; make a query first "
                          "(alft query, or init-pool's initial list)")
    keys = store.keys_by_id()
    sizes = store.query_sizes()
    rounds = {r.round: r for r in store.rounds()}
    notes: list[str] = []
    probs: dict[int, dict[str, list[float]]] = {}
    for round_ in sorted({r for r, *_ in pending}):
        rec = rounds.get(round_)
        if rec is None or rec.model_round is None:
            continue  # no model chose this query: nothing to suggest
        path = project.resolve(rec.query_file) if rec.query_file else None
        found = _query_probabilities(path, project.classes) if path else None
        if found is None:
            notes.append(f"round {round_}'s query file ({rec.query_file}) cannot be read: its "
                         "tasks go without the model's suggestions")
        probs[round_] = found or {}
    out = []
    for round_, sample, rank, _score, _cluster in pending:
        key = keys[sample]
        rec = rounds.get(round_)
        out.append(PendingTask(round_, int(sample), key, int(rank), int(sizes[round_]),
                               probs.get(round_, {}).get(key),
                               rec.model_round if rec is not None else None))
    return out, notes


def _query_probabilities(path: Path, classes: Sequence[str]) -> dict[str, list[float]] | None:
    """filename -> p_<class> values of a query file (None if it cannot be read; {} when it
    has no p_ columns, as for strategies that ran without the model)."""
    columns = [f"p_{c}" for c in classes]
    out: dict[str, list[float]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if all(row.get(c) not in (None, "") for c in columns):
                    out[row["filename"]] = [float(row[c]) for c in columns]
    except (OSError, ValueError, KeyError, csv.Error):
        return None
    return out


def document_root(given: Path | str | None) -> Path:
    """Label Studio's LOCAL_FILES_DOCUMENT_ROOT as alft should assume it: ``given``, else the
    environment variable (set where the same shell starts Label Studio), else ``/`` (Label
    Studio's default)."""
    value = given if given is not None else os.environ.get(DOCUMENT_ROOT_ENV) or "/"
    return Path(value).expanduser().resolve()


def image_urls(client: Client, project_id: int, archive: Path, first_key: str, *,
               prefix: str | None, root: Path) -> tuple[Callable[[str], str], bool]:
    """How Label Studio will load each sample key's image; whether a storage was connected.

    With ``prefix`` the URL is ``prefix`` + the percent-encoded key and nothing is checked
    (the prefix may be a host only the labelers' browsers reach). Otherwise a Local Files
    storage for the archive is connected (Label Studio checks that local-files serving is on
    and the archive lies under its document root) and one image is loaded through the server
    to prove the URLs right.
    """
    if prefix:
        return (lambda key: prefix + quote(key, safe="/")), False
    created = client.ensure_local_storage(project_id, archive)

    def url(key: str) -> str:
        return local_files_url(archive / key, root)

    status = client.image_status(url(first_key))
    if status != 200:
        raise LabelStudioError(
            f"Label Studio at {client.url} cannot serve the archive's images (HTTP {status} "
            f"for {url(first_key)}): alft assumed its LOCAL_FILES_DOCUMENT_ROOT is {root}; "
            "give the server's with --document-root (or use --image-url-prefix)")
    return url, created


def answer_counts(exported: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many exported tasks have a submitted answer, only skips, or nothing yet."""
    done = skipped = 0
    for task in exported:
        anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        if any(a.get("was_cancelled") is not True for a in anns):
            done += 1
        elif anns:
            skipped += 1
    return {"done": done, "skipped": skipped, "untouched": len(exported) - done - skipped}
