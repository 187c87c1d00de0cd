"""The CSV label formats: one-hot (a 0/1 column per class) and list (``filename,labels``).

Also the CSV parsing the Label Studio CSV export reuses (delimiter sniffing, Excel's ``sep=``
line, spreadsheet row numbers), the gold file's class header (:func:`header_classes`) and
the writer :func:`write_labels_csv` whose output :func:`~alft_cli.labels.read_label_file`
reads back.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alft_cli.atomic import atomic_write_text
from alft_cli.labels.base import (
    LABEL_SEPARATOR,
    NOTHING,
    NOTHING_SPELLINGS,
    Classes,
    LabelRow,
    Problems,
    check_duplicates,
    check_writable_classes,
    csv_text,
    norm_ref,
    read_text,
)

QUERY_COLUMNS = ("rank", "score", "cluster", "suggested", "quicklook")

# Other words people type to mean "nothing here". They are refused, with a hint, rather than
# guessed: "no" or "0" may as well be a slip, and the list format spells nothing as "none".
_NOTHING_WORDS = frozenset({"nothing", "n/a", "na", "null", "empty", "no", "0"})


def header_classes(path: Path) -> list[str]:
    """The class names of a one-hot CSV: its header minus the ``filename`` column.

    Used by ``init-pool --labels`` to take the project classes from the gold file.

    Raises:
        LabelFileError: unreadable file, no header, no ``filename`` column, or a list CSV
            (whose header names no classes).
    """
    path = Path(path)
    problems = Problems(path)
    text = read_text(path, problems)
    problems.raise_if_any()
    assert text is not None
    if text.lstrip()[:1] in ("[", "{"):
        problems.add(None, "is JSON; give the classes with --classes, or a one-hot CSV")
        problems.raise_if_any()
    table = parse_csv(text, problems)
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


@dataclass
class Table:
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


def parse_csv(text: str, problems: Problems) -> Table | None:
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
    return Table(header, header_row, rows, delimiter or ",")


def _is_query_column(name: str, cls: Classes) -> bool:
    low = name.casefold()
    return low in QUERY_COLUMNS or (low.startswith("p_") and cls.find(name[2:]) is not None)


def blank_columns(table: Table) -> list[int]:
    """Columns without a header name. Spreadsheets add them; they must stay empty."""
    return [j for j, name in enumerate(table.header) if not name]


def row_fits(
    cells: list[str], table: Table, blank: list[int], where: str, problems: Problems
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


def _row_ref(cells: list[str], fcol: int | None, where: str,
             problems: Problems) -> tuple[str, bool]:
    """A row's normalized filename, and whether it is usable (empty names are a problem)."""
    if fcol is None:
        return "", True
    ref = norm_ref(cells[fcol])
    if not ref:
        problems.add(where, "empty filename")
        return ref, False
    return ref, True


def read_onehot(table: Table, cls: Classes, problems: Problems) -> tuple[list[LabelRow], int]:
    """The rows of a one-hot CSV, and how many were left unanswered (every class cell
    empty: not a label, the image stays pending; a row of 0s is the answer "nothing")."""
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

    blank = blank_columns(table)
    class_items = list(class_cols.items())
    out: list[LabelRow] = []
    unanswered = 0
    for rowno, cells in table.rows:
        where = f"row {rowno}"
        if not row_fits(cells, table, blank, where, problems):
            continue
        ref, ok = _row_ref(cells, fcol, where, problems)
        if class_items and not any(cells[j].strip() for j, _ in class_items):
            unanswered += 1
            continue
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
    check_duplicates(out, cls, problems, "row")
    return out, unanswered


_BITS = {"0": 0, "1": 1}


def _unknown_class_hint(name: str, cls: Classes) -> str:
    if "," in name and all(cls.find(part) is not None for part in name.split(",")):
        return " (separate classes with ';')"
    if name.strip().casefold() in _NOTHING_WORDS:
        return f" (write {NOTHING} when no class is present)"
    return cls.hint(name)


def read_list(
    table: Table, cls: Classes, problems: Problems, notes: list[str]
) -> tuple[list[LabelRow], int]:
    """The rows of a list CSV, and how many were left unanswered.

    An empty ``labels`` cell is no answer (the image stays pending); ``none`` (or ``-``) is
    the answer "no class present".
    """
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

    blank = blank_columns(table)
    out: list[LabelRow] = []
    unanswered = 0
    for rowno, cells in table.rows:
        where = f"row {rowno}"
        if not row_fits(cells, table, blank, where, problems):
            continue
        ref, ok = _row_ref(cells, fcol, where, problems)
        if lcol is None:
            continue
        names = [t.strip() for t in cells[lcol].split(LABEL_SEPARATOR) if t.strip()]
        if not names:
            unanswered += 1
            continue
        said_nothing = [n for n in names if _means_nothing(n, cls)]
        if said_nothing and len(names) > 1:
            problems.add(where, f"{said_nothing[0]!r} (no class present) together with "
                                "classes; keep one of them")
            ok = False
        names = [n for n in names if not _means_nothing(n, cls)]
        vec, unknown = cls.vector(names)
        for name in unknown:
            problems.add(where, f"unknown class {name!r}{_unknown_class_hint(name, cls)}")
            ok = False
        if ok and fcol is not None:
            out.append(LabelRow(ref, vec, where))
    check_duplicates(out, cls, problems, "row")

    if "rank" in query_cols and any(c.startswith("p_") for c in query_cols) and out:
        # Importing a query file as-is silently accepts the model's suggestions. (The random
        # initial set has none: its cells start empty, which imports nothing.)
        notes.append(
            "this is an alft query file: its labels column was pre-filled with the model's "
            "suggestions, so rows left unchanged were read as the suggestions"
        )
    return out, unanswered


def _means_nothing(name: str, cls: Classes) -> bool:
    return name.casefold() in NOTHING_SPELLINGS and cls.find(name) is None


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
    names = check_writable_classes(classes)
    Y = np.asarray(Y)
    if Y.shape != (len(keys), len(names)):
        raise ValueError(f"Y has shape {Y.shape}, expected {(len(keys), len(names))}")
    if Y.size and not np.isin(Y, (0, 1)).all():
        raise ValueError("Y must hold only 0 and 1")
    Y = Y.astype(np.uint8)
    if fmt == "onehot":
        text = csv_text(["filename", *names], ([k, *map(int, y)] for k, y in zip(keys, Y)))
    elif fmt == "list":
        text = csv_text(
            ["filename", "labels"],
            ([k, LABEL_SEPARATOR.join(n for n, v in zip(names, y) if v) or NOTHING]
             for k, y in zip(keys, Y)),
        )
    else:
        raise ValueError(f"unknown labels CSV format {fmt!r}; use 'onehot' or 'list'")
    atomic_write_text(path, text)
