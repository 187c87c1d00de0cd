"""Reliability guarantees, proven on the real CLI.

- Bad input (archives, label files, options): one clear ``error:`` line naming the file and
  row, a non-zero exit, no traceback, and the project exactly as it was; or, for archive files
  that can be used after conversion or left out, a report (``skipped.csv``, ``status``).
- kill -9 at every crash point of import-labels / finetune / pretrain / query (and at random
  moments): the project opens, ``alft doctor`` finds it consistent, labels are all-or-nothing,
  and a rerun (``--resume`` where a checkpoint exists) ends where an uninterrupted run ends.
- Two writers: the second fails after a short wait with "project is busy (pid N, command X)";
  a dead holder's lock is taken over; ``status`` never blocks.
- Untrusted files: pickled code in weights never runs; quotes, unicode and SQL-looking names
  round-trip intact; label-file names and URLs are matched, never opened or fetched.

Every command runs as ``python -m alft_cli`` in a subprocess (``run_cli``); in-process ``api``
calls are used only where the test must patch something (limits, permissions, sockets).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import CliResult, run_cli
from PIL import Image

from alft_cli import api

# Two CPU cores: torch's default two intra-op threads spin against each other (and against
# the test process), which makes a 32 px resnet18 step ~20x slower. One thread, same results.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY_FT = ["--init", "scratch", "--backbone", "resnet18", "--epochs", "2", "--checkpoint-every",
           "1", "--batch-size", "8", "--lr-step", "0", "--device", "cpu"]
TINY_BYOL = ["--backbone", "resnet18", "--epochs", "2", "--batch-size", "8", "--hidden-dim",
             "64", "--proj-dim", "32", "--checkpoint-every", "1", "--device", "cpu"]
QUERY = ["--budget", "5", "--strategy", "random", "--seed", "3", "--device", "cpu"]


def cli(*args: object, env: dict | None = None, timeout: float = 600) -> CliResult:
    return run_cli(*map(str, args), env={**ONE_THREAD, **(env or {})}, timeout=timeout)


# --------------------------------------------------------------------------------------------
# helpers: project state, error shape
# --------------------------------------------------------------------------------------------
def db_rows(root: Path, skip: tuple[str, ...] = ("runs",)) -> dict[str, list]:
    """Every table's rows (sorted), except the runs audit trail."""
    conn = sqlite3.connect(f"file:{root / 'alft.db'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in tables if t not in skip}
    finally:
        conn.close()


def files(root: Path) -> dict[str, str]:
    """sha256 of every file under the project (the database is compared by its rows)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != ".lock" and not rel.startswith("alft.db"):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def state(root: Path) -> tuple[dict, dict]:
    return db_rows(root), files(root)


def raw_bytes(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file, the database included (doctor must not touch any).

    SQLite's shared-memory index (-shm) and an empty write-ahead log (-wal) that a read-only
    connection to a WAL database sets up are not changes; a -wal with content would be.
    """
    out = {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
           for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
           and p.name not in ("alft.db-shm", "alft.db-wal")}
    wal = root / "alft.db-wal"
    out["alft.db-wal size"] = (b"", wal.stat().st_size if wal.exists() else 0)
    return out


def labels_of(root: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{root / 'alft.db'}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT s.key, l.y FROM labels l JOIN samples s "
                                 "ON s.id = l.sample_id"))
    finally:
        conn.close()


def assert_clean_error(r: CliResult, *needles: str, code: int = 1) -> None:
    """A non-zero exit with exactly one ``error:`` line (details indented under it)."""
    assert r.code == code, f"exit {r.code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    lines = r.stderr.rstrip("\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error")]
    assert len(starts) == 1 and lines[starts[0]].startswith("error: "), r.stderr
    assert all(line.startswith("  ") for line in lines[starts[0] + 1:]), r.stderr
    block = "\n".join(lines[starts[0]:])
    for needle in needles:
        assert needle in block, f"{needle!r} not in:\n{block}"


def copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def gold_of(tiny_archive) -> dict[str, np.ndarray]:
    return {k: tiny_archive.Y[i] for i, k in enumerate(tiny_archive.keys)}


def y_str(y) -> str:
    return "".join(str(int(v)) for v in y)


def write_onehot(path: Path, classes, rows: dict[str, np.ndarray]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *classes])
        for key, y in rows.items():
            writer.writerow([key, *[int(v) for v in y]])
    return path


# --------------------------------------------------------------------------------------------
# shared projects (built once, copied per test)
# --------------------------------------------------------------------------------------------
@dataclass
class Base:
    """A 60-image project (30 pool, 15 val, 15 test), built once."""

    root: Path            # 10 pending initial queries, no labels
    labeled: Path         # the same with the 10 initial answers imported (round 0, no model)
    answers: Path         # one-hot file with the 10 initial answers
    classes: list[str]
    gold: dict[str, np.ndarray]
    pending: list[str]    # the 10 initial keys
    unlabeled: list[str]  # pool keys without labels in `labeled`
    val: list[str]
    test: list[str]


@pytest.fixture(scope="module")
def base(tiny_archive, tmp_path_factory) -> Base:
    top = tmp_path_factory.mktemp("base")
    root = top / "proj"
    api.init_pool(tiny_archive.root, root, labels_file=tiny_archive.labels_csv, initial=10,
                  image_size=32, seed=0)
    gold = gold_of(tiny_archive)
    info = api.status(root)
    pending = list(info["pending"])
    answers = write_onehot(top / "answers.csv", tiny_archive.classes,
                           {k: gold[k] for k in pending})
    labeled = copy_project(root, top / "labeled")
    api.import_labels(labeled, answers)
    conn = sqlite3.connect(root / "alft.db")
    splits = dict(conn.execute("SELECT key, split FROM samples"))
    conn.close()
    unlabeled = sorted(k for k, s in splits.items() if s == "pool" and k not in pending)
    return Base(root, labeled, answers, list(tiny_archive.classes), gold, pending, unlabeled,
                sorted(k for k, s in splits.items() if s == "val"),
                sorted(k for k, s in splits.items() if s == "test"))


# --------------------------------------------------------------------------------------------
# 1. label files: accepted after normalization
# --------------------------------------------------------------------------------------------
def _onehot_text(b: Base, keys: list[str], delim: str = ",", upper: bool = False,
                 quote: bool = False, pad: str = "", reverse: bool = False,
                 ref: Callable[[str], str] = str) -> str:
    classes = list(reversed(b.classes)) if reverse else list(b.classes)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delim, lineterminator="\n",
                        quoting=csv.QUOTE_ALL if quote else csv.QUOTE_MINIMAL)
    head = ["filename", *classes]
    writer.writerow([pad + (h.upper() if upper else h) + pad for h in head])
    for key in keys:
        y = dict(zip(b.classes, b.gold[key]))
        writer.writerow([pad + ref(key) + pad, *[f"{pad}{int(y[c])}{pad}" for c in classes]])
    return buf.getvalue()


def _list_text(b: Base, keys: list[str], name: Callable[[str], str] = str,
               sep: str = ";") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "labels"])
    for key in keys:
        names = [name(c) for c, v in zip(b.classes, b.gold[key]) if v]
        writer.writerow([key, sep.join(names)])
    return buf.getvalue()


def _ls_export(b: Base, keys: list[str], image: Callable[[str], str]) -> str:
    tasks = []
    for i, key in enumerate(keys, 1):
        names = [c for c, v in zip(b.classes, b.gold[key]) if v]
        tasks.append({"id": i, "data": {"image": image(key)}, "annotations": [{
            "id": 100 + i, "was_cancelled": False, "updated_at": "2024-05-01T10:00:00Z",
            "result": [{"type": "choices", "from_name": "labels", "to_name": "image",
                        "value": {"choices": names}}]}]})
    return json.dumps(tasks)


