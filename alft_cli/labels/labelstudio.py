"""Label Studio as files: reading its exports (writing tasks and config: :mod:`.lstasks`).

Exports read: JSON, JSON_MIN, CSV and snapshot JSON of a project that uses the config from
:func:`label_studio_config`. The rules (only submitted annotations count, the newest of
several wins, only ``choices`` results, ``data.alft_key`` before ``data.image``) are listed
in :mod:`alft_cli.labels`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from alft_cli.labels.base import (
    Classes,
    LabelRow,
    Problems,
    check_duplicates,
    norm_ref,
)
from alft_cli.labels.csvformat import Table, blank_columns, row_fits
from alft_cli.labels.lstasks import (  # noqa: F401  (names kept importable from here)
    LS_FROM_NAME,
    label_studio_config,
    write_label_studio_files,
    write_label_studio_tasks,
)


@dataclass
class _LsAnn:
    order: tuple[datetime, int]  # (updated_at, annotation id): the newest wins
    name: str  # "annotation 6", for messages
    where: str  # where its problems are reported
    by_name: dict[str, list[str]]  # Choices field name -> choices (JSON)
    cell: Any = None  # the raw choices value (JSON_MIN / CSV)


@dataclass
class _LsTask:
    where: str
    ref: str
    submitted: list[_LsAnn]
    drafts_only: bool = False


_OLDEST = datetime.min.replace(tzinfo=timezone.utc)
_ISO = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d(?::\d\d)?)(?:\.(\d+))?\s*(Z|[+-]\d\d:?\d\d)?$")


def _timestamp(value: Any) -> datetime:
    """Parse Label Studio's ISO times (any fraction length, ``Z``); unreadable -> oldest."""
    if not isinstance(value, str):
        return _OLDEST
    m = _ISO.match(value.strip())
    if not m:
        return _OLDEST
    date, clock, frac, zone = m.groups()
    # Python 3.10's fromisoformat takes only 3 or 6 fraction digits, HH:MM:SS and +HH:MM.
    clock = clock if len(clock) == 8 else clock + ":00"
    frac = ((frac or "") + "000000")[:6]
    zone = "+00:00" if zone in (None, "Z") else zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    try:
        t = datetime.fromisoformat(f"{date}T{clock}.{frac}{zone}")
    except ValueError:
        return _OLDEST
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _ls_ref(data: dict[str, Any]) -> str | None:
    key = data.get("alft_key")
    if isinstance(key, str) and key.strip():
        return norm_ref(key)
    image = data.get("image")
    if isinstance(image, str) and image.strip():
        return norm_ref(unquote(image.strip()))
    return None


def _pick_choice_field(
    stats: dict[str, set[str]], cls: Classes, noun: str
) -> tuple[str | None, str | None]:
    """Return (the Choices field holding the project classes, problem)."""
    if len(stats) <= 1:
        return next(iter(stats), None), None
    hits = {n: sum(cls.find(c) is not None for c in ch) for n, ch in stats.items()}
    matching = [n for n in stats if hits[n]]
    if len(matching) == 1:
        return matching[0], None
    complete = [n for n in matching if hits[n] == len(stats[n])]
    if len(complete) == 1:
        return complete[0], None
    names = ", ".join(repr(n) for n in stats)
    return None, (
        f"several {noun}s ({names}) hold choices and alft cannot tell which one holds the "
        "project classes"
    )


def _finish_ls(
    tasks: list[_LsTask],
    choices_of: Callable[[_LsAnn], list[str] | None],
    cls: Classes,
    problems: Problems,
    notes: list[str],
) -> tuple[list[LabelRow], int]:
    rows: list[LabelRow] = []
    skipped = drafts_only = disagreed = 0
    several: list[str] = []
    for task in tasks:
        if not task.submitted:
            skipped += 1
            drafts_only += task.drafts_only
            continue
        winner = max(task.submitted, key=lambda a: a.order)
        if len(task.submitted) > 1:
            several.append(task.where)
            seen = {cls.vector(choices_of(a) or [])[0] for a in task.submitted}
            disagreed += len(seen) > 1
        choices = choices_of(winner)
        if choices is None:
            problems.add(winner.where, f"{winner.name}: cannot read its choices {winner.cell!r}")
            continue
        vec, unknown = cls.vector(choices)
        for name in unknown:
            problems.add(winner.where, f"unknown class {name!r} in {winner.name}{cls.hint(name)}")
        if not unknown:
            rows.append(LabelRow(task.ref, vec, task.where))
    check_duplicates(rows, cls, problems, "task")
    if several:
        n = len(several)
        listed = ", ".join(several[:10]) + (", ..." if n > 10 else "")
        note = (
            f"{n} task{'s' if n > 1 else ''} had several submitted annotations ({listed}); "
            "the most recently updated one was used"
        )
        if disagreed:
            note += f"; in {disagreed} of them the annotations disagreed"
        notes.append(note)
    if drafts_only:
        notes.append(
            f"{drafts_only} task{'s' if drafts_only > 1 else ''} had only a draft, which is not "
            "a label (submit it in Label Studio to import it)"
        )
    return rows, skipped


