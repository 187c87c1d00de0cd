"""Reading a label file whatever its format: tell the format, then read it all or nothing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alft_cli.errors import OptionError
from alft_cli.labels.base import FORMATS, Classes, LabelRow, ParsedLabels, Problems, read_text
from alft_cli.labels.csvformat import parse_csv, read_list, read_onehot
from alft_cli.labels.labelstudio import read_ls_csv, read_ls_json


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
    cls = Classes(classes)
    problems = Problems(path)
    notes: list[str] = []
    text = read_text(path, problems)
    problems.raise_if_any()
    assert text is not None

    is_json = text.lstrip()[:1] in ("[", "{")
    rows: list[LabelRow] = []
    skipped = unanswered = 0
    if is_json:
        if fmt in ("onehot", "list"):
            problems.add(
                None, f"is JSON, not a {fmt} CSV (a Label Studio export? use label-studio)"
            )
        else:
            fmt = "label-studio"
            rows, skipped = read_ls_json(text, cls, problems, notes)
    else:
        table = parse_csv(text, problems)
        if table is not None:
            names = {h.casefold() for h in table.header}
            looks_ls = "annotation_id" in names or "annotator" in names
            if fmt == "auto":
                fmt = "label-studio" if looks_ls else "list" if "labels" in names else "onehot"
            if fmt == "label-studio":
                rows, skipped = read_ls_csv(table, cls, problems, notes)
            elif fmt == "list":
                rows, unanswered = read_list(table, cls, problems, notes)
            else:
                rows, unanswered = read_onehot(table, cls, problems)
    problems.raise_if_any()
    return ParsedLabels(path=path, format=fmt, rows=rows, skipped=skipped, notes=notes,
                        unanswered=unanswered)
