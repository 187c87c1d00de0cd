"""Label files: read what people labeled, write what they should label.

alft never labels images itself. ``alft query`` writes a *to-label file*; people label the
images outside alft (in a spreadsheet or in Label Studio) and ``alft import-labels FILE``
reads the result back with :func:`read_label_file`. This module only reads and writes files.
It never touches the project store, so a refused file leaves the project exactly as it was.

Formats read (``fmt="auto"`` tells them apart by content: JSON is Label Studio; a CSV with an
``annotation_id`` or ``annotator`` column is a Label Studio CSV; a CSV with a ``labels``
column is a list CSV; any other CSV is one-hot):

* **one-hot CSV**: a ``filename`` column plus one 0/1 column per project class. The class
  columns must be exactly the project classes, in any order.
* **list CSV**: ``filename,labels``, where ``labels`` holds class names joined by ``;``. An
  empty cell means "no class present", which is a label too (every class is 0).
* **alft query CSV** (written by :func:`write_query_csv`): a list CSV with the extra
  columns ``rank``, ``score``, ``cluster`` (and ``suggested``) and ``p_<class>``. These are
  ignored on import. The ``labels`` column starts out holding the model's suggestions
  (classes with p >= 0.5), so people correct it rather than type it. **Importing the query
  file unchanged therefore means accepting every suggestion.** An empty cell still means
  "no class present", not "not labeled yet", so delete the rows you did not label. (For the
  random initial set there is no model, so every cell starts out empty.)
* **Label Studio** exports (JSON, JSON_MIN, CSV, snapshot JSON) of a project that uses the
  config from :func:`label_studio_config`.

Accepted without complaint: a UTF-8 BOM, CRLF line ends, ``,``, ``;`` or tab as the CSV
delimiter (guessed from the header line, or taken from an Excel ``sep=`` line), quoted
fields, whitespace around names and values, class and header names in any case (the
project's spelling is returned), backslashes in file names (turned into ``/``), and a
leading ``./``.

Everything else is refused as a whole with :class:`~alft_cli.errors.LabelFileError`: among
others unknown, missing or doubled columns, unknown class names, values other than 0/1,
empty cells in one-hot columns, empty filenames, and a filename given twice in one file
(even with the same labels, because that hints at a copy-paste slip). Its message is one
line. Its ``details`` hold one line per problem, naming the row (the header is row 1, as in a
spreadsheet) or the Label Studio task. All problems are collected before the file is
refused, so one round of fixes is enough.

Label Studio rules:

* Only submitted annotations are labels. Skipped (``was_cancelled``) annotations, drafts,
  predictions and tasks with no annotation are not labels; they are counted in
  ``ParsedLabels.skipped``. A submitted annotation with an empty result means "no class
  present".
* When a task has several submitted annotations, the most recently updated one wins (on a
  tie, the higher annotation id wins). ``ParsedLabels.notes`` says how many tasks, and which
  ones, were settled this way.
* Only ``choices`` results count. If the project has several Choices fields, the one whose
  choices are project classes is used. If that cannot be decided, the file is refused.
* ``data.alft_key`` (written by :func:`write_label_studio_tasks`) is used as the file
  reference when present. Otherwise ``data.image`` is used, URL-decoded. :func:`match_keys`
  maps either one to a sample key. Two labeled tasks for one image are refused, like two
  CSV rows.
* A task file without annotations (the import payload that alft writes) is refused with a
  hint to export from Label Studio. An empty export (``[]``) is refused too: the web UI's
  Export button leaves out unannotated tasks.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from alft_cli.atomic import atomic_write_text
from alft_cli.errors import LabelFileError, OptionError

FORMATS = ("auto", "onehot", "list", "label-studio")
LABEL_SEPARATOR = ";"
SUGGEST_THRESHOLD = 0.5
# Columns of an alft query CSV that are ignored on import (besides p_<class>).
QUERY_COLUMNS = ("rank", "score", "cluster", "suggested")
MAX_LISTED_PROBLEMS = 50
LS_FROM_NAME = "labels"

# Words people type to mean "nothing here". They are refused, with a hint, rather than
# guessed, because the list format already spells "nothing" as an empty cell.
_NOTHING_WORDS = frozenset({"none", "nothing", "-", "n/a", "na", "null", "empty", "no", "0"})


@dataclass(frozen=True)
class LabelRow:
    """One labeled image read from a label file.

    Attributes:
        ref: The file reference as given, normalized to POSIX form. For Label Studio this is
            ``data.alft_key`` when present, otherwise the URL-decoded ``data.image``.
        labels: 0/1 per project class, in project class order.
        where: Where the row came from: ``"row 7"`` (CSV) or ``"task 5"`` (Label Studio).
    """

    ref: str
    labels: tuple[int, ...]
    where: str


@dataclass(frozen=True)
class ParsedLabels:
    """The validated content of a label file.

    Attributes:
        path: The file that was read.
        format: ``"onehot"``, ``"list"`` or ``"label-studio"``.
        rows: The real labels only (no skipped or unannotated tasks), in file order.
        skipped: Label Studio tasks without a usable annotation (none, or only skipped ones).
        notes: Things the user should know about how the file was read.
    """

    path: Path
    format: str
    rows: list[LabelRow]
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QueryRow:
    """One image to label, as written to a query file.

    Attributes:
        filename: The sample key (POSIX path relative to the archive root).
        rank: 1 = label this first.
        score: The strategy's score for the image.
        cluster: The cluster the image was drawn from (-1 when there is none).
        probabilities: The model's per-class probabilities, or None when there is no model
            yet (the random initial set).
    """

    filename: str
    rank: int
    score: float
    cluster: int
    probabilities: Sequence[float] | None = None


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


class _Classes:
    """Project class names. A name is looked up exactly first, then case-insensitively."""

    def __init__(self, classes: Sequence[str]) -> None:
        names = [str(c) for c in classes]
        if not names:
            raise ValueError("the project has no classes")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate project classes: {names}")
        self.names = tuple(names)
        self._exact = {n: i for i, n in enumerate(names)}
        self._folded: dict[str, int | None] = {}
        for i, n in enumerate(names):
            key = n.strip().casefold()
            # None marks two classes that differ only in case: only an exact match works.
            self._folded[key] = None if key in self._folded else i

    def find(self, name: str) -> int | None:
        i = self._exact.get(name)
        if i is None:
            i = self._exact.get(name.strip())
        if i is None:
            i = self._folded.get(name.strip().casefold())
        return i

    def hint(self, name: str) -> str:
        folded = {n.casefold(): n for n in self.names}
        close = difflib.get_close_matches(name.strip().casefold(), list(folded), n=1, cutoff=0.6)
        if close:
            return f" (did you mean {folded[close[0]]!r}?)"
        if len(self.names) <= 20:
            return f" (project classes: {', '.join(self.names)})"
        return ""

    def vector(self, names: Iterable[str]) -> tuple[tuple[int, ...], list[str]]:
        """Return the 0/1 vector for ``names`` and the names that are not project classes."""
        vec = [0] * len(self.names)
        unknown = []
        for name in names:
            i = self.find(name)
            if i is None:
                unknown.append(name)
            else:
                vec[i] = 1
        return tuple(vec), unknown

    def spell(self, vec: Sequence[int]) -> str:
        names = [n for n, v in zip(self.names, vec) if v]
        return LABEL_SEPARATOR.join(names) if names else "(no class)"


class _Problems:
    """Collects problems so a file is refused once, with all of them listed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.lines: list[str] = []

    def add(self, where: str | None, message: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_LISTED_PROBLEMS:
            prefix = f"{self.path.name} {where}" if where else self.path.name
            self.lines.append(f"{prefix}: {message}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        details = list(self.lines)
        if self.count > len(details):
            details.append(f"... and {self.count - len(details)} more problems")
        noun = "problem" if self.count == 1 else "problems"
        raise LabelFileError(
            f"Label file {self.path} refused: {self.count} {noun}; nothing was imported",
            details=details,
        )


def read_label_file(path: Path, classes: Sequence[str], fmt: str = "auto") -> ParsedLabels:
    """Read and validate a label file, all or nothing.

    Args:
        path: The file: one-hot CSV, list CSV (an alft query CSV counts), or a Label Studio
            export (JSON, JSON_MIN, CSV, snapshot).
        classes: The project classes, in project order. Names in the file are matched to
            them case-insensitively.
        fmt: ``"auto"`` (tell the format from the content), ``"onehot"``, ``"list"`` or
            ``"label-studio"``.

    Returns:
        The labels, each as a 0/1 vector in project class order.

    Raises:
        LabelFileError: If anything in the file is wrong. Every problem is listed, one line
            each, in ``details``.
        OptionError: If ``fmt`` is not a known format.
        ValueError: If ``classes`` is empty or has duplicates (a caller bug).

    Example:
        >>> parsed = read_label_file(Path("round1.csv"), ["water", "cars"])  # doctest: +SKIP
        >>> parsed.rows[0]  # doctest: +SKIP
        LabelRow(ref='lake/img01.jpg', labels=(1, 0), where='row 2')
    """
    if fmt not in FORMATS:
        raise OptionError(f"unknown label file format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = Path(path)
    cls = _Classes(classes)
    problems = _Problems(path)
    notes: list[str] = []
    text = _read_text(path, problems)
    problems.raise_if_any()
    assert text is not None

    is_json = text.lstrip()[:1] in ("[", "{")
    rows: list[LabelRow] = []
    skipped = 0
    if is_json:
        if fmt in ("onehot", "list"):
            problems.add(
                None, f"is JSON, not a {fmt} CSV (a Label Studio export? use label-studio)"
            )
        else:
            fmt = "label-studio"
            rows, skipped = _read_ls_json(text, cls, problems, notes)
    else:
        table = _parse_csv(text, problems)
        if table is not None:
            names = {h.casefold() for h in table.header}
            looks_ls = "annotation_id" in names or "annotator" in names
            if fmt == "auto":
                fmt = "label-studio" if looks_ls else "list" if "labels" in names else "onehot"
            if fmt == "label-studio":
                rows, skipped = _read_ls_csv(table, cls, problems, notes)
            elif fmt == "list":
                rows = _read_list(table, cls, problems, notes)
            else:
                rows = _read_onehot(table, cls, problems)
    problems.raise_if_any()
    return ParsedLabels(path=path, format=fmt, rows=rows, skipped=skipped, notes=notes)


def header_classes(path: Path) -> list[str]:
    """The class names of a one-hot CSV: its header minus the ``filename`` column.

    Used by ``init-pool --labels`` to take the project classes from the gold file.

    Raises:
        LabelFileError: unreadable file, no header, no ``filename`` column, or a list CSV
            (whose header names no classes).
    """
    path = Path(path)
    problems = _Problems(path)
    text = _read_text(path, problems)
    problems.raise_if_any()
    assert text is not None
    if text.lstrip()[:1] in ("[", "{"):
        problems.add(None, "is JSON; give the classes with --classes, or a one-hot CSV")
        problems.raise_if_any()
    table = _parse_csv(text, problems)
    problems.raise_if_any()
    assert table is not None
    names = [h.strip() for h in table.header]
    lowered = [n.casefold() for n in names]
    if "filename" not in lowered:
        problems.add("row 1", "has no 'filename' column")
    elif "labels" in lowered:
        problems.add("row 1", "is a list CSV (filename,labels): its header names no classes; "
                        "give --classes too")
    problems.raise_if_any()
    classes = [n for n in names if n.casefold() != "filename"]
    if not classes or any(not c for c in classes):
        problems.add("row 1", "header has no class columns (or an empty column name)")
    folded = [c.casefold() for c in classes]
    dupes = sorted({c for c in folded if folded.count(c) > 1})
    if dupes:
        problems.add("row 1", f"duplicate class columns: {', '.join(dupes)}")
    problems.raise_if_any()
    return classes


def _read_text(path: Path, problems: _Problems) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problems.add(None, "file not found")
        return None
    except IsADirectoryError:
        problems.add(None, "is a directory, not a file")
        return None
    except PermissionError:
        problems.add(None, "cannot be read (permission denied)")
        return None
    except OSError as e:
        problems.add(None, f"cannot be read ({e.strerror or e})")
        return None
    # Name the usual wrong files: a spreadsheet saved in its own format, or Excel's
    # "Unicode text", which is UTF-16.
    if data.startswith(b"PK\x03\x04"):
        problems.add(None, "is a ZIP file (an Excel workbook?), not text; save it as 'CSV UTF-8'")
        return None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        problems.add(None, "is UTF-16 text; save it as UTF-8 ('CSV UTF-8' in Excel)")
        return None
    if b"\x00" in data:
        problems.add(None, "holds binary data, not CSV or JSON text")
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        problems.add(
            None,
            f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8 ('CSV UTF-8' in Excel)",
        )
        return None
    if not text.strip():
        problems.add(None, "is empty")
        return None
    return text


# ---- CSV ------------------------------------------------------------------------------


@dataclass
class _Table:
    header: list[str]
    header_row: int
    rows: list[tuple[int, list[str]]]  # (spreadsheet row number, cells)
    delimiter: str


_SEP_LINE = re.compile(r'^\s*"?sep=(.)"?\s*$')


def _sniff_delimiter(line: str) -> str:
    counts = {",": 0, ";": 0, "\t": 0}
    quoted = False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    # A tie goes to ",", which is what most tools write.
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _lines(text: str) -> Iterable[str]:
    """The lines of ``text``, lazily (a label file can have a million)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end == -1 else end + 1
        yield text[start:end]
        start = end


def _parse_csv(text: str, problems: _Problems) -> _Table | None:
    delimiter = None
    first, _, rest = text.partition("\n")
    sep = _SEP_LINE.match(first.rstrip("\r"))
    if sep:
        # Excel's "sep=;" hint line. Excel hides it, so rows are numbered without it.
        delimiter, text = sep.group(1), rest
    else:
        header_line = next((ln for ln in _lines(text) if ln.strip()), "")
        delimiter = _sniff_delimiter(header_line)
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter or ",", skipinitialspace=True
    )
    header: list[str] | None = None
    header_row = 0
    rows: list[tuple[int, list[str]]] = []
    rowno = 0
    try:
        for rowno, cells in enumerate(reader, 1):
            if not "".join(cells).strip():
                continue  # blank lines (or only delimiters), often left by spreadsheets
            if header is None:
                header, header_row = [c.strip() for c in cells], rowno
            else:
                rows.append((rowno, cells))
    except csv.Error as e:
        problems.add(f"row {rowno + 1}", f"cannot be read as CSV ({e})")
        return None
    if header is None:
        problems.add(None, "is empty")
        return None
    if not rows:
        problems.add(None, "has a header but no data rows")
        return None
    return _Table(header, header_row, rows, delimiter or ",")


def _norm_ref(ref: str) -> str:
    ref = ref.strip().replace("\\", "/")
    while ref.startswith("./"):
        ref = ref[2:]
    return ref


def _is_query_column(name: str, cls: _Classes) -> bool:
    low = name.casefold()
    return low in QUERY_COLUMNS or (low.startswith("p_") and cls.find(name[2:]) is not None)


def _blank_columns(table: _Table) -> list[int]:
    """Columns without a header name. Spreadsheets add them; they must stay empty."""
    return [j for j, name in enumerate(table.header) if not name]


def _row_fits(
    cells: list[str], table: _Table, blank: list[int], where: str, problems: _Problems
) -> bool:
    width = len(table.header)
    if len(cells) == width and not blank:
        return True  # the common case, kept fast for files with a million rows
    extra = len(cells) > width and any(c.strip() for c in cells[width:])
    if len(cells) < width or extra:
        hint = ""
        if extra and table.delimiter != ",":
            hint = f" (quote cells that contain {table.delimiter!r})"
        problems.add(where, f"has {len(cells)} fields, but the header has {width}{hint}")
        return False
    ok = True
    for j in blank:
        if cells[j].strip():
            problems.add(where, f"value {cells[j].strip()!r} in column {j + 1}, which has no name")
            ok = False
    return ok


def _check_duplicates(rows: list[LabelRow], cls: _Classes, problems: _Problems, noun: str) -> None:
    first: dict[str, LabelRow] = {}
    for row in rows:
        prev = first.setdefault(row.ref, row)
        if prev is row:
            continue
        if prev.labels == row.labels:
            problems.add(row.where, f"duplicate {noun} for {row.ref!r} (same as {prev.where})")
        else:
            problems.add(
                row.where,
                f"conflicting {noun}s for {row.ref!r}: {prev.where} says "
                f"{cls.spell(prev.labels)}, {row.where} says {cls.spell(row.labels)}",
            )


def _row_ref(cells: list[str], fcol: int | None, where: str,
             problems: _Problems) -> tuple[str, bool]:
    """A row's normalized filename, and whether it is usable (empty names are a problem)."""
    if fcol is None:
        return "", True
    ref = _norm_ref(cells[fcol])
    if not ref:
        problems.add(where, "empty filename")
        return ref, False
    return ref, True


def _read_onehot(table: _Table, cls: _Classes, problems: _Problems) -> list[LabelRow]:
    where_h = f"row {table.header_row}"
    fcol: int | None = None
    class_cols: dict[int, int] = {}  # column -> class index
    for j, name in enumerate(table.header):
        if not name:
            continue
        i = cls.find(name)
        if i is not None:
            if i in class_cols.values():
                problems.add(where_h, f"two columns for class {cls.names[i]!r}")
            else:
                class_cols[j] = i
        elif name.casefold() == "filename":
            if fcol is not None:
                problems.add(where_h, "two 'filename' columns")
            fcol = j if fcol is None else fcol
        elif not _is_query_column(name, cls):
            problems.add(where_h, f"unknown column {name!r}: not a project class{cls.hint(name)}")
    if fcol is None:
        problems.add(where_h, "no 'filename' column")
    missing = [n for i, n in enumerate(cls.names) if i not in class_cols.values()]
    if missing:
        problems.add(where_h, f"missing class column(s): {', '.join(map(repr, missing))}")

    blank = _blank_columns(table)
    class_items = list(class_cols.items())
    out: list[LabelRow] = []
    for rowno, cells in table.rows:
        where = f"row {rowno}"
        if not _row_fits(cells, table, blank, where, problems):
            continue
        ref, ok = _row_ref(cells, fcol, where, problems)
        vec = [0] * len(cls.names)
        for j, i in class_items:
            bit = _BITS.get(cells[j])
            if bit is None:
                bit = _BITS.get(cells[j].strip())
            if bit is not None:
                vec[i] = bit
                continue
            ok = False
            value = cells[j].strip()
            if value:
                problems.add(where, f"value {value!r} for class {cls.names[i]!r} is not 0 or 1")
            else:
                problems.add(where, f"no value for class {cls.names[i]!r} (write 0 or 1)")
        if ok and fcol is not None:
            out.append(LabelRow(ref, tuple(vec), where))
    _check_duplicates(out, cls, problems, "row")
    return out


_BITS = {"0": 0, "1": 1}


def _unknown_class_hint(name: str, cls: _Classes) -> str:
    if "," in name and all(cls.find(part) is not None for part in name.split(",")):
        return " (separate classes with ';')"
    if name.strip().casefold() in _NOTHING_WORDS:
        return " (leave the cell empty when no class is present)"
    return cls.hint(name)


def _read_list(
    table: _Table, cls: _Classes, problems: _Problems, notes: list[str]
) -> list[LabelRow]:
    where_h = f"row {table.header_row}"
    fcol: int | None = None
    lcol: int | None = None
    query_cols: list[str] = []
    for j, name in enumerate(table.header):
        low = name.casefold()
        if not name:
            continue
        if low in ("filename", "labels"):
            if (fcol if low == "filename" else lcol) is not None:
                problems.add(where_h, f"two {low!r} columns")
            elif low == "filename":
                fcol = j
            else:
                lcol = j
        elif _is_query_column(name, cls):
            query_cols.append(low)
        elif cls.find(name) is not None:
            problems.add(
                where_h,
                f"column {name!r} is a class column, but the file also has a 'labels' column; "
                "use one format (one-hot or list)",
            )
        else:
            problems.add(
                where_h,
                f"unknown column {name!r} (a list CSV has 'filename' and 'labels', and alft's "
                "query columns rank, score, cluster, p_<class>)",
            )
    if fcol is None:
        problems.add(where_h, "no 'filename' column")
    if lcol is None:
        problems.add(where_h, "no 'labels' column")

    blank = _blank_columns(table)
    out: list[LabelRow] = []
    empty_cells = 0
    for rowno, cells in table.rows:
        where = f"row {rowno}"
        if not _row_fits(cells, table, blank, where, problems):
            continue
        ref, ok = _row_ref(cells, fcol, where, problems)
        if lcol is None:
            continue
        names = [t.strip() for t in cells[lcol].split(LABEL_SEPARATOR) if t.strip()]
        empty_cells += not names
        vec, unknown = cls.vector(names)
        for name in unknown:
            problems.add(where, f"unknown class {name!r}{_unknown_class_hint(name, cls)}")
            ok = False
        if ok and fcol is not None:
            out.append(LabelRow(ref, vec, where))
    _check_duplicates(out, cls, problems, "row")

    if "rank" in query_cols:
        # Importing a query file as-is silently accepts the model's suggestions, and an
        # untouched initial query file says "no class present" for every image. Say so.
        notes.append(
            "this is an alft query file: its labels column was pre-filled with the model's "
            "suggestions, so rows left unchanged were read as the suggestions"
        )
        if empty_cells == len(table.rows) and not any(c.startswith("p_") for c in query_cols):
            notes.append(
                f"every one of the {len(table.rows)} rows has an empty labels column, which "
                "means 'no class present'; if you have not labeled them yet, do not import it"
            )
    return out


# ---- Label Studio ------------------------------------------------------------------------


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
        return _norm_ref(key)
    image = data.get("image")
    if isinstance(image, str) and image.strip():
        return _norm_ref(unquote(image.strip()))
    return None


def _pick_choice_field(
    stats: dict[str, set[str]], cls: _Classes, noun: str
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
    cls: _Classes,
    problems: _Problems,
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
    _check_duplicates(rows, cls, problems, "task")
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


def _read_ls_json(
    text: str, cls: _Classes, problems: _Problems, notes: list[str]
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
    doc: list[Any], cls: _Classes, problems: _Problems, notes: list[str]
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
    cls: _Classes,
    problems: _Problems,
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


def _read_ls_csv(
    table: _Table, cls: _Classes, problems: _Problems, notes: list[str]
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
    blank = _blank_columns(table)
    records: list[tuple[str | None, dict[str, Any]]] = []
    for rowno, cells in table.rows:
        if _row_fits(cells, table, blank, f"row {rowno}", problems):
            records.append((f"row {rowno}", {n: c.strip() for n, c in zip(names, cells) if n}))
    return _read_ls_flat(records, cls, problems, notes, from_csv=True)


# --------------------------------------------------------------------------------------
# Matching references to sample keys
# --------------------------------------------------------------------------------------

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(.*)$", re.S)
_DRIVE = re.compile(r"^[A-Za-z]:/")
# /data/upload/<project>/<8 hex>-<original name>: LS keeps only the name of an upload.
_UPLOAD = re.compile(r"^/?data/upload/[^/]+/(?:[0-9a-f]{8}-)?([^/]+)$")
_LOCAL_FILES = re.compile(r"^/?data/local-files/?\?(?:.*&)?d=(.*)$", re.S)


def _strip_lead(path: str) -> str:
    while path.startswith(("./", "/")):
        path = path[2:] if path.startswith("./") else path[1:]
    return path


def _ref_paths(ref: str) -> list[str]:
    """Candidate archive paths for a reference: LS and URL wrappers removed, decoded."""
    s = ref.strip().replace("\\", "/")
    # The substring tests skip the regexes for plain paths, the usual case.
    url = _URL.match(s) if "://" in s else None
    http = url is not None and url.group(1).lower() in ("http", "https")
    if http:
        parts = urlsplit(s)
        s = parts.path + (f"?{parts.query}" if parts.query else "")
    elif url:
        s = url.group(3)  # s3://bucket/key, gs://..., azure-blob://..., file:///abs/path
    local = _LOCAL_FILES.match(s) if "data/" in s else None
    if local:
        s = local.group(1)
    else:
        upload = _UPLOAD.match(s) if "data/" in s else None
        if upload:
            s = upload.group(1)
        elif http:
            s = s.partition("?")[0]  # e.g. a presigned URL's signature
    if _DRIVE.match(s):
        s = s[2:]
    paths = [_strip_lead(s)]
    if "%" in s:
        decoded = _strip_lead(unquote(s))
        if decoded != paths[0]:
            paths.append(decoded)
    return [p for p in paths if p]


class _TailIndex:
    """Maps the last ``n`` path components of every key to the key(s), built per ``n``.

    Built lazily and only for the path depths that references actually have, so matching a
    million keys costs one pass over them per depth (usually one: basenames).
    """

    def __init__(self, keys: AbstractSet[str]) -> None:
        self._keys = keys
        self._tables: dict[int, dict[str, str | list[str]]] = {}

    def longer_keys(self, path: str) -> list[str]:
        """Keys with more components than ``path`` that end with ``/path``."""
        n = path.count("/") + 1
        table = self._tables.get(n)
        if table is None:
            table = self._tables[n] = self._build(n)
        hit = table.get(path)
        if hit is None:
            return []
        return [hit] if isinstance(hit, str) else hit

    def _build(self, n: int) -> dict[str, str | list[str]]:
        table: dict[str, str | list[str]] = {}
        for key in self._keys:
            parts = key.rsplit("/", n)
            if len(parts) <= n:
                continue
            tail = key[len(parts[0]) + 1 :]
            prev = table.get(tail)
            if prev is None:
                table[tail] = key
            elif isinstance(prev, str):
                table[tail] = [prev, key]
            else:
                prev.append(key)
        return table


def _match_one(ref: str, keys: AbstractSet[str], index: _TailIndex) -> tuple[str | None, str]:
    paths = _ref_paths(ref)
    for path in paths:
        if path in keys:
            return path, ""
        # The longest key that the reference ends with, at a "/" boundary
        # (/abs/archive/airplane/a.jpg -> airplane/a.jpg).
        pos = path.find("/")
        while pos != -1:
            if path[pos + 1 :] in keys:
                return path[pos + 1 :], ""
            pos = path.find("/", pos + 1)
    # The one key that ends with the reference (an LS upload keeps only the file name).
    # Tried last: it may need an index over all keys.
    ambiguous: list[str] = []
    for path in paths:
        longer = index.longer_keys(path)
        if len(longer) == 1:
            return longer[0], ""
        ambiguous = ambiguous or longer
    if ambiguous:
        shown = ", ".join(sorted(ambiguous)[:3]) + (", ..." if len(ambiguous) > 3 else "")
        return None, f"{ref!r} matches {len(ambiguous)} images ({shown}); give more of its path"
    return None, f"{ref!r} is not in the project"


def match_keys(refs: Iterable[str], keys: Collection[str]) -> tuple[dict[str, str], list[str]]:
    """Map file references from a label file to the project's sample keys.

    Rule, in order: an exact match; else, after removing Label Studio and URL wrappers
    (``/data/local-files/?d=``, ``/data/upload/<n>/<hash>-``, ``http(s)://host``,
    ``s3://bucket``, ``gs://bucket``, ``file://``, a drive letter) and URL-decoding, the
    longest key that the reference ends with at a ``/`` boundary
    (``/abs/archive/airplane/airplane00.jpg`` -> ``airplane/airplane00.jpg``); else the one key
    that ends with the reference (``airplane00.jpg`` -> ``airplane/airplane00.jpg`` when no
    other key has that name). Nothing is fetched or opened.

    Args:
        refs: File references (``LabelRow.ref``); repeats are matched once.
        keys: The project's sample keys, POSIX paths relative to the archive root. Pass a set
            to save a copy.

    Returns:
        ``(mapping, problems)``. ``mapping`` maps each matched reference to its key.
        ``problems`` has one message per unmatched reference, in input order, that starts
        with the quoted reference and says why (not in the project, or which keys it could
        be). The references missing from ``mapping`` are exactly those with a problem.
    """
    keyset: AbstractSet[str] = keys if isinstance(keys, AbstractSet) else set(keys)
    index = _TailIndex(keyset)
    mapping: dict[str, str] = {}
    problems: list[str] = []
    for ref in dict.fromkeys(refs):
        if ref in keyset:
            mapping[ref] = ref
            continue
        key, reason = _match_one(ref, keyset, index)
        if key is None:
            problems.append(reason)
        else:
            mapping[ref] = key
    return mapping, problems


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _check_writable_classes(classes: Sequence[str]) -> list[str]:
    names = [str(c) for c in classes]
    _Classes(names)  # empty or duplicate -> ValueError
    bad = [n for n in names if LABEL_SEPARATOR in n or not n.strip() or n != n.strip()]
    if bad:
        raise ValueError(
            f"class names cannot contain {LABEL_SEPARATOR!r}, be blank or have surrounding "
            f"whitespace: {bad}"
        )
    return names


def suggested_classes(probabilities: Sequence[float] | None, classes: Sequence[str]) -> list[str]:
    """Return the classes with probability >= 0.5, in project order (none without a model)."""
    if probabilities is None:
        return []
    if len(probabilities) != len(classes):
        raise ValueError(f"{len(probabilities)} probabilities for {len(classes)} classes")
    # NaN compares False, so a broken probability is never suggested.
    return [c for c, p in zip(classes, probabilities) if float(p) >= SUGGEST_THRESHOLD]


def _csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_query_csv(path: Path, rows: Sequence[QueryRow], classes: Sequence[str]) -> None:
    """Write the to-label file: one row per image, in rank order as given.

    Columns: ``filename,rank,score,cluster,labels`` then ``p_<class>`` per class. The
    ``p_`` columns are left out when no row has probabilities (the random initial set).
    ``labels`` is pre-filled with the suggested classes (p >= 0.5, joined by ``;``), so that
    importing the file unchanged means accepting the suggestions. It is empty without a
    model.

    Args:
        path: Where to write. The file is replaced atomically.
        rows: The images to label.
        classes: The project classes, in project order.

    Raises:
        ValueError: If a row's probabilities do not match the classes, or a class name
            cannot be written in the list format (it contains ``;``).
    """
    names = _check_writable_classes(classes)
    with_p = any(r.probabilities is not None for r in rows)
    header = ["filename", "rank", "score", "cluster", "labels"]
    if with_p:
        header += [f"p_{c}" for c in names]
    lines = []
    for r in rows:
        suggested = LABEL_SEPARATOR.join(suggested_classes(r.probabilities, names))
        line = [r.filename, int(r.rank), _fmt_float(r.score, ".6g"), int(r.cluster), suggested]
        if with_p and r.probabilities is None:
            line += [""] * len(names)
        elif with_p:
            line += [_fmt_float(p, ".4f") for p in r.probabilities]
        lines.append(line)
    atomic_write_text(path, _csv_text(header, lines))


def _fmt_float(value: float, spec: str) -> str:
    value = float(value)
    return format(value, spec) if math.isfinite(value) else ""


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_label_studio_tasks(
    path: Path,
    rows: Sequence[QueryRow],
    classes: Sequence[str],
    image_url: Callable[[str], str],
    model_version: str,
) -> None:
    """Write a Label Studio task file (JSON) for the images to label.

    Each task is ``{"data": {"image", "alft_key", "rank", "score", "cluster"}, "predictions":
    [...]}``. ``data.alft_key`` holds the sample key, so the export can be read back without
    matching URLs. The one prediction pre-selects the suggested classes (p >= 0.5). Its
    ``score`` is the model's mean confidence ``mean(max(p, 1 - p))``. Predictions are left out
    for rows without probabilities. Use with the config from :func:`label_studio_config`.

    Args:
        path: Where to write. The file is replaced atomically.
        rows: The images to label.
        classes: The project classes, in project order.
        image_url: Maps a sample key to the URL Label Studio loads the image from, e.g.
            ``lambda k: "/data/local-files/?d=archive/" + quote(k)``.
        model_version: Shown in Label Studio next to the prediction, e.g. ``"alft-r3"``.
    """
    names = _check_writable_classes(classes)
    tasks = []
    for r in rows:
        task: dict[str, Any] = {
            "data": {
                "image": image_url(r.filename),
                "alft_key": r.filename,
                "rank": int(r.rank),
                "score": _finite_or_none(r.score),
                "cluster": int(r.cluster),
            }
        }
        if r.probabilities is not None:
            probs = np.asarray(r.probabilities, dtype=np.float64)
            sure = np.maximum(probs, 1 - probs)[np.isfinite(probs)]
            confidence = float(sure.mean()) if sure.size else 0.0
            task["predictions"] = [
                {
                    "model_version": model_version,
                    "score": round(confidence, 4),
                    "result": [
                        {
                            "from_name": LS_FROM_NAME,
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": suggested_classes(r.probabilities, names)},
                        }
                    ],
                }
            ]
        tasks.append(task)
    atomic_write_text(path, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")


_XML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
_XML_ESCAPES.update({"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def _xml_attr(value: str) -> str:
    # Escape what an XML attribute cannot hold as-is; \n, \r and \t would be folded to
    # spaces by any XML parser.
    return "".join(_XML_ESCAPES.get(ch, ch) for ch in value)


def label_studio_config(classes: Sequence[str]) -> str:
    """Return the Label Studio labeling config (XML) for multi-label image classification.

    The field names (``image``, ``labels``) are the ones :func:`write_label_studio_tasks`
    writes and :func:`read_label_file` expects.

    Args:
        classes: The project classes, in project order.

    Returns:
        The config, one line, e.g. ``<View><Image name="image" value="$image"/>...``.
    """
    names = _check_writable_classes(classes)
    choices = "".join(f'<Choice value="{_xml_attr(c)}"/>' for c in names)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<Choices name="{LS_FROM_NAME}" toName="image" choice="multiple" showInLine="true">'
        f"{choices}</Choices></View>"
    )


def write_labels_csv(
    path: Path,
    keys: Sequence[str],
    Y: np.ndarray,
    classes: Sequence[str],
    fmt: str = "onehot",
) -> None:
    """Write labels as a one-hot or list CSV that :func:`read_label_file` reads back.

    Args:
        path: Where to write. The file is replaced atomically.
        keys: One sample key per row of ``Y``.
        Y: ``(len(keys), len(classes))`` array of 0/1.
        classes: The project classes, in project order.
        fmt: ``"onehot"`` (a 0/1 column per class) or ``"list"`` (``filename,labels``).

    Raises:
        ValueError: On a shape mismatch, values other than 0/1, or an unknown ``fmt``.
    """
    names = _check_writable_classes(classes)
    Y = np.asarray(Y)
    if Y.shape != (len(keys), len(names)):
        raise ValueError(f"Y has shape {Y.shape}, expected {(len(keys), len(names))}")
    if Y.size and not np.isin(Y, (0, 1)).all():
        raise ValueError("Y must hold only 0 and 1")
    Y = Y.astype(np.uint8)
    if fmt == "onehot":
        text = _csv_text(["filename", *names], ([k, *map(int, y)] for k, y in zip(keys, Y)))
    elif fmt == "list":
        text = _csv_text(
            ["filename", "labels"],
            ([k, LABEL_SEPARATOR.join(n for n, v in zip(names, y) if v)] for k, y in zip(keys, Y)),
        )
    else:
        raise ValueError(f"unknown labels CSV format {fmt!r}; use 'onehot' or 'list'")
    atomic_write_text(path, text)