ACCEPTED: dict[str, tuple[str, Callable[[Base, list[str]], bytes]]] = {
    "utf8-bom": ("csv", lambda b, k: b"\xef\xbb\xbf" + _onehot_text(b, k).encode()),
    "crlf": ("csv", lambda b, k: _onehot_text(b, k).replace("\n", "\r\n").encode()),
    "semicolon-delimiter": ("csv", lambda b, k: _onehot_text(b, k, delim=";").encode()),
    "tab-delimiter": ("tsv", lambda b, k: _onehot_text(b, k, delim="\t").encode()),
    "excel-sep-line": ("csv", lambda b, k: ("sep=;\n" + _onehot_text(b, k, delim=";")).encode()),
    "quoted-fields": ("csv", lambda b, k: _onehot_text(b, k, quote=True).encode()),
    "extra-whitespace": ("csv", lambda b, k: _onehot_text(b, k, pad="  ").encode()),
    "upper-case-classes": ("csv", lambda b, k: _onehot_text(b, k, upper=True).encode()),
    "columns-in-other-order": ("csv", lambda b, k: _onehot_text(b, k, reverse=True).encode()),
    "backslash-and-dot-slash": ("csv", lambda b, k: _onehot_text(
        b, k, ref=lambda key: "./" + key.replace("/", "\\")).encode()),
    "blank-lines": ("csv", lambda b, k: _onehot_text(b, k).replace("\n", "\n\n").encode()),
    "list-upper-case-spaced": ("csv", lambda b, k: _list_text(
        b, k, name=str.upper, sep=" ; ").encode()),
    "label-studio-http-urls": ("json", lambda b, k: _ls_export(
        b, k, lambda key: f"https://bucket.example.invalid/archive/images/{key}").encode()),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_label_file_variants_are_normalized_and_imported(case, base, tmp_path):
    root = copy_project(base.labeled, tmp_path / "proj")
    keys = base.unlabeled[:3]
    ext, build = ACCEPTED[case]
    f = tmp_path / f"labels.{ext}"
    f.write_bytes(build(base, keys))
    r = cli("import-labels", f, "-p", root)
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr and "3 new" in r.stdout
    stored = labels_of(root)
    assert {k: stored[k] for k in keys} == {k: y_str(base.gold[k]) for k in keys}
    assert len(stored) == 13  # the 10 earlier labels are untouched


# --------------------------------------------------------------------------------------------
# 2. label files: refused whole, naming file and row; nothing written
# --------------------------------------------------------------------------------------------
def _ls_task(b: Base, key: str, **overrides) -> dict:
    task = {"id": 1, "data": {"image": f"/data/local-files/?d=archive/{key}"},
            "annotations": [{"id": 7, "result": [{"type": "choices", "from_name": "labels",
                                                  "to_name": "image",
                                                  "value": {"choices": [b.classes[0]]}}]}]}
    task.update(overrides)
    return task


def _bad(b: Base) -> dict[str, tuple[str, bytes, tuple[str, ...]]]:
    """case -> (file extension, content, strings the error must contain)."""
    c = b.classes
    u, v = b.unlabeled[0], b.unlabeled[1]
    head = "filename," + ",".join(c)
    ones = ",".join("1" for _ in c)
    zeros = ",".join("0" for _ in c)
    row = f"{u},{zeros}"
    labeled = b.pending[0]
    flipped = ",".join(str(1 - int(x)) for x in b.gold[labeled])
    txt = {
        "empty-file": ("", ("is empty",)),
        "whitespace-only": ("\n  \n\n", ("is empty",)),
        "header-only": (head + "\n", ("header but no data rows",)),
        "no-filename-column": ("name," + ",".join(c) + f"\n{row}\n", ("'filename'",)),
        "unknown-class-in-list": (f"filename,labels\n{u},{c[0]};lava\n", ("row 2", "'lava'")),
        "unknown-class-column": (f"{head},lava\n{row},1\n", ("row 1", "'lava'")),
        "missing-class-column": ("filename," + ",".join(c[:-1]) + f"\n{u},"
                                 + ",".join("0" for _ in c[:-1]) + "\n", ("row 1", c[-1])),
        "unknown-file": (f"{head}\n{row}\nnowhere/ghost.png,{zeros}\n",
                         ("row 3", "nowhere/ghost.png")),
        "path-outside-archive": (f"{head}\n../../../etc/passwd,{zeros}\n",
                                 ("row 2", "etc/passwd")),
        "duplicate-rows": (f"{head}\n{row}\n{row}\n", ("row 3",)),
        "conflicting-rows": (f"{head}\n{row}\n{u},{ones}\n", ("row 3",)),
        "conflicts-with-stored-label": (f"{head}\n{labeled},{flipped}\n",
                                        ("row 2", "--overwrite")),
        "val-sample": (f"{head}\n{row}\n{b.val[0]},{zeros}\n", ("row 3", "val sample")),
        "test-sample": (f"{head}\n{b.test[0]},{zeros}\n", ("row 2", "test sample")),
        "value-2": (f"{head}\n{u},2" + ",0" * (len(c) - 1) + "\n", ("row 2", "'2'")),
        "value-yes": (f"{head}\n{row}\n{v},yes" + ",0" * (len(c) - 1) + "\n",
                      ("row 3", "'yes'")),
        "value-0.5": (f"{head}\n{u},0.5" + ",0" * (len(c) - 1) + "\n", ("row 2", "'0.5'")),
        "empty-cell": (f"{head}\n{u}," + ",0" * (len(c) - 1) + "\n", ("row 2", c[0])),
        "too-many-cells": (f"{head}\n{row},1,1\n", ("row 2",)),
        "empty-filename": (f"{head}\n,{zeros}\n", ("row 2", "empty filename")),
        "list-names-joined-by-comma": (f'filename,labels\n{u},"{c[0]},{c[1]}"\n',
                                       ("row 2", "';'")),
    }
    out = {k: ("csv", t.encode(), n) for k, (t, n) in txt.items()}
    out["binary-garbage"] = ("csv", bytes(range(256)) * 8, ("binary",))
    out["utf16"] = ("csv", (head + f"\n{row}\n").encode("utf-16"), ("UTF-16",))
    out["latin1"] = ("csv", (head + f"\n{row}\nforêt.png,{zeros}\n").encode("latin-1"),
                     ("UTF-8",))
    out["xlsx-zip"] = ("csv", b"PK\x03\x04" + bytes(range(64)), ("ZIP",))
    js = {
        "ls-invalid-json": ('[{"id": 1, "data": ', ("not valid JSON",)),
        "ls-not-a-list": ('{"id": 1}', ("not a JSON list",)),
        "ls-task-without-data": (json.dumps([{k: x for k, x in _ls_task(b, u).items()
                                              if k != "data"}]), ("task 1", "'data'")),
        "ls-task-without-image": (json.dumps([_ls_task(b, u, data={"text": "x"})]),
                                  ("task 1", "image reference")),
        "ls-annotation-without-result": (json.dumps([_ls_task(b, u, annotations=[{"id": 7}])]),
                                         ("task 1", "'result'")),
        "ls-choices-without-value": (json.dumps([_ls_task(b, u, annotations=[{
            "id": 7, "result": [{"type": "choices", "value": {}}]}])]),
            ("task 1", "value.choices")),
        "ls-unknown-class": (json.dumps([_ls_task(b, u, annotations=[{
            "id": 7, "result": [{"type": "choices", "from_name": "labels",
                                 "value": {"choices": ["lava"]}}]}])]), ("task 1", "'lava'")),
        "ls-json-min-without-id": (json.dumps([{"image": u, "annotator": 1, "annotation_id": 3,
                                                "labels": c[0]}]), ("item 1", "task 'id'")),
        "ls-task-file-not-export": (json.dumps([{"data": {"image": u}}]),
                                    ("without annotations",)),
        "ls-same-image-twice": (json.dumps([_ls_task(b, u), _ls_task(b, u, id=2)]),
                                ("task 2",)),
    }
    out.update({k: ("json", t.encode(), n) for k, (t, n) in js.items()})
    return out


BAD_LABEL_CASES = [
    "empty-file", "whitespace-only", "header-only", "no-filename-column", "unknown-class-in-list",
    "unknown-class-column", "missing-class-column", "unknown-file", "path-outside-archive",
    "duplicate-rows", "conflicting-rows", "conflicts-with-stored-label", "val-sample",
    "test-sample", "value-2", "value-yes", "value-0.5", "empty-cell", "too-many-cells",
    "empty-filename", "list-names-joined-by-comma", "binary-garbage", "utf16", "latin1",
    "xlsx-zip", "ls-invalid-json", "ls-not-a-list", "ls-task-without-data",
    "ls-task-without-image", "ls-annotation-without-result", "ls-choices-without-value",
    "ls-unknown-class", "ls-json-min-without-id", "ls-task-file-not-export",
    "ls-same-image-twice",
]


@pytest.mark.parametrize("case", BAD_LABEL_CASES)
def test_bad_label_file_is_refused_whole(case, base, tmp_path):
    ext, content, needles = _bad(base)[case]
    root = copy_project(base.labeled, tmp_path / "proj")
    f = tmp_path / f"bad.{ext}"
    f.write_bytes(content)
    before = state(root)
    r = cli("import-labels", f, "-p", root)
    assert_clean_error(r, *needles)
    first = next(line for line in r.stderr.splitlines() if line.startswith("error: "))
    assert "bad." + ext in first  # the message names the file
    assert state(root) == before


@pytest.mark.parametrize("case", ["missing", "directory", "unknown-format"])
def test_label_file_itself_unusable(case, base, tmp_path):
    root = copy_project(base.labeled, tmp_path / "proj")
    before = state(root)
    if case == "missing":
        r = cli("import-labels", tmp_path / "nope.csv", "-p", root)
        assert_clean_error(r, "nope.csv", "file not found")
    elif case == "directory":
        (tmp_path / "dir.csv").mkdir()
        r = cli("import-labels", tmp_path / "dir.csv", "-p", root)
        assert_clean_error(r, "dir.csv", "directory")
    else:
        r = cli("import-labels", base.answers, "-p", root, "--format", "xlsx")
        assert_clean_error(r, "'xlsx'")
    assert state(root) == before


# --------------------------------------------------------------------------------------------
# 3. options and project folders
# --------------------------------------------------------------------------------------------
def _schema(root: Path, version: int) -> None:
    conn = sqlite3.connect(root / "alft.db")
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
    conn.commit()
    conn.close()


def _config_schema(root: Path, version: int) -> None:
    cfg = json.loads((root / "config.json").read_text())
    cfg["schema_version"] = version
    cfg["alft_version"] = "9.0.0"
    (root / "config.json").write_text(json.dumps(cfg))


OPTION_CASES: dict[str, tuple[Callable[[Path], None] | None, list[str], tuple[str, ...]]] = {
    # case: (how to damage the project first, arguments ({p} = project), error must contain)
    "budget-0": (None, ["query", "-p", "{p}", "--budget", "0"], ("--budget 0",)),
    "budget-negative": (None, ["query", "-p", "{p}", "--budget", "-5"], ("--budget -5",)),
    "unknown-strategy": (None, ["query", "-p", "{p}", "--strategy", "magic"],
                         ("'magic'", "unknown")),
    "query-while-pending": (None, ["query", "-p", "{p}", "--budget", "3", "--strategy",
                                   "random"], ("--force",)),
    "unknown-pretrain-backbone": (None, ["pretrain", "-p", "{p}", "--backbone", "vgg99"],
                                  ("'vgg99'", "unknown")),
    "unknown-finetune-backbone": (None, ["finetune", "-p", "{p}", "--init", "scratch",
                                         "--backbone", "vgg99"], ("'vgg99'",)),
    "pretrain-zero-batch": (None, ["pretrain", "-p", "{p}", "--batch-size", "0"],
                            ("--batch-size",)),
    "newer-store-status": (lambda p: _schema(p, 999), ["status", "-p", "{p}"],
                           ("newer alft", "schema 999")),
    "newer-store-import": (lambda p: _schema(p, 999), ["import-labels", "{answers}", "-p",
                                                       "{p}"], ("newer alft",)),
    "newer-store-query": (lambda p: _schema(p, 999), ["query", "-p", "{p}", "--budget", "3"],
                          ("newer alft",)),
    "newer-store-doctor": (lambda p: _schema(p, 999), ["doctor", "-p", "{p}"], ("newer alft",)),
    "newer-config": (lambda p: _config_schema(p, 7), ["status", "-p", "{p}"],
                     ("newer alft", "9.0.0")),
    "garbage-database": (lambda p: (p / "alft.db").write_bytes(b"this is no database" * 99),
                         ["status", "-p", "{p}"], ("not a readable alft database",)),
    "garbage-config": (lambda p: (p / "config.json").write_text("{not json"),
                       ["import-labels", "{answers}", "-p", "{p}"], ("config",)),
    "missing-database": (lambda p: (p / "alft.db").unlink(), ["status", "-p", "{p}"],
                         ("not an alft project",)),
    "init-pool-into-project": (None, ["init-pool", "{archive}", "-p", "{p}", "--classes", "a,b"],
                               ("already an alft project",)),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_impossible_option_or_project_is_one_error(case, base, tiny_archive, tmp_path):
    damage, args, needles = OPTION_CASES[case]
    root = copy_project(base.labeled if "finetune" in args else base.root, tmp_path / "proj")
    if damage is not None:
        damage(root)
    db = root / "alft.db"
    readable = case not in ("garbage-database", "missing-database")
    before = files(root), db_rows(root) if readable else db.exists() and db.read_bytes()
    subs = {"{p}": str(root), "{answers}": str(base.answers), "{archive}": str(tiny_archive.root)}
    r = cli(*[subs.get(a, a) for a in args])
    assert_clean_error(r, *needles)
    assert (files(root), db_rows(root) if readable else db.exists() and db.read_bytes()) == before


@pytest.mark.parametrize("case", ["missing-dir", "a-file", "empty-dir"])
def test_project_folder_that_is_not_a_project(case, tmp_path):
    target = tmp_path / "p"
    if case == "a-file":
        target.write_text("x")
    elif case == "empty-dir":
        target.mkdir()
    for command in (["status", "-p", target], ["doctor", "-p", target],
                    ["import-labels", target / "x.csv", "-p", target]):
        r = cli(*command)
        assert_clean_error(r, str(target))
    assert (not target.exists() if case == "missing-dir"
            else target.is_file() if case == "a-file" else not any(target.iterdir()))


INIT_OPTION_CASES = {
    "val-fraction-above-1": (["--labels", "{labels}", "--val-fraction", "1.5"], ("[0, 1)",)),
    "fractions-leave-no-pool": (["--labels", "{labels}", "--val-fraction", "0.5",
                                 "--test-fraction", "0.5"], ("sum < 1",)),
    "image-size-too-small": (["--classes", "a,b", "--image-size", "8"], ("--image-size",)),
    "negative-initial": (["--classes", "a,b", "--initial", "-1"], ("--initial",)),
    "empty-class-name": (["--classes", "a,,b"], ("empty class name",)),
    "duplicate-classes": (["--classes", "water,Water"], ("duplicate",)),
    "no-classes": ([], ("--classes",)),
    "classes-differ-from-labels": (["--labels", "{labels}", "--classes", "a,b"],
                                   ("--classes differs",)),
    "splits-without-gold": (["--classes", "a,b", "--val-fraction", "0.2"], ("gold labels",)),
}


@pytest.mark.parametrize("case", list(INIT_OPTION_CASES))
def test_init_pool_refuses_impossible_options(case, tiny_archive, tmp_path):
    extra, needles = INIT_OPTION_CASES[case]
    subs = {"{labels}": str(tiny_archive.labels_csv)}
    r = cli("init-pool", tiny_archive.root, "-p", tmp_path / "p",
            *[subs.get(a, a) for a in extra])
    assert_clean_error(r, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no project, no temp folder


def test_class_name_with_separator_is_refused_up_front(tiny_archive, tmp_path):
    r = cli("init-pool", tiny_archive.root, "-p", tmp_path / "p", "--classes", "a;b,c")
    assert_clean_error(r, "'a;b'")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("args", [["status", "--bogus"], ["query", "-p", "x", "--budget", "abc"],
                                  ["no-such-command"]], ids=["unknown-option", "non-integer",
                                                            "unknown-command"])
def test_usage_errors_are_reported_without_traceback(args):
    r = cli(*args)
    assert r.code == 2 and "Traceback" not in r.stderr, r.stderr
    assert "Error" in r.stderr or "error" in r.stderr


def test_budget_larger_than_the_pool_queries_the_whole_pool(base, tmp_path):
    root = copy_project(base.labeled, tmp_path / "proj")
    r = cli("query", "-p", root, "--budget", "1000", "--strategy", "random", "--device", "cpu")
    assert r.code == 0, r.stderr
    assert f"only {len(base.unlabeled)} unlabeled pool images are left" in r.stdout
    info = json.loads(cli("status", "-p", root, "--json").stdout)
    assert sorted(info["pending"]) == base.unlabeled
    assert info["rounds"][-1]["queried"] == len(base.unlabeled)


# --------------------------------------------------------------------------------------------
# 4. archives: skip with a report, or convert; never a traceback
# --------------------------------------------------------------------------------------------
def _rgb(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _save(path: Path, img: Image.Image, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(seed)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


RAMP16 = (np.tile(np.arange(32), (32, 1)) * 2000 + 300).astype(np.uint16)


def _float_ramp() -> np.ndarray:
    a = np.tile(np.linspace(-0.2, 0.9, 32, dtype=np.float32), (32, 1))
    a[0, 0], a[1, 1], a[2, 2] = np.nan, np.inf, -np.inf  # no-data and saturated pixels
    return a


def build_nasty_archive(root: Path, outside: Path) -> None:
    """Good images plus every kind of trouble an archive folder can hold."""
    for i in range(6):
        _save(root / "good" / f"good_{i}.png", Image.fromarray(_rgb(i)))
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(200))
    (bad / "truncated.jpg").write_bytes(_jpeg_bytes(1)[: len(_jpeg_bytes(1)) // 2])
    png = io.BytesIO()
    Image.fromarray(_rgb(2)).save(png, "PNG")
    (bad / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (bad / "zero.png").write_bytes(b"")
    (bad / "text.tif").write_text("this is a text file, not a TIFF\n")
    (bad / "README.txt").write_text("notes about the archive\n")
    _save(bad / "tiny.png", Image.fromarray(_rgb(3, 4, 4)))
    os.symlink("loop_b.png", bad / "loop_a.png")
    os.symlink("loop_a.png", bad / "loop_b.png")
    os.symlink("does_not_exist.png", bad / "dangling.png")
    outside.mkdir()
    _save(outside / "secret.png", Image.fromarray(_rgb(9)))
    os.symlink(outside / "secret.png", bad / "outside_link.png")
    os.symlink(outside, bad / "outside_dir")
    os.mkfifo(bad / "fifo.png")
    os.close(os.open(os.path.join(os.fsencode(bad), b"latin1_\xe9t\xe9.png"),
                     os.O_CREAT | os.O_WRONLY))
    for odd in ("back\\slash.png", "new\nline.png", " leading_space.png"):
        _save(root / odd if odd.startswith(" ") else bad / odd, Image.fromarray(_rgb(4)))
    _save(bad / " space_inside_path.png", Image.fromarray(_rgb(4)))
    _save(bad / "Case.png", Image.fromarray(_rgb(4)))
    _save(bad / "case.png", Image.fromarray(_rgb(5)))
    conv = root / "convert"
    _save(conv / "gray16.tif", Image.fromarray(RAMP16))
    _save(conv / "gray16.png", Image.fromarray(RAMP16))
    _save(conv / "int32.tif", Image.fromarray(RAMP16.astype(np.int32) * 40))
    _save(conv / "float32.tif", Image.fromarray(_float_ramp(), mode="F"))
    _save(conv / "rgba.png", Image.fromarray(np.dstack([_rgb(6), np.full((32, 32), 7, np.uint8)])))
    _save(conv / "palette.png", Image.fromarray(_rgb(7)).convert("P"))
    _save(conv / "gray.png", Image.fromarray(_rgb(8)[..., 0]))
    _save(conv / "gray_alpha.png", Image.fromarray(_rgb(8)[..., 1]).convert("LA"))
    _save(conv / "bilevel.png", Image.fromarray(_rgb(8)[..., 2] > 127))
    _save(conv / "cmyk.jpg", Image.fromarray(_rgb(10)).convert("CMYK"))
    _save(conv / "jpeg_named.png", Image.fromarray(_rgb(11)), "JPEG")
    _save(conv / "wide.png", Image.fromarray(_rgb(12, 16, 64)))
    _save(conv / "folder.png" / "inner.png", Image.fromarray(_rgb(13)))
    os.symlink("../good/good_0.png", conv / "inside_link.png")


# case -> ("skip", key in skipped.csv, reason must contain) or ("index", key, check name)
ARCHIVE_CASES: dict[str, tuple[str, str, str]] = {
    "corrupt-png": ("skip", "bad/corrupt.png", "not a readable image"),
    "truncated-jpeg": ("skip", "bad/truncated.jpg", "corrupt or truncated"),
    "truncated-png": ("skip", "bad/truncated.png", "corrupt or truncated"),
    "zero-byte-file": ("skip", "bad/zero.png", "empty file"),
    "text-named-tif": ("skip", "bad/text.tif", "not a readable image"),
    "non-image-file": ("skip", "bad/README.txt", "not an image file"),
    "tiny-4x4": ("skip", "bad/tiny.png", "too small"),
    "symlink-loop-a": ("skip", "bad/loop_a.png", "looping symlink"),
    "symlink-loop-b": ("skip", "bad/loop_b.png", "looping symlink"),
    "dangling-symlink": ("skip", "bad/dangling.png", "broken"),
    "symlink-outside-archive": ("skip", "bad/outside_link.png", "outside the archive"),
    "symlinked-folder": ("skip", "bad/outside_dir/", "not followed"),
    "fifo": ("skip", "bad/fifo.png", "not a regular file"),
    "non-utf8-name": ("skip", "bad/latin1_\\xe9t\\xe9.png", "not valid UTF-8"),
    "backslash-in-name": ("skip", "bad/back\\slash.png", "folder separator"),
    "newline-in-name": ("skip", "bad/new\nline.png", "control characters"),
    "leading-space-in-key": ("skip", " leading_space.png", "starts with a space"),
    "names-differ-in-case": ("skip", "bad/case.png", "differs only in case from bad/Case.png"),
    "16-bit-tiff": ("index", "convert/gray16.tif", "ramp"),
    "16-bit-png": ("index", "convert/gray16.png", "ramp"),
    "32-bit-int-tiff": ("index", "convert/int32.tif", "ramp"),
    "float32-tiff-nan-inf": ("index", "convert/float32.tif", "ramp"),
    "rgba-png": ("index", "convert/rgba.png", "rgba"),
    "palette-png": ("index", "convert/palette.png", "palette"),
    "grayscale-png": ("index", "convert/gray.png", "gray"),
    "gray-alpha-png": ("index", "convert/gray_alpha.png", "gray"),
    "bilevel-png": ("index", "convert/bilevel.png", "gray"),
    "cmyk-jpeg": ("index", "convert/cmyk.jpg", "rgb"),
    "jpeg-named-png": ("index", "convert/jpeg_named.png", "rgb"),
    "non-square": ("index", "convert/wide.png", "wide"),
    "folder-named-like-image": ("index", "convert/folder.png/inner.png", "rgb"),
    "symlink-inside-archive": ("index", "convert/inside_link.png", "same-as-good_0"),
    "first-of-case-pair-kept": ("index", "bad/Case.png", "rgb"),
    "space-after-folder": ("index", "bad/ space_inside_path.png", "rgb"),
}


@pytest.fixture(scope="module")
def nasty(tmp_path_factory):
    top = tmp_path_factory.mktemp("nasty")
    build_nasty_archive(top / "archive", top / "outside")
    root = top / "proj"
    r = cli("init-pool", top / "archive", "-p", root, "--classes", "a,b", "--initial", "3",
            "--image-size", "32")
    status = cli("status", "-p", root, "--json")
    doctor = cli("doctor", "-p", root)
    with open(root / "skipped.csv", newline="", encoding="utf-8") as handle:
        skipped = {row["filename"]: row["reason"] for row in csv.DictReader(handle)}
    conn = sqlite3.connect(root / "alft.db")
    samples = {key: (sid, w, h, note) for sid, key, w, h, note in conn.execute(
        "SELECT id, key, width, height, note FROM samples")}
    conn.close()
    return {"top": top, "root": root, "run": r, "status": status, "doctor": doctor,
            "skipped": skipped, "samples": samples,
            "cache": np.load(root / "cache" / "images.npy")}


def test_nasty_archive_is_indexed_with_a_report(nasty):
    r = nasty["run"]
    assert r.code == 0, r.stderr
    # No traceback, and no decoder chatter (warnings) on stderr: only the progress line.
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr, r.stderr
    n_skip = sum(1 for kind, _, _ in ARCHIVE_CASES.values() if kind == "skip")
    assert f"{n_skip} files skipped" in r.stdout
    info = json.loads(nasty["status"].stdout)
    assert info["skipped"] == n_skip == len(nasty["skipped"])
    assert nasty["doctor"].code == 0, nasty["doctor"].stdout
    n_index = sum(1 for kind, _, _ in ARCHIVE_CASES.values() if kind == "index")
    assert len(nasty["samples"]) == 6 + n_index  # the good ones and the converted ones


@pytest.mark.parametrize("case", list(ARCHIVE_CASES))
def test_archive_case_decision(case, nasty):
    kind, key, check = ARCHIVE_CASES[case]
    if kind == "skip":
        assert key in nasty["skipped"], sorted(nasty["skipped"])
        assert check in nasty["skipped"][key]
        assert key not in nasty["samples"]
        return
    assert key not in nasty["skipped"] and key in nasty["samples"], nasty["skipped"].get(key)
    sid, width, height, note = nasty["samples"][key]
    img = nasty["cache"][sid].transpose(1, 2, 0)  # (S, S, 3) uint8
    assert img.shape == (32, 32, 3)
    src = nasty["top"] / "archive" / key
    if check == "ramp":  # 16-bit / float: stretched to the full 8-bit range, order kept
        assert (width, height) == (32, 32) and "8-bit" in note
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
        row = img[5, :, 0].astype(int)  # a row without no-data pixels
        assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()
        assert len(np.unique(row)) >= 28  # a ramp, not two levels
    elif check == "rgba":
        assert "RGBA->RGB" in note
        assert np.array_equal(img, np.asarray(Image.open(src))[..., :3])
    elif check == "palette":
        assert np.array_equal(img, np.asarray(Image.open(src).convert("RGB")))
    elif check == "gray":
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
        assert np.array_equal(img[..., 0], np.asarray(Image.open(src).convert("L")))
    elif check == "wide":
        assert (width, height) == (64, 16)
    elif check == "same-as-good_0":
        good = nasty["samples"]["good/good_0.png"][0]
        assert np.array_equal(nasty["cache"][sid], nasty["cache"][good])
    else:
        assert img.std() > 10  # real content, not a blank


def test_nasty_archive_skipped_image_cannot_take_a_label(nasty, tmp_path):
    root = copy_project(nasty["root"], tmp_path / "proj")
    f = tmp_path / "labels.csv"
    f.write_text("filename,a,b\nbad/case.png,1,0\n")
    before = state(root)
    r = cli("import-labels", f, "-p", root)
    assert_clean_error(r, "row 2", "skipped at indexing", "differs only in case")
    assert state(root) == before


def _patched_open(monkeypatch, victim: Path) -> None:
    """As root chmod 000 does not stop reading: refuse the victim file the way the OS would."""
    real = Image.open

    def fake(fp, *args, **kwargs):
        if Path(fp) == victim:
            raise PermissionError(13, "Permission denied", str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", fake)


def _patched_scandir(monkeypatch, victim: Path) -> None:
    real = os.scandir

    def fake(path=".", *args, **kwargs):
        if Path(os.fsdecode(path)) == victim:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", fake)


@pytest.mark.parametrize("case", ["huge-by-alft-limit", "huge-pillow-bomb-error",
                                  "huge-pillow-bomb-warning", "unreadable-file",
                                  "unreadable-folder"])
def test_archive_limits_and_permissions_in_process(case, tmp_path, monkeypatch):
    import PIL.Image

    from alft_cli import images

    archive = tmp_path / "archive"
    for i in range(4):
        _save(archive / f"ok_{i}.png", Image.fromarray(_rgb(i)))
    victim = archive / "victim.png"
    _save(victim, Image.fromarray(_rgb(5, 64, 64)))  # 4096 px; the others 1024
    key, reason = "victim.png", "too large"
    if case == "huge-by-alft-limit":
        monkeypatch.setattr(images, "MAX_PIXELS", 2000)
    elif case == "huge-pillow-bomb-error":  # > 2x Pillow's limit: refused while opening
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 2000)
    elif case == "huge-pillow-bomb-warning":  # between 1x and 2x: a warning, made an error
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 3000)
    elif case == "unreadable-file":
        reason = "permission denied"
        if os.geteuid() == 0:
            _patched_open(monkeypatch, victim)
        else:
            victim.chmod(0)
    else:
        victim.unlink()
        locked = archive / "locked"
        _save(locked / "inside.png", Image.fromarray(_rgb(6)))
        key, reason = "locked", "cannot list folder"
        if os.geteuid() == 0:
            _patched_scandir(monkeypatch, locked)
        else:
            locked.chmod(0)
    try:
        r = api.init_pool(archive, tmp_path / "proj", classes="a,b", initial=0, image_size=32)
    finally:
        for p in (victim, archive / "locked"):
            if p.exists():
                p.chmod(0o755)
    assert r.indexed == 4 and r.skipped == 1
    rows = list(csv.DictReader(open(tmp_path / "proj" / "skipped.csv")))
    assert rows[0]["filename"].rstrip("/") == key and reason in rows[0]["reason"]
    assert api.status(tmp_path / "proj")["skipped"] == 1


ARCHIVE_FAILURES = {
    "archive-missing": (lambda t: t / "nope", ("does not exist",)),
    "archive-is-a-file": (lambda t: _touch(t / "a.zip"), ("give a folder",)),
    "no-images-at-all": (lambda t: _folder(t / "a", {"README.txt": b"hi"}),
                         ("no images found", "1 unusable")),
    "only-unusable-images": (lambda t: _folder(t / "a", {"x.png": b"", "y.tif": b"text"}),
                             ("none of the 2 images could be decoded",)),
    "manifest-with-dotdot": (lambda t: _manifest(t, "filename\n../escape.png\n"),
                             ("row 2", "'..'")),
    "manifest-listing-twice": (lambda t: _manifest(t, "filename\nimg.png\nimg.png\n"),
                               ("listed twice",)),
    "manifest-without-filename": (lambda t: _manifest(t, "path\nimg.png\n"), ("'filename'",)),
    "manifest-not-utf8": (lambda t: _manifest(t, "filename\nfor\xeat.png\n", "latin-1"),
                          ("cannot read manifest",)),
}


def _touch(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04")
    return path


def _folder(path: Path, content: dict[str, bytes]) -> Path:
    path.mkdir()
    for name, data in content.items():
        (path / name).write_bytes(data)
    return path


def _manifest(top: Path, text: str, encoding: str = "utf-8") -> Path:
    folder = top / "m"
    folder.mkdir()
    _save(folder / "img.png", Image.fromarray(_rgb(0)))
    (folder / "list.csv").write_bytes(text.encode(encoding))
    return folder / "list.csv"


@pytest.mark.parametrize("case", list(ARCHIVE_FAILURES))
def test_unusable_archive_creates_nothing(case, tmp_path):
    make, needles = ARCHIVE_FAILURES[case]
    src = tmp_path / "src"
    src.mkdir()
    archive = make(src)
    out = tmp_path / "out"
    out.mkdir()
    r = cli("init-pool", archive, "-p", out / "proj", "--classes", "a,b", "--image-size", "32")
    assert_clean_error(r, *needles)
    assert list(out.iterdir()) == []  # no project and no half-built temp folder


def test_gold_labels_naming_unknown_images_create_nothing(tiny_archive, tmp_path):
    gold = tmp_path / "gold.csv"
    text = tiny_archive.labels_csv.read_text()
    gold.write_text(text + "nowhere/ghost.png," + ",".join("0" for _ in tiny_archive.classes)
                    + "\n")
    out = tmp_path / "out"
    out.mkdir()
    r = cli("init-pool", tiny_archive.root, "-p", out / "proj", "--labels", gold,
            "--image-size", "32")
    assert_clean_error(r, "gold.csv", f"row {len(text.splitlines()) + 1}", "nowhere/ghost.png")
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# 5. kill -9 at every crash point
# --------------------------------------------------------------------------------------------
def crash(*args: object, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **ONE_THREAD, "ALFT_CRASH_AT": point}
    env.pop("ALFT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "alft_cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def _normalized(root: Path) -> dict:
    """What must be equal between a crashed-then-rerun project and an uninterrupted one."""
    rows = db_rows(root)
    conn = sqlite3.connect(f"file:{root / 'alft.db'}?mode=ro", uri=True)
    rounds = conn.execute("SELECT round, strategy, budget, seed, model_round, trained_on, "
                          "model_file IS NOT NULL, metrics FROM rounds ORDER BY round").fetchall()
    imports = conn.execute("SELECT format, added, changed, unchanged FROM imports").fetchall()
    conn.close()
    return {"samples": rows["samples"], "labels": rows["labels"], "queries": rows["queries"],
            "gold": rows["gold"], "meta": [r for r in rows["meta"] if r[0] != "pretrained"],
            "rounds": rounds, "imports": imports}


def check_consistent_after_kill(root: Path) -> None:
    """The project opens, doctor finds nothing, status works, models are only recorded once
    their files exist."""
    doctor = cli("doctor", "-p", root, "--json")
    assert doctor.code == 0, doctor.stdout + doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["ok"] and report["problems"] == [], report
    status = cli("status", "-p", root, "--json")
    assert status.code == 0, status.stderr
    for r in json.loads(status.stdout)["rounds"]:
        if r["model"]:
            assert (root / r["model"]).is_file()


def _tensors_equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def import_reference(base, tmp_path_factory):
    root = copy_project(base.root, tmp_path_factory.mktemp("import-ref") / "proj")
    assert cli("import-labels", base.answers, "-p", root).code == 0
    return root


@pytest.mark.parametrize("point,committed", [("import-labels:validated", False),
                                             ("import-labels:before-commit", False),
                                             ("import-labels:committed", True)])
def test_kill_during_import_labels(point, committed, base, import_reference, tmp_path):
    root = copy_project(base.root, tmp_path / "proj")
    old = labels_of(root)
    new = labels_of(import_reference)
    assert old == {} and len(new) == 10
    proc = crash("import-labels", base.answers, "-p", root, point=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    check_consistent_after_kill(root)
    assert labels_of(root) == (new if committed else old)  # all or nothing, never partial
    r = cli("import-labels", base.answers, "-p", root)
    assert r.code == 0, r.stderr
    assert _normalized(root) == _normalized(import_reference)


@pytest.fixture(scope="module")
def finetune_reference(base, tmp_path_factory):
    root = copy_project(base.labeled, tmp_path_factory.mktemp("ft-ref") / "proj")
    started = time.monotonic()
    r = cli("finetune", "-p", root, *TINY_FT)
    assert r.code == 0, r.stderr
    DURATION["finetune"] = time.monotonic() - started
    return root


DURATION: dict[str, float] = {}  # seconds an uninterrupted run took on this machine


def _model_state(root: Path, name: str = "rounds/round_000/model.pt") -> dict:
    from alft_cli.checkpoints import load_safe

    return load_safe(root / name)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["finetune:checkpointed", "finetune:trained",
                                   "finetune:model-saved"])
def test_kill_during_finetune_then_resume_is_exact(point, base, finetune_reference, tmp_path):
    root = copy_project(base.labeled, tmp_path / "proj")
    labels = labels_of(root)
    proc = crash("finetune", "-p", root, *TINY_FT, point=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    check_consistent_after_kill(root)
    assert labels_of(root) == labels
    info = json.loads(cli("status", "-p", root, "--json").stdout)
    assert info["rounds"][0]["model"] is None  # not complete: no model recorded
    assert (root / "rounds/round_000/model.pt").exists() == (point == "finetune:model-saved")
    assert (root / "rounds/round_000/finetune_checkpoint.pt").exists()
    r = cli("finetune", "-p", root, *TINY_FT, "--resume")
    assert r.code == 0, r.stderr
    assert "resuming fine-tuning" in r.stderr
    assert _tensors_equal(_model_state(root), _model_state(finetune_reference))
    assert _normalized(root) == _normalized(finetune_reference)
    assert not (root / "rounds/round_000/finetune_checkpoint.pt").exists()
    assert cli("doctor", "-p", root).code == 0


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """16 images: BYOL with batch 8 takes 2 steps per epoch."""
    from alft_cli.synthetic import generate_archive

    top = tmp_path_factory.mktemp("small")
    archive = generate_archive(top / "archive", n_images=16, image_size=32, seed=5)
    root = top / "proj"
    api.init_pool(archive.root, root, classes="a,b", initial=0, image_size=32)
    ref = copy_project(root, top / "reference")
    started = time.monotonic()
    r = cli("pretrain", "-p", ref, *TINY_BYOL)
    assert r.code == 0, r.stderr
    DURATION["pretrain"] = time.monotonic() - started
    return {"root": root, "reference": ref}


@pytest.mark.slow
@pytest.mark.parametrize("point,checkpoint", [("pretrain:step", False),
                                              ("pretrain:checkpointed", True)])
def test_kill_during_pretrain_then_resume_is_exact(point, checkpoint, small, tmp_path):
    root = copy_project(small["root"], tmp_path / "proj")
    proc = crash("pretrain", "-p", root, *TINY_BYOL, point=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    check_consistent_after_kill(root)
    assert json.loads(cli("status", "-p", root, "--json").stdout)["pretrained"] is None
    assert not (root / "pretrain/backbone.pt").exists()
    assert (root / "pretrain/checkpoint.pt").exists() == checkpoint
    r = cli("pretrain", "-p", root, *TINY_BYOL, *(["--resume"] if checkpoint else []))
    assert r.code == 0, r.stderr
    ref = small["reference"]
    assert _tensors_equal(_model_state(root, "pretrain/backbone.pt"),
                          _model_state(ref, "pretrain/backbone.pt"))
    from alft_cli.checkpoints import load_safe

    assert _tensors_equal(load_safe(root / "pretrain/checkpoint.pt")["model"],
                          load_safe(ref / "pretrain/checkpoint.pt")["model"])  # EMA target too
    assert json.loads(cli("status", "-p", root, "--json").stdout)["pretrained"]["epochs"] == 2


@pytest.fixture(scope="module")
def query_reference(base, tmp_path_factory):
    root = copy_project(base.labeled, tmp_path_factory.mktemp("q-ref") / "proj")
    r = cli("query", "-p", root, *QUERY)
    assert r.code == 0, r.stderr
    return root


@pytest.mark.parametrize("point", ["query:file-written", "query:before-commit"])
def test_kill_during_query(point, base, query_reference, tmp_path):
    root = copy_project(base.labeled, tmp_path / "proj")
    before = db_rows(root)
    proc = crash("query", "-p", root, *QUERY, point=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    check_consistent_after_kill(root)
    after = db_rows(root)
    for table in ("labels", "queries", "rounds"):
        assert after[table] == before[table]  # the new round does not exist yet
    r = cli("query", "-p", root, *QUERY)
    assert r.code == 0, r.stderr
    assert _normalized(root) == _normalized(query_reference)
    info = json.loads(cli("status", "-p", root, "--json").stdout)
    ref = json.loads(cli("status", "-p", query_reference, "--json").stdout)
    assert info["pending"] == ref["pending"]
    assert (root / info["rounds"][-1]["query_file"]).read_text() == \
        (query_reference / ref["rounds"][-1]["query_file"]).read_text()


@pytest.mark.slow
@pytest.mark.parametrize("seed,command", [(0, "finetune"), (1, "finetune"), (2, "pretrain")])
def test_kill_at_a_random_moment(seed, command, base, small, finetune_reference, tmp_path):
    src = base.labeled if command == "finetune" else small["root"]
    root = copy_project(src, tmp_path / "proj")
    labels = labels_of(root)
    args = TINY_FT if command == "finetune" else TINY_BYOL
    # Somewhere inside the run (start-up, training, saving), scaled to this machine's speed.
    delay = random.Random(seed).uniform(0.1, 0.6) * DURATION[command]
    proc = subprocess.Popen([sys.executable, "-m", "alft_cli", command, "-p", str(root), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **ONE_THREAD})
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "finished before the kill; the delay is too long"
    check_consistent_after_kill(root)
    assert labels_of(root) == labels


# --------------------------------------------------------------------------------------------
# 6. two writers
# --------------------------------------------------------------------------------------------
HOLDER = """
import sqlite3, sys, time
from pathlib import Path
from alft_cli.project import project_lock
root = Path(sys.argv[1])
with project_lock(root, "finetune"):
    if sys.argv[2] == "txn":  # a writer in the middle of a transaction, too
        conn = sqlite3.connect(root / "alft.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE meta SET value=value")
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def hold_lock(root: Path, mode: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), mode, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_busy_status_never_blocks_stale_lock_taken_over(base, tmp_path):
    root = copy_project(base.root, tmp_path / "proj")
    holder = hold_lock(root, "txn", 300)
    try:
        before = state(root)
        started = time.monotonic()
        r = cli("import-labels", base.answers, "-p", root, env={"ALFT_LOCK_TIMEOUT": "1"})
        assert_clean_error(r, f"project is busy (pid {holder.pid}, command finetune", code=3)
        assert time.monotonic() - started < 15
        assert state(root) == before
        started = time.monotonic()
        s = cli("status", "-p", root, "--json", env={"ALFT_LOCK_TIMEOUT": "60"})
        assert s.code == 0, s.stderr
        assert time.monotonic() - started < 15  # read-only: no lock, no waiting on the writer
        assert json.loads(s.stdout)["labeled"] == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died with the lock held: the next writer takes it over at once.
    started = time.monotonic()
    r = cli("import-labels", base.answers, "-p", root)
    assert r.code == 0, r.stderr
    assert time.monotonic() - started < 9  # well under the 10 s default wait
    assert len(labels_of(root)) == 10
    assert cli("doctor", "-p", root).code == 0


def test_second_writer_waits_for_a_short_holder(base, tmp_path):
    root = copy_project(base.root, tmp_path / "proj")
    holder = hold_lock(root, "plain", 2.0)
    try:
        r = cli("import-labels", base.answers, "-p", root)  # default wait: up to 10 s
    finally:
        holder.wait(timeout=30)
    assert r.code == 0, r.stderr
    assert len(labels_of(root)) == 10


# --------------------------------------------------------------------------------------------
# 7. untrusted files
# --------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def evil_file(path: Path, marker: Path, legacy: bool = False) -> Path:
    import torch

    payload = {"kind": "alft-backbone", "backbone": "resnet18",
               "state_dict": {"conv1.weight": torch.zeros(1)}, "extra": Payload(str(marker))}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    return path


def test_the_payload_would_run_if_unpickled_unsafely(tmp_path):
    import torch

    marker = tmp_path / "ran"
    torch.load(evil_file(tmp_path / "w.pt", marker), weights_only=False)
    assert marker.exists()  # so the tests below prove something


def _set_pretrained(root: Path) -> None:
    conn = sqlite3.connect(root / "alft.db")
    conn.execute("INSERT INTO meta(key, value) VALUES ('pretrained', ?)", (json.dumps({
        "backbone": "resnet18", "method": "byol", "epochs": 1,
        "file": "pretrain/backbone.pt"}),))
    conn.commit()
    conn.close()


def _set_round_model(root: Path) -> None:
    conn = sqlite3.connect(root / "alft.db")
    conn.execute("UPDATE rounds SET model_file='rounds/round_000/model.pt', trained_on=10 "
                 "WHERE round=0")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("where", ["init-weights", "init-weights-legacy-pickle",
                                   "pretrained-backbone", "round-model"])
def test_pickled_code_in_weights_never_runs(where, base, tmp_path):
    root = copy_project(base.labeled, tmp_path / "proj")
    marker = tmp_path / "pwned"
    if where.startswith("init-weights"):
        weights = evil_file(tmp_path / "weights.pt", marker, legacy=where.endswith("pickle"))
        args = ["pretrain", "-p", root, *TINY_BYOL, "--init-weights", weights]
        name = "weights.pt"
    elif where == "pretrained-backbone":
        evil_file(root / "pretrain" / "backbone.pt", marker)
        _set_pretrained(root)
        args = ["finetune", "-p", root, "--init", "pretrained", "--epochs", "1", "--device",
                "cpu"]
        name = "backbone.pt"
    else:
        evil_file(root / "rounds" / "round_000" / "model.pt", marker)
        _set_round_model(root)
        args = ["query", "-p", root, "--budget", "3", "--device", "cpu"]
        name = "model.pt"
    before = state(root)
    r = cli(*args)
    assert_clean_error(r, name, "refused to load")
    assert not marker.exists()
    assert state(root) == before


ODD_CLASSES = ["forêt d'été", 'O\'Hare "x"', "🌊 eau", "x' OR '1'='1",
               "Robert') DROP TABLE labels --", "naïve ÅÄÖ"]
ODD_NAMES = ["it's \"quoted\"; ok.png", "forêt d'été/🌊 plage.png",
             "x'; DROP TABLE samples; --.png", "comma, and spaces .png", "日本語/東京.png",
             "100% [draft] {v2} $HOME `x`.png"]


def test_quotes_and_unicode_round_trip_intact(tiny_archive, tmp_path):
    archive = tmp_path / "archive"
    for i, name in enumerate(ODD_NAMES):
        (archive / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_archive.root / tiny_archive.keys[i], archive / name)
    root = tmp_path / "proj"
    r = cli("init-pool", archive, "-p", root, "--classes", ",".join(ODD_CLASSES),
            "--initial", str(len(ODD_NAMES)), "--image-size", "32")
    assert r.code == 0, r.stderr
    info = json.loads(cli("status", "-p", root, "--json").stdout)
    assert info["classes"] == ODD_CLASSES
    assert sorted(info["pending"]) == sorted(ODD_NAMES)
    # The to-label file lists the names intact (CSV quoting), and importing it back works.
    query = list(csv.DictReader(open(root / info["rounds"][0]["query_file"], newline="",
                                     encoding="utf-8")))
    assert sorted(row["filename"] for row in query) == sorted(ODD_NAMES)
    wanted = {name: np.array([(i + j) % 2 for j in range(len(ODD_CLASSES))])
              for i, name in enumerate(ODD_NAMES)}
    answers = write_onehot(tmp_path / "answers.csv", ODD_CLASSES, wanted)
    r = cli("import-labels", answers, "-p", root)
    assert r.code == 0, r.stderr
    assert labels_of(root) == {k: y_str(v) for k, v in wanted.items()}
    info = json.loads(cli("status", "-p", root, "--json").stdout)
    assert info["labeled"] == len(ODD_NAMES) and info["pending"] == []
    assert info["class_counts"] == {c: int(sum(v[j] for v in wanted.values()))
                                    for j, c in enumerate(ODD_CLASSES)}
    conn = sqlite3.connect(root / "alft.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"labels", "samples"} <= tables  # nothing was executed from a name
    # A list CSV with the odd class names (quoted, apostrophes, emoji) is read back too.
    lst = tmp_path / "list.csv"
    with open(lst, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "labels"])
        for name, y in wanted.items():
            writer.writerow([name, ";".join(c for c, v in zip(ODD_CLASSES, y) if v)])
    r = cli("import-labels", lst, "-p", root)
    assert r.code == 0 and f"{len(ODD_NAMES)} unchanged" in r.stdout, r.stderr
    assert cli("doctor", "-p", root).code == 0


class Audit:
    """Records file opens and network calls of this process while active (audit hooks
    cannot be removed, so one hook is installed once and switched on and off)."""

    events: list[tuple[str, str]] | None = None
    installed = False

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.events is None:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            cls.events.append(("open", os.fsdecode(args[0])))
        elif event.startswith(("socket.", "urllib.", "http.")):
            cls.events.append((event, repr(args)[:200]))

    def __enter__(self) -> list[tuple[str, str]]:
        if not Audit.installed:
            sys.addaudithook(Audit.hook)
            Audit.installed = True
        Audit.events = []
        return Audit.events

    def __exit__(self, *exc: object) -> None:
        Audit.events = None


def _no_network(monkeypatch) -> list:
    calls: list = []

    def refuse(self, address):
        calls.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: calls.append(a) or [])
    return calls


def test_label_studio_urls_are_matched_never_fetched(base, tmp_path, monkeypatch):
    root = copy_project(base.labeled, tmp_path / "proj")
    keys = base.unlabeled[:4]
    f = tmp_path / "export.json"
    urls = [lambda k: f"http://labelstudio.example.invalid:8080/data/local-files/?d=srv/{k}",
            lambda k: f"https://s3.example.invalid/bucket/images/{k}?X-Amz-Signature=abc",
            lambda k: "http://10.0.0.1/data/upload/3/1a2b3c4d-" + k.rsplit("/", 1)[1],
            lambda k: f"s3://bucket/archive/{k}"]
    tasks = json.loads(_ls_export(base, keys, str))
    for task, key, url in zip(tasks, keys, urls):
        task["data"]["image"] = url(key)
    f.write_text(json.dumps(tasks))
    calls = _no_network(monkeypatch)
    with Audit() as events:
        r = api.import_labels(root, f)
    assert r.added == 4
    assert any(p.endswith("export.json") for kind, p in events if kind == "open")
    assert calls == [] and not [e for e in events if e[0] != "open"]
    stored = labels_of(root)
    assert {k: stored[k] for k in keys} == {k: y_str(base.gold[k]) for k in keys}


def test_names_in_label_files_are_looked_up_never_opened(base, tmp_path):
    root = copy_project(base.labeled, tmp_path / "proj")
    secret = tmp_path / "secret.png"
    _save(secret, Image.fromarray(_rgb(0)))
    zeros = ",".join("0" for _ in base.classes)
    f = tmp_path / "labels.csv"
    f.write_text(f"filename,{','.join(base.classes)}\n{secret},{zeros}\n"
                 f"../{secret.name},{zeros}\n/etc/passwd,{zeros}\n")
    before = state(root)
    with Audit() as events:
        with pytest.raises(Exception) as err:
            api.import_labels(root, f)
    assert "3 problems" in str(err.value)
    opened = {Path(p).name for kind, p in events if kind == "open"}
    assert "labels.csv" in opened  # the hook sees opens ...
    assert not opened & {"secret.png", "passwd"}, opened  # ... and none of the named files
    assert state(root) == before


def test_symlinks_leaving_the_archive_are_not_followed(tmp_path):
    archive = tmp_path / "archive"
    for i in range(3):
        _save(archive / f"ok_{i}.png", Image.fromarray(_rgb(i)))
    outside = tmp_path / "outside"
    _save(outside / "secret.png", Image.fromarray(_rgb(9)))
    _save(outside / "more" / "deep.png", Image.fromarray(_rgb(8)))
    os.symlink(outside / "secret.png", archive / "link.png")
    os.symlink(outside / "more", archive / "linked_dir")
    with Audit() as events:
        r = api.init_pool(archive, tmp_path / "proj", classes="a,b", initial=0, image_size=32)
    assert r.indexed == 3 and r.skipped == 2
    opened = [p for kind, p in events if kind == "open"]
    assert any(p.endswith("ok_0.png") for p in opened)  # decoding is seen by the hook
    assert not [p for p in opened if str(outside) in p]
    reasons = dict(csv.reader(open(tmp_path / "proj" / "skipped.csv")))
    assert "outside the archive" in reasons["link.png"]
    assert "not followed" in reasons["linked_dir/"]


# --------------------------------------------------------------------------------------------
# 8. doctor
# --------------------------------------------------------------------------------------------
def test_doctor_on_a_healthy_project_changes_nothing(base, tmp_path):
    root = copy_project(base.labeled, tmp_path / "proj")
    before = raw_bytes(root)
    r = cli("doctor", "-p", root)
    assert r.code == 0 and "project is consistent" in r.stdout, r.stdout + r.stderr
    assert raw_bytes(root) == before


def _damage_image(root: Path) -> str:
    images = root.parent / "archive" / "images"
    path = sorted(p for p in images.rglob("*") if p.is_file())[0]
    path.unlink()
    return path.relative_to(images).as_posix()


DOCTOR_CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "image-deleted": (_damage_image, "missing from the archive"),
    "image-changed": (lambda p: _grow_image(p), "size changed"),
    "model-path-missing": (lambda p: _sql(p, "UPDATE rounds SET model_file="
                                             "'rounds/round_000/gone.pt' WHERE round=0",
                                          "rounds/round_000/gone.pt"), "recorded but missing"),
    "label-wrong-length": (lambda p: _sql(p, "UPDATE labels SET y='0101' WHERE sample_id="
                                             "(SELECT MIN(sample_id) FROM labels)", "'0101'"),
                           "malformed"),
    "label-not-binary": (lambda p: _sql(p, "UPDATE labels SET y=replace(y, '0', '7') WHERE "
                                           "sample_id=(SELECT MIN(sample_id) FROM labels)",
                                        "7"), "malformed"),
    "query-file-deleted": (lambda p: _unlink(p / "rounds/round_000/query.csv"),
                           "query file"),
    "query-says-labeled-without-label": (lambda p: _sql(
        p, "DELETE FROM labels WHERE sample_id=(SELECT MIN(sample_id) FROM labels)",
        "no label is stored"), "query says labeled"),
    "pool-sample-with-gold": (lambda p: _sql(p, "INSERT INTO gold SELECT id, '0000000000' "
                                                "FROM samples WHERE split='pool' LIMIT 1",
                                             "gold"), "carry gold labels"),
    "cache-truncated": (lambda p: _truncate_cache(p), "decode cache"),
    "pretrained-file-missing": (lambda p: (_set_pretrained(p), "pretrain/backbone.pt")[1],
                                "is missing"),
}


def _grow_image(root: Path) -> str:
    path = next((root.parent / "archive" / "images").rglob("*.png"))
    with open(path, "ab") as handle:
        handle.write(b"\0" * 10)
    return path.name


def _sql(root: Path, statement: str, needle: str = "") -> str:
    conn = sqlite3.connect(root / "alft.db")
    conn.execute(statement)
    conn.commit()
    conn.close()
    return needle


def _unlink(path: Path) -> str:
    path.unlink()
    return path.name


def _truncate_cache(root: Path) -> str:
    cache = np.load(root / "cache" / "images.npy")
    np.save(root / "cache" / "images.npy", cache[:10])
    return "shape"


def _doctor_project(tiny_archive, tmp_path) -> Path:
    """A project over a private copy of the archive (the test damages it), 10 labels."""
    shutil.copytree(tiny_archive.root, tmp_path / "archive" / "images")
    root = tmp_path / "proj"
    api.init_pool(tmp_path / "archive" / "images", root, labels_file=tiny_archive.labels_csv,
                  initial=10, image_size=32, seed=0)
    gold = gold_of(tiny_archive)
    answers = write_onehot(tmp_path / "answers.csv", tiny_archive.classes,
                           {k: gold[k] for k in api.status(root)["pending"]})
    api.import_labels(root, answers)
    return root


@pytest.mark.parametrize("case", list(DOCTOR_CASES))
def test_doctor_names_the_problem_and_changes_nothing(case, tiny_archive, tmp_path):
    root = _doctor_project(tiny_archive, tmp_path)
    damage, problem = DOCTOR_CASES[case]
    needle = damage(root)
    before = raw_bytes(root)
    r = cli("doctor", "-p", root)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("problem:")]
    assert any(problem in line and needle in line for line in lines), r.stdout
    assert raw_bytes(root) == before


def test_doctor_exits_1_when_it_finds_a_problem(tiny_archive, tmp_path):
    root = _doctor_project(tiny_archive, tmp_path)
    _sql(root, "UPDATE labels SET y='01'")
    assert cli("doctor", "-p", root).code == 1