def read_ls_json(
    text: str, cls: Classes, problems: Problems, notes: list[str]
) -> tuple[list[LabelRow], int]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        problems.add(None, f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
        return [], 0
    except (ValueError, RecursionError) as e:
        problems.add(None, f"is not valid JSON ({e})")
        return [], 0
    if not isinstance(doc, list):
        problems.add(None, "is not a JSON list of tasks (a Label Studio JSON or JSON_MIN export)")
        return [], 0
    if not doc:
        problems.add(
            None,
            "holds no tasks (Label Studio's Export button leaves out tasks nobody annotated)",
        )
        return [], 0
    items = [d for d in doc if isinstance(d, dict)]
    if any("annotations" in d for d in items):
        return _read_ls_full(doc, cls, problems, notes)
    if any("annotator" in d or "annotation_id" in d for d in items):
        records = []
        for i, item in enumerate(doc, 1):
            if isinstance(item, dict):
                records.append((None, item))
            else:
                problems.add(f"item {i}", "is not a JSON object")
        return _read_ls_flat(records, cls, problems, notes, from_csv=False)
    if items and all("data" in d for d in items):
        problems.add(
            None,
            "holds tasks without annotations: it is a Label Studio task file for import "
            "(like the one 'alft query' writes), not an export; label the tasks, then export "
            "the project from Label Studio",
        )
    else:
        problems.add(None, "is not a Label Studio export (no 'annotations' or 'annotator')")
    return [], 0


def _read_ls_full(
    doc: list[Any], cls: Classes, problems: Problems, notes: list[str]
) -> tuple[list[LabelRow], int]:
    """The JSON export (and the snapshot export): a list of tasks with their annotations."""
    tasks: list[_LsTask] = []
    fields: dict[str, set[str]] = {}
    other_types: set[str] = set()
    for i, task in enumerate(doc, 1):
        if not isinstance(task, dict):
            problems.add(f"task #{i}", "is not a JSON object")
            continue
        tid = task.get("id")
        where = f"task {tid}" if isinstance(tid, (int, str)) and str(tid) else f"task #{i}"
        data = task.get("data")
        if not isinstance(data, dict):
            problems.add(where, "has no 'data' object")
            continue
        ref = _ls_ref(data)
        if ref is None:
            problems.add(where, "has no image reference ('data.image' or 'data.alft_key')")
            continue
        annotations = task.get("annotations")
        if not isinstance(annotations, list):
            problems.add(where, "has no 'annotations' list")
            continue
        submitted = []
        for j, ann in enumerate(annotations, 1):
            if not isinstance(ann, dict):
                problems.add(where, f"annotation #{j} is not a JSON object")
                continue
            if ann.get("was_cancelled") is True:
                continue  # a skip says "not labeled", not "nothing present"
            aid = ann.get("id")
            name = f"annotation {aid}" if aid is not None else f"annotation #{j}"
            result = ann.get("result")
            if not isinstance(result, list):
                problems.add(where, f"{name} has no 'result' list")
                continue
            by_name: dict[str, list[str]] = {}
            ok = True
            for item in result:
                value = item.get("value") if isinstance(item, dict) else None
                rtype = item.get("type") if isinstance(item, dict) else None
                if rtype is None and isinstance(value, dict) and "choices" in value:
                    rtype = "choices"
                if rtype != "choices":
                    if isinstance(rtype, str):
                        other_types.add(rtype)
                    else:
                        problems.add(where, f"{name} has a result item without a 'type'")
                        ok = False
                    continue
                choices = value.get("choices") if isinstance(value, dict) else None
                if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                    problems.add(where, f"{name} has a 'choices' result without value.choices")
                    ok = False
                    continue
                field_name = str(item.get("from_name", ""))
                by_name.setdefault(field_name, []).extend(choices)
                fields.setdefault(field_name, set()).update(choices)
            if ok:
                order = (_timestamp(ann.get("updated_at") or ann.get("created_at")), _as_int(aid))
                submitted.append(_LsAnn(order, name, where, by_name))
        tasks.append(_LsTask(where, ref, submitted, drafts_only=bool(task.get("drafts"))))

    chosen, problem = _pick_choice_field(fields, cls, "Choices field")
    if problem:
        problems.add(None, problem)
    if not fields and other_types:
        problems.add(
            None,
            f"has no 'choices' results, only {', '.join(sorted(other_types))}: alft reads "
            "Label Studio projects labeled with a multi-choice Choices config",
        )
    return _finish_ls(
        tasks, lambda a: a.by_name.get(chosen, []) if chosen else [], cls, problems, notes
    )


# Keys of JSON_MIN / CSV rows that are never the choices: LS's own, and alft's task data.
_FLAT_META = frozenset(
    "id annotator annotation_id created_at updated_at lead_time agreement ground_truth "
    "was_cancelled drafts predictions meta image alft_key rank score cluster".split()
)


def _flat_choices(value: Any, from_csv: bool) -> list[str] | None:
    """Choices of one JSON_MIN / CSV cell; None when it cannot be read as choices.

    A single choice is a bare string, 2+ are ``{"choices": [...]}`` (a JSON string in the
    CSV), and an empty result is missing or ``""``.
    """
    if _blank(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if not (from_csv and text[:1] in ("{", "[")):
            return [text]
        try:
            value = json.loads(text)
        except ValueError:
            return [text]  # not JSON after all; as a class name it is refused later
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return list(value)
    return None


def _read_ls_flat(
    records: list[tuple[str | None, dict[str, Any]]],
    cls: Classes,
    problems: Problems,
    notes: list[str],
    *,
    from_csv: bool,
) -> tuple[list[LabelRow], int]:
    """JSON_MIN and CSV exports: one record per annotation, or one per unannotated task."""
    annotated = [rec for _, rec in records if not _blank(rec.get("annotator"))]
    key: str | None = None
    if any(LS_FROM_NAME in rec for _, rec in records):
        key = LS_FROM_NAME
    else:
        stats: dict[str, set[str]] = {}
        odd: set[str] = set()
        for rec in annotated:
            for k, v in rec.items():
                if k in _FLAT_META or _blank(v):
                    continue
                choices = _flat_choices(v, from_csv)
                if choices is None:
                    odd.add(k)
                else:
                    stats.setdefault(k, set()).update(choices)
        for k in odd:
            stats.pop(k, None)
        key, problem = _pick_choice_field(stats, cls, "column")
        if problem:
            problems.add(None, problem)
        elif key is None and odd:
            problems.add(
                None,
                f"has no choices column (the columns {', '.join(sorted(odd))} hold other "
                "annotation types): alft reads projects labeled with a Choices config",
            )

    tasks: dict[str, _LsTask] = {}
    for i, (rowloc, rec) in enumerate(records, 1):
        tid = rec.get("id")
        if _blank(tid):
            problems.add(rowloc or f"item {i}", "has no task 'id'")
            continue
        tid = str(tid).strip()
        where = f"task {tid}"
        loc = f"{where} ({rowloc})" if rowloc else where
        ref = _ls_ref(rec)
        if ref is None:
            problems.add(loc, "has no image reference ('image' or 'alft_key')")
            continue
        task = tasks.setdefault(tid, _LsTask(where, ref, []))
        if task.ref != ref:
            problems.add(loc, f"image {ref!r} differs from the same task's {task.ref!r}")
            continue
        if _blank(rec.get("annotator")):
            continue  # an unannotated task: LS writes one row with annotator null
        aid = rec.get("annotation_id")
        name = f"annotation {aid}" if not _blank(aid) else "annotation"
        order = (_timestamp(rec.get("updated_at") or rec.get("created_at")), _as_int(aid))
        task.submitted.append(_LsAnn(order, name, loc, {}, rec.get(key) if key else None))
    return _finish_ls(
        list(tasks.values()), lambda a: _flat_choices(a.cell, from_csv), cls, problems, notes
    )


def read_ls_csv(
    table: Table, cls: Classes, problems: Problems, notes: list[str]
) -> tuple[list[LabelRow], int]:
    where_h = f"row {table.header_row}"
    names = [h.casefold() for h in table.header]
    for required in ("id", "annotator"):
        if required not in names:
            problems.add(where_h, f"no {required!r} column (is this a Label Studio CSV export?)")
    if "image" not in names and "alft_key" not in names:
        problems.add(where_h, "no 'image' column")
    if problems.count:
        return [], 0  # without these columns every row would repeat the same problem
    blank = blank_columns(table)
    records: list[tuple[str | None, dict[str, Any]]] = []
    for rowno, cells in table.rows:
        if row_fits(cells, table, blank, f"row {rowno}", problems):
            records.append((f"row {rowno}", {n: c.strip() for n, c in zip(names, cells) if n}))
    return _read_ls_flat(records, cls, problems, notes, from_csv=True)
