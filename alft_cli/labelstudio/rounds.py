"""A project's pending query and a Label Studio project: what push sends, what pull fetches.

The server side of ``alft labelstudio push/pull/status``, between the project (read only)
and :mod:`alft_cli.labelstudio.client`. It never writes the store:
:mod:`alft_cli.labelstudio.api` records the link a push returns, and answers enter the
project only through ``api.import_labels`` (a pull hands it the fetched tasks as a Label
Studio JSON export).

* :func:`push` sends the pending images as tasks (:mod:`alft_cli.labels.lstasks`, the same
  tasks as the file route): to a project it creates with alft's config, or to an existing
  one whose config it checks; images through a Local Files storage of the archive, checked
  by loading one image through the server, or from ``--image-url-prefix``.
* :func:`fetch` exports the pushed tasks of the pending images; a task or project deleted in
  Label Studio stops it with one line, before anything is written.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alft_cli.errors import LabelStudioError, OptionError
from alft_cli.labels import lstasks
from alft_cli.labels.queryfiles import QueryRow
from alft_cli.labelstudio.client import DEFAULT_URL, Client, LsProject

URL_ENV = "LABEL_STUDIO_URL"


@dataclass(frozen=True)
class PendingTask:
    """One pending image of a query, with what its Label Studio task needs."""

    round: int
    sample_id: int
    key: str
    rank: int
    score: float | None
    cluster: int | None
    size: int  # images in its round's query: ranks run 1..size
    probabilities: list[float] | None
    model_round: int | None
    quicklook: Path | None = None  # multi-band projects: the RGB preview people label on


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
    quick: dict[int, dict[str, Path]] = {}
    for round_ in sorted({r for r, *_ in pending}):
        rec = rounds.get(round_)
        path = project.resolve(rec.query_file) if rec is not None and rec.query_file else None
        if project.config.raster is not None and path is not None:
            quick[round_] = _query_quicklooks(path)
        if rec is None or rec.model_round is None:
            continue  # no model chose this query: nothing to suggest
        found = _query_probabilities(path, project.classes) if path else None
        if found is None:
            notes.append(f"round {round_}'s query file ({rec.query_file}) cannot be read: its "
                         "tasks go without the model's suggestions")
        probs[round_] = found or {}
    out = []
    for round_, sample, rank, score, cluster in pending:
        key = keys[sample]
        rec = rounds.get(round_)
        out.append(PendingTask(round_, int(sample), key, int(rank), score, cluster,
                               int(sizes[round_]),
                               probs.get(round_, {}).get(key),
                               rec.model_round if rec is not None else None,
                               quick.get(round_, {}).get(key)))
    if project.config.raster is not None:
        out = _with_missing_quicklooks(project, out)
    return out, notes


def _query_quicklooks(path: Path) -> dict[str, Path]:
    """filename -> the quicklook PNG a query file lists for it (only files that exist)."""
    out: dict[str, Path] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rel = row.get("quicklook") or ""
                if rel and (path.parent / rel).is_file():
                    out[row["filename"]] = path.parent / rel
    except (OSError, KeyError, csv.Error):
        return {}
    return out


def _with_missing_quicklooks(project: Any, tasks: list[PendingTask]) -> list[PendingTask]:
    """Render the quicklooks a multi-band project's pending images lack (a query file from
    before quicklooks, or a deleted PNG) into their round's ``quicklooks/`` folder: people
    cannot label a 12-band file in a browser."""
    from dataclasses import replace

    from alft_cli import quicklooks

    missing = [t for t in tasks if t.quicklook is None]
    made: dict[tuple[int, str], Path] = {}
    for round_ in sorted({t.round for t in missing}):
        items = [t for t in missing if t.round == round_]
        folder = project.round_dir(round_) / quicklooks.FOLDER
        written = quicklooks.for_query(project, [t.sample_id for t in items],
                                       [t.key for t in items], folder)
        made.update({(round_, k): folder.parent / rel for k, rel in written.items()})
    return [replace(t, quicklook=made.get((t.round, t.key), t.quicklook)) for t in tasks]


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


def server_url(given: str | None, link: Any) -> str:
    """--url, else the URL of the last push, else LABEL_STUDIO_URL, else localhost:8080."""
    last = link.url if link is not None else None
    return given or last or os.environ.get(URL_ENV) or DEFAULT_URL


# ---- what the commands report ---------------------------------------------------------------


@dataclass
class LsPushResult:
    """What labelstudio push did."""

    url: str
    project_id: int
    title: str
    created: bool
    pushed: int
    added: int
    existing: int
    rounds: list[int]
    images: str
    notes: list[str] = field(default_factory=list)


@dataclass
class LsPullResult:
    """What labelstudio pull did: counts of the pushed pending tasks at its last look."""

    url: str
    project_id: int
    imported: int  # tasks whose answers were imported (all looks together)
    skipped: int  # skipped in Label Studio: still pending
    untouched: int  # nobody answered yet: still pending
    not_pushed: int  # pending images without a task (push them)
    pending_left: int
    files: list[Path]  # the Label Studio exports written and imported
    looks: int
    notes: list[str] = field(default_factory=list)


# ---- push -----------------------------------------------------------------------------------


@dataclass
class PushPlan:
    """What a push did on the server, for the api to record."""

    url: str
    project: LsProject
    created: bool
    task_ids: dict[int, list[tuple[int, int]]]  # round -> (sample_id, task_id)
    added: int
    existing: int
    stale: int
    storage_created: bool
    images: str  # how the images are reached, for the summary
    notes: list[str] = field(default_factory=list)


def push(project: Any, link: Any, *, api_key: str, url: str | None, ls_project: int | None,
         create: str | None, image_url_prefix: str | None,
         document_root: Path | str | None) -> PushPlan:
    """Send the pending images of ``project`` to Label Studio (see :func:`labelstudio.api.push
    <alft_cli.labelstudio.api.push>`); ``link`` is the store's current link or None."""
    pending, notes = pending_tasks(project)
    # Checked before anything changes on the server: the archive must be below the root.
    if project.config.raster is not None and not image_url_prefix:
        # Multi-band tasks show quicklooks from the project's folder, so the archive itself
        # need not be below the document root (only a sample without a quicklook uses it).
        root = lstasks.document_root(document_root)
        image_url = lambda key: lstasks.local_files_url(project.archive / key, root)  # noqa: E731
    else:
        image_url = lstasks.image_url_function(project.archive, prefix=image_url_prefix,
                                               root=document_root)
    target_url = server_url(url, link)
    client = Client(target_url, api_key)
    if create:
        if len(create.strip()) < 3:
            raise OptionError(f"--create {create!r}: Label Studio wants a title of 3 or more "
                              "characters")
        target = client.create_project(create.strip(),
                                       lstasks.label_studio_config(project.classes),
                                       description=f"alft project {project.root}")
    else:
        if ls_project is None:
            if link is None or link.url != client.url:
                raise OptionError("which Label Studio project? give --ls-project ID (an existing "
                                  "project) or --create TITLE (a new one)")
            ls_project = link.project_id
        target = client.check_project(ls_project, project.classes)
    try:
        return _push_tasks(project, client, target, pending, notes, image_url,
                           image_url_prefix=image_url_prefix, document_root=document_root,
                           created=bool(create))
    except BaseException:
        if create:  # a failed push changes nothing: take back the project it made
            with contextlib.suppress(LabelStudioError):
                client.delete_project(target.id)
        raise


