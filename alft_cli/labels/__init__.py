"""Label files: read what people labeled, write what they should label.

alft never labels images itself. ``alft query`` writes a *to-label file*; people label the
images outside alft (in a spreadsheet or in Label Studio) and ``alft import-labels FILE``
reads the result back with :func:`read_label_file`. This module only reads and writes files.
It never touches the project store, so a refused file leaves the project exactly as it was.

Formats read (``fmt="auto"`` tells them apart by content: JSON is Label Studio; a CSV with an
``annotation_id`` or ``annotator`` column is a Label Studio CSV; a CSV with a ``labels``
column is a list CSV; any other CSV is one-hot):

* **one-hot CSV**: a ``filename`` column plus one 0/1 column per project class. The class
  columns must be exactly the project classes, in any order. A row of 0s means "no class
  present"; a row whose class cells are all empty is not answered (see below).
* **list CSV**: ``filename,labels``, where ``labels`` holds class names joined by ``;``.
  ``none`` (or ``-``) means "no class present", which is a label too (every class is 0).
  **An empty cell is not an answer**: the row is not imported and its image stays pending
  (``ParsedLabels.unanswered`` counts them), so a file filled in halfway imports its
  answered half only.
* **alft query CSV** (written by :func:`write_query_csv`): a list CSV with the extra
  columns ``rank``, ``score``, ``cluster`` (and ``suggested``) and ``p_<class>``. These are
  ignored on import. The ``labels`` column starts out holding the model's suggestions
  (classes with p >= 0.5, or ``none``), so people correct it rather than type it.
  **Importing the query file unchanged therefore means accepting every suggestion.** (For
  the random initial set there is no model, so every cell starts out empty: unanswered.)
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

Modules (one idea each): :mod:`.base` (class lookup, problem collection, row types),
:mod:`.csvformat` (one-hot and list CSV), :mod:`.labelstudio` (Label Studio exports),
:mod:`.lstasks` (Label Studio tasks, image URLs and config, for a file or a push),
:mod:`.keys` (references -> sample keys), :mod:`.queryfiles` (the to-label file),
:mod:`.reader` (:func:`read_label_file`: tell the format, read all or nothing).
"""

from alft_cli.atomic import atomic_write_text
from alft_cli.labels.base import (
    FORMATS,
    LABEL_SEPARATOR,
    MAX_LISTED_PROBLEMS,
    SUGGEST_THRESHOLD,
    LabelRow,
    ParsedLabels,
)
from alft_cli.labels.csvformat import QUERY_COLUMNS, header_classes, write_labels_csv
from alft_cli.labels.keys import match_keys
from alft_cli.labels.lstasks import LS_FROM_NAME, label_studio_config, write_label_studio_tasks
from alft_cli.labels.queryfiles import QueryRow, suggested_classes, write_query_csv
from alft_cli.labels.reader import read_label_file

__all__ = [
    "FORMATS", "LABEL_SEPARATOR", "LS_FROM_NAME", "MAX_LISTED_PROBLEMS", "QUERY_COLUMNS",
    "SUGGEST_THRESHOLD", "LabelRow", "ParsedLabels", "QueryRow", "atomic_write_text",
    "header_classes", "label_studio_config", "match_keys", "read_label_file",
    "suggested_classes", "write_label_studio_tasks", "write_labels_csv", "write_query_csv",
]
