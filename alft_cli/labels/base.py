"""What every label format shares: class-name lookup, problem collection, the row types.

Nothing here reads a format; :mod:`.csvformat`, :mod:`.labelstudio` and :mod:`.queryfiles`
build on it.
"""

from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alft_cli.errors import LabelFileError

FORMATS = ("auto", "onehot", "list", "label-studio")
LABEL_SEPARATOR = ";"
# The list format's explicit answer "no class present". An empty cell is no answer at all
# (the image stays pending): a file half filled in must not store its other half as
# "nothing there". A class of that name wins over the word.
NOTHING = "none"
NOTHING_SPELLINGS = ("none", "-")
SUGGEST_THRESHOLD = 0.5
MAX_LISTED_PROBLEMS = 50


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
        unanswered: CSV rows whose answer is empty (a list CSV's empty ``labels`` cell, a
            one-hot row with every class cell empty): not labels; their images stay pending.
    """

    path: Path
    format: str
    rows: list[LabelRow]
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    unanswered: int = 0


class Classes:
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


class Problems:
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


def read_text(path: Path, problems: Problems) -> str | None:
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


def norm_ref(ref: str) -> str:
    ref = ref.strip().replace("\\", "/")
    while ref.startswith("./"):
        ref = ref[2:]
    return ref


def check_duplicates(rows: list[LabelRow], cls: Classes, problems: Problems, noun: str) -> None:
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


def check_writable_classes(classes: Sequence[str]) -> list[str]:
    names = [str(c) for c in classes]
    Classes(names)  # empty or duplicate -> ValueError
    bad = [n for n in names if LABEL_SEPARATOR in n or not n.strip() or n != n.strip()]
    if bad:
        raise ValueError(
            f"class names cannot contain {LABEL_SEPARATOR!r}, be blank or have surrounding "
            f"whitespace: {bad}"
        )
    return names


def csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