def _push_tasks(project: Any, client: Client, target: LsProject, pending: list[PendingTask],
                notes: list[str], image_url: Any, *, image_url_prefix: str | None,
                document_root: Path | str | None, created: bool) -> PushPlan:
    storage_created = False
    quick = {t.key: t.quicklook for t in pending if t.quicklook is not None}
    served = project.archive
    if quick:
        # A browser shows no 12-band GeoTIFF: multi-band tasks show their RGB quicklooks,
        # served from the project's rounds/ folder (or --image-url-prefix + the path of the
        # quicklook below rounds/).
        served = project.root / "rounds"
        image_url = _quicklook_urls(quick, image_url, served, image_url_prefix, document_root)
    if image_url_prefix:
        images = f"from {image_url_prefix}"
    else:
        storage_created = client.ensure_local_storage(target.id, served)
        probe = image_url(pending[0].key)
        shown = "project's quicklooks" if quick else "archive's images"
        status = client.image_status(probe)
        if status != 200:
            raise LabelStudioError(
                f"Label Studio at {client.url} cannot show the {shown} (HTTP {status} "
                f"for {probe}): alft took its LOCAL_FILES_DOCUMENT_ROOT to be "
                f"{lstasks.document_root(document_root)}; give the server's with "
                "--document-root, or use --image-url-prefix")
        images = f"Local Files storage {served}" + (" (quicklooks)" if quick else "")
    tasks: list[dict[str, Any]] = []
    for round_ in sorted({t.round for t in pending}):
        items = [t for t in pending if t.round == round_]
        rows = [QueryRow(t.key, t.rank, float("nan") if t.score is None else t.score,
                         -1 if t.cluster is None else t.cluster, t.probabilities)
                for t in items]
        model = items[0].model_round
        tasks += lstasks.label_studio_tasks(
            rows, project.classes, image_url, f"alft-r{model}" if model is not None else "alft",
            round_=round_, size=items[0].size)
    outcome = client.push(target.id, tasks)
    by_round: dict[int, list[tuple[int, int]]] = {}
    for t in pending:
        by_round.setdefault(t.round, []).append((t.sample_id, outcome.task_ids[(t.key, t.round)]))
    if outcome.stale:
        notes.append(f"the Label Studio project also holds {outcome.stale} unanswered tasks "
                     "alft pushed for earlier or cancelled queries; alft ignores their answers")
    return PushPlan(client.url, target, created, by_round, outcome.added, outcome.existing,
                    outcome.stale, storage_created, images, notes)


def _quicklook_urls(quick: dict[str, Path], image_url: Any, served: Path,
                    prefix: str | None, root: Path | str | None) -> Any:
    """Key -> URL of its quicklook (keys without one keep ``image_url``)."""
    if prefix:
        return lambda key: (prefix + quote(quick[key].relative_to(served).as_posix(), safe="/")
                            if key in quick else image_url(key))
    base = lstasks.document_root(root)
    lstasks.local_files_url(served / "x", base)  # refuses a rounds/ folder outside the root
    return lambda key: (lstasks.local_files_url(quick[key], base) if key in quick
                        else image_url(key))


# ---- pull / status --------------------------------------------------------------------------


@dataclass
class Fetched:
    """The pushed pending tasks as Label Studio has them now."""

    url: str
    project: LsProject
    exported: list[dict[str, Any]]  # the JSON export of the pushed pending tasks
    counts: dict[str, int]  # done / skipped / untouched
    not_pushed: int  # pending images no task was pushed for
    round: int  # the latest pending round (where a pull writes its file)


def fetch(project: Any, link: Any, *, api_key: str, url: str | None) -> Fetched:
    """Export the pushed tasks of ``project``'s pending images from the last linked project.

    Raises:
        OptionError: If nothing was pushed, or nothing is pending.
        LabelStudioError: If the server cannot be used, or a pushed task or the project is
            gone (deleted in Label Studio).
    """
    store = project.store
    if link is None:
        raise OptionError("nothing was pushed to Label Studio yet: alft labelstudio push "
                          f"-p {project.root} first")
    pending = store.pending_queries()
    if not pending:
        raise OptionError("no images are pending: everything queried is labeled (alft "
                          "status); make a query, then push it")
    keys = store.keys_by_id()
    linked = store.ls_tasks(link.id)
    pushed = {linked[(r, s)]: keys[s] for r, s, *_ in pending if (r, s) in linked}
    client = Client(url or link.url, api_key)
    target = client.project(link.project_id)
    exported = client.export(target.id, list(pushed))
    gone = sorted(set(pushed) - {t.get("id") for t in exported})
    if gone:
        shown = ", ".join(f"task {t} ({pushed[t]})" for t in gone[:3])
        raise LabelStudioError(
            f"Label Studio project {target.id} no longer has {len(gone)} pushed task"
            f"{'s' if len(gone) > 1 else ''} ({shown}{', ...' if len(gone) > 3 else ''}; "
            f"deleted?): alft labelstudio push -p {project.root} makes them again")
    return Fetched(client.url, target, exported, answer_counts(exported),
                   len(pending) - len(pushed), max(r for r, *_ in pending))


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
