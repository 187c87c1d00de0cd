"""The project's embedded SQLite store: samples, splits, labels, rounds, queries, runs.

Every write happens inside :meth:`Store.transaction`, so a command either commits its whole
change or leaves the store as it was (a crash mid-way rolls back on the next open). Labels are
stored as one string of ``0``/``1`` per sample in project class order, with the round that
added them. Gold labels (``--labels`` at init-pool) live in their own table and only for val
and test samples: pool labels arrive only through ``import-labels``. Where a query was pushed to
a Label Studio server, ``ls_links`` and ``ls_tasks`` record where (URL, project id) and which
task holds each queried sample. The stop set (:mod:`alft_cli.stopping`) and each round's
packed predictions on it have their own tables.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from alft_cli.config import SCHEMA_VERSION
from alft_cli.errors import ProjectError

SPLITS = ("pool", "val", "test")
# "excluded": indexed but out of play (e.g. removed from the pool by an imbalance scenario).
ALL_SPLITS = (*SPLITS, "excluded")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE samples (
    id INTEGER PRIMARY KEY,                -- row in the decode cache
    key TEXT NOT NULL UNIQUE,              -- path relative to the archive root, POSIX style
    split TEXT NOT NULL CHECK (split IN ('pool', 'val', 'test', 'excluded')),
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    note TEXT                              -- conversion applied on decode, if any
);
CREATE INDEX samples_split ON samples(split);
CREATE TABLE skipped (key TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE gold (sample_id INTEGER PRIMARY KEY REFERENCES samples(id), y TEXT NOT NULL);
CREATE TABLE imports (
    id INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    format TEXT NOT NULL,
    at TEXT NOT NULL,
    added INTEGER NOT NULL,
    changed INTEGER NOT NULL,
    unchanged INTEGER NOT NULL
);
CREATE TABLE labels (
    sample_id INTEGER PRIMARY KEY REFERENCES samples(id),
    y TEXT NOT NULL,
    round INTEGER NOT NULL,
    import_id INTEGER REFERENCES imports(id)
);
CREATE TABLE rounds (
    round INTEGER PRIMARY KEY,
    strategy TEXT NOT NULL,
    budget INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    model_round INTEGER,                   -- the round whose model chose this query (NULL: none)
    query_file TEXT,
    created_at TEXT NOT NULL,
    trained_on INTEGER,                    -- labels the round's model was trained on
    model_file TEXT,                       -- set only once the model file exists
    metrics TEXT,                          -- JSON {"val": {...}, "test": {...}}
    train_config TEXT,                     -- JSON of the finetune settings
    trained_at TEXT
);
CREATE TABLE queries (
    round INTEGER NOT NULL REFERENCES rounds(round),
    sample_id INTEGER NOT NULL REFERENCES samples(id),
    rank INTEGER NOT NULL,
    score REAL,
    cluster INTEGER,
    state TEXT NOT NULL CHECK (state IN ('pending', 'labeled', 'cancelled')),
    PRIMARY KEY (round, sample_id)
);
CREATE INDEX queries_state ON queries(state);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL
);
"""

# Added after schema 1 shipped: only `alft labelstudio push` writes them, and it creates them
# (IF NOT EXISTS) in its own transaction, so projects made before keep working and older alft
# versions, which never read them, still open the store (no schema version change).
_LS_SCHEMA = """
CREATE TABLE IF NOT EXISTS ls_links (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,                     -- the server as given to push (no credentials)
    project_id INTEGER NOT NULL,           -- Label Studio project id
    title TEXT,
    last_push_at TEXT NOT NULL,
    push_seq INTEGER NOT NULL,             -- larger = pushed to more recently (pull uses it)
    UNIQUE (url, project_id)
);
CREATE TABLE IF NOT EXISTS ls_tasks (
    link_id INTEGER NOT NULL REFERENCES ls_links(id),
    round INTEGER NOT NULL,
    sample_id INTEGER NOT NULL REFERENCES samples(id),
    task_id INTEGER NOT NULL,
    pushed_at TEXT NOT NULL,
    PRIMARY KEY (link_id, round, sample_id)
);
"""


def now_iso() -> str:
    """UTC timestamp, second precision, ISO 8601."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def encode_y(y: Sequence[int] | np.ndarray) -> str:
    """0/1 vector -> compact string (one character per class)."""
    return "".join("1" if int(v) else "0" for v in y)


def decode_y(text: str) -> np.ndarray:
    """Inverse of :func:`encode_y`."""
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0")


@dataclass(frozen=True)
class SampleRecord:
    """One indexed image."""

    key: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    note: str | None = None


@dataclass(frozen=True)
class RoundRecord:
    """One row of the rounds table."""

    round: int
    strategy: str
    budget: int
    seed: int
    model_round: int | None
    query_file: str | None
    created_at: str
    trained_on: int | None
    model_file: str | None
    metrics: dict[str, Any] | None
    train_config: dict[str, Any] | None
    trained_at: str | None


@dataclass(frozen=True)
class LsLink:
    """A Label Studio project that queries were pushed to."""

    id: int
    url: str
    project_id: int
    title: str | None
    last_push_at: str


class Store:
    """Typed access to the project database. Open with :meth:`open` or :meth:`create`."""

    FILENAME = "alft.db"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path) -> Store:
        if path.exists():
            raise ProjectError(f"{path} already exists")
        conn = _connect(path)
        conn.executescript(_SCHEMA)
        _add_missing_indexes(conn)
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                     (str(SCHEMA_VERSION),))
        return cls(conn, path)

    @classmethod
    def open(cls, path: Path, readonly: bool = False) -> Store:
        if not path.is_file():
            raise ProjectError(f"{path.parent} is not an alft project (no {path.name})")
        try:
            if readonly:
                conn = _connect(path, uri=f"file:{path}?mode=ro")
            else:
                conn = _connect(path)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ProjectError(f"{path}: not a readable alft database ({exc})") from exc
        if row is None:
            raise ProjectError(f"{path}: no schema version; not an alft database")
        if int(row[0]) > SCHEMA_VERSION:
            raise ProjectError(
                f"{path.parent} was written by a newer alft (store schema {row[0]}); "
                f"this alft reads schema <= {SCHEMA_VERSION}. Upgrade alft."
            )
        if not readonly:
            _add_missing_indexes(conn)
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing block: commits on success, rolls back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    # -- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # -- samples ---------------------------------------------------------------------------
    def add_samples(self, records: Iterable[tuple[int, SampleRecord, str]]) -> None:
        """Insert (cache row, record, split) tuples."""
        self.conn.executemany(
            "INSERT INTO samples(id, key, split, size, mtime_ns, sha256, width, height, note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((i, r.key, split, r.size, r.mtime_ns, r.sha256, r.width, r.height, r.note)
             for i, r, split in records),
        )

    def add_skipped(self, items: Iterable[tuple[str, str]]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO skipped(key, reason) VALUES (?, ?)", items)

    def skipped(self) -> list[tuple[str, str]]:
        return self.conn.execute("SELECT key, reason FROM skipped ORDER BY key").fetchall()

    def split_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SPLITS, 0)
        for split, n in self.conn.execute("SELECT split, COUNT(*) FROM samples GROUP BY split"):
            counts[split] = n
        if not counts.get("excluded"):
            counts.pop("excluded", None)
        return counts

    def set_split(self, sample_ids: Iterable[int], split: str) -> None:
        self.conn.executemany("UPDATE samples SET split=? WHERE id=?",
                              ((split, int(s)) for s in sample_ids))

    def sample_ids(self, split: str) -> np.ndarray:
        rows = self.conn.execute("SELECT id FROM samples WHERE split=? ORDER BY id", (split,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def keys_by_id(self) -> dict[int, str]:
        return dict(self.conn.execute("SELECT id, key FROM samples"))

    def ids_by_key(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT key, id FROM samples"))

    def split_of(self) -> dict[int, str]:
        return dict(self.conn.execute("SELECT id, split FROM samples"))

    def sample_records(self) -> Iterator[tuple[int, SampleRecord, str]]:
        cur = self.conn.execute(
            "SELECT id, key, size, mtime_ns, sha256, width, height, note, split FROM samples "
            "ORDER BY id")
        for row in cur:
            yield row[0], SampleRecord(*row[1:8]), row[8]

    # -- gold (val/test evaluation labels) -------------------------------------------------
    def set_gold(self, items: Iterable[tuple[int, str]]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO gold(sample_id, y) VALUES (?, ?)", items)

    def gold(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, Y) of the gold-labeled samples of ``split`` (val or test), ordered by id."""
        rows = self.conn.execute(
            "SELECT g.sample_id, g.y FROM gold g JOIN samples s ON s.id = g.sample_id "
            "WHERE s.split=? ORDER BY g.sample_id", (split,)).fetchall()
        return _ids_and_matrix(rows)

    # -- labels ----------------------------------------------------------------------------
    def labels(self) -> dict[int, str]:
        return dict(self.conn.execute("SELECT sample_id, y FROM labels"))

    def labeled_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, Y) of all labeled pool samples, ordered by id."""
        rows = self.conn.execute("SELECT sample_id, y FROM labels ORDER BY sample_id").fetchall()
        return _ids_and_matrix(rows)

    def count_labels(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    def label_rounds(self) -> dict[int, int]:
        return dict(self.conn.execute("SELECT sample_id, round FROM labels"))

    def add_import(self, file: str, sha256: str, fmt: str, added: int, changed: int,
                   unchanged: int) -> int:
        cur = self.conn.execute(
            "INSERT INTO imports(file, sha256, format, at, added, changed, unchanged) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", (file, sha256, fmt, now_iso(), added, changed,
                                            unchanged))
        return int(cur.lastrowid)

    def upsert_labels(self, items: Iterable[tuple[int, str, int, int]]) -> None:
        """Insert or replace (sample_id, y, round, import_id)."""
        self.conn.executemany(
            "INSERT INTO labels(sample_id, y, round, import_id) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(sample_id) DO UPDATE SET y=excluded.y, import_id=excluded.import_id",
            items)

    # -- answers routed to validation --------------------------------------------------------
    def val_answers(self) -> dict[int, str]:
        """sample id -> answer of the images routed to the val split (none in older stores)."""
        if not self.has_table("val_answers"):
            return {}
        return dict(self.conn.execute(
            "SELECT v.sample_id, g.y FROM val_answers v JOIN gold g ON g.sample_id = v.sample_id"))

    def add_val_answers(self, items: Iterable[tuple[int, str, int, int]]) -> None:
        """Route (sample_id, y, round, import_id) answers to the val split."""
        items = list(items)
        self.set_split((s for s, _, _, _ in items), "val")
        self.set_gold((s, y) for s, y, _, _ in items)
        self.conn.executemany(
            "INSERT OR REPLACE INTO val_answers(sample_id, round, import_id) VALUES (?, ?, ?)",
            ((s, r, i) for s, _, r, i in items))

    # -- rounds and queries ----------------------------------------------------------------
    def add_round(self, round_: int, strategy: str, budget: int, seed: int,
                  model_round: int | None, query_file: str | None) -> None:
        self.conn.execute(
            "INSERT INTO rounds(round, strategy, budget, seed, model_round, query_file, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (round_, strategy, budget, seed, model_round, query_file, now_iso()))

    def replace_round_query(self, round_: int, strategy: str, budget: int, seed: int,
                            model_round: int | None, query_file: str | None) -> None:
        self.conn.execute(
            "UPDATE rounds SET strategy=?, budget=?, seed=?, model_round=?, query_file=?, "
            "created_at=? WHERE round=?",
            (strategy, budget, seed, model_round, query_file, now_iso(), round_))

    def rounds(self) -> list[RoundRecord]:
        rows = self.conn.execute(
            "SELECT round, strategy, budget, seed, model_round, query_file, created_at, "
            "trained_on, model_file, metrics, train_config, trained_at FROM rounds ORDER BY round"
        ).fetchall()
        return [RoundRecord(*r[:9], _json_or_none(r[9]), _json_or_none(r[10]), r[11])
                for r in rows]

    def round(self, round_: int) -> RoundRecord | None:
        return next((r for r in self.rounds() if r.round == round_), None)

    def current_round(self) -> int | None:
        row = self.conn.execute("SELECT MAX(round) FROM rounds").fetchone()
        return row[0]

    def set_round_model(self, round_: int, model_file: str, trained_on: int,
                        metrics: dict[str, Any], train_config: dict[str, Any]) -> None:
        self.conn.execute(
            "UPDATE rounds SET model_file=?, trained_on=?, metrics=?, train_config=?, "
            "trained_at=? WHERE round=?",
            (model_file, trained_on, json.dumps(metrics), json.dumps(train_config), now_iso(),
             round_))

    def add_query(self, round_: int, items: Iterable[tuple[int, int, float | None, int | None]]
                  ) -> None:
        """Insert (sample_id, rank, score, cluster) as pending queries of ``round_``."""
        self.conn.executemany(
            "INSERT INTO queries(round, sample_id, rank, score, cluster, state) "
            "VALUES (?, ?, ?, ?, ?, 'pending')",
            ((round_, sid, rank, score, cluster) for sid, rank, score, cluster in items))

    def pending(self) -> list[tuple[int, int]]:
        """(round, sample_id) of queried samples not yet labeled, by round then rank."""
        return self.conn.execute(
            "SELECT round, sample_id FROM queries WHERE state='pending' ORDER BY round, rank"
        ).fetchall()

    def pending_queries(self) -> list[tuple[int, int, int, float | None, int | None]]:
        """(round, sample_id, rank, score, cluster) of pending queries, by round then rank."""
        return self.conn.execute(
            "SELECT round, sample_id, rank, score, cluster FROM queries WHERE state='pending' "
            "ORDER BY round, rank").fetchall()

    def query_sizes(self) -> dict[int, int]:
        """round -> the size of its query (its largest rank, every state counted)."""
        return dict(self.conn.execute("SELECT round, MAX(rank) FROM queries GROUP BY round"))

    def pending_round_of(self) -> dict[int, int]:
        return dict((sid, r) for r, sid in self.pending())

    def mark_labeled(self, sample_ids: Iterable[int]) -> None:
        self.conn.executemany(
            "UPDATE queries SET state='labeled' WHERE sample_id=? AND state='pending'",
            ((int(s),) for s in sample_ids))

    def cancel_pending(self) -> int:
        cur = self.conn.execute("UPDATE queries SET state='cancelled' WHERE state='pending'")
        return cur.rowcount

    def delete_round_queries(self, round_: int) -> None:
        self.conn.execute("DELETE FROM queries WHERE round=? AND state!='labeled'", (round_,))

    def labeled_queries(self) -> list[tuple[int, str, int | None]]:
        """(sample_id, strategy of its round, cluster) of every queried image that got its
        labels, oldest round first: which strategy (and which part of a mixed batch: a
        cluster id or -1) brought each label in."""
        return self.conn.execute(
            "SELECT q.sample_id, r.strategy, q.cluster FROM queries q JOIN rounds r "
            "ON r.round = q.round WHERE q.state='labeled' ORDER BY q.round, q.rank").fetchall()

    def save_auto_decision(self, round_: int, p: float | None, share: float | None) -> None:
        """Record ``auto``'s evidence for ``round_``'s query (``share`` None: the round is not
        an auto round, or no longer one after a re-query, so it has no row)."""
        if share is None:
            self.conn.execute("DELETE FROM auto_decisions WHERE round=?", (round_,))
        else:
            self.conn.execute("INSERT OR REPLACE INTO auto_decisions(round, p, share) "
                              "VALUES (?, ?, ?)", (round_, p, share))

    def auto_decisions(self) -> dict[int, dict[str, float | None]]:
        """round -> {"p", "share"} of every auto round's query, oldest first (``alft status``,
        and the evidence ``auto`` accumulates); rows exist only for auto rounds, since every
        query writes or deletes its round's row. Empty on a store opened read-only before
        the table existed."""
        if not self.has_table("auto_decisions"):
            return {}
        return {r: {"p": p, "share": share} for r, p, share in self.conn.execute(
            "SELECT round, p, share FROM auto_decisions ORDER BY round")}

    def queried_ids(self, round_: int) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT sample_id FROM queries WHERE round=? ORDER BY rank", (round_,))]

    # -- Label Studio link (alft labelstudio push/pull/status) -----------------------------
    def has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                 (name,)).fetchone() is not None

    def ls_link_save(self, url: str, project_id: int, title: str | None) -> int:
        """Record a push to ``url``'s project ``project_id``; returns the link id.

        Creates the Label Studio tables on first use; call inside a transaction.
        """
        # One statement at a time: executescript would commit the caller's transaction first.
        for statement in filter(str.strip, _LS_SCHEMA.split(";")):
            self.conn.execute(statement)
        seq = self.conn.execute("SELECT COALESCE(MAX(push_seq), 0) + 1 FROM ls_links"
                                ).fetchone()[0]
        self.conn.execute(
            "INSERT INTO ls_links(url, project_id, title, last_push_at, push_seq) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(url, project_id) DO UPDATE SET "
            "title=excluded.title, last_push_at=excluded.last_push_at, "
            "push_seq=excluded.push_seq", (url, int(project_id), title, now_iso(), seq))
        row = self.conn.execute("SELECT id FROM ls_links WHERE url=? AND project_id=?",
                                (url, int(project_id))).fetchone()
        return int(row[0])

    def ls_tasks_save(self, link_id: int, round_: int, items: Iterable[tuple[int, int]]) -> None:
        """Record (sample_id, task_id) pairs pushed for ``round_`` (a task re-made replaces)."""
        at = now_iso()
        self.conn.executemany(
            "INSERT INTO ls_tasks(link_id, round, sample_id, task_id, pushed_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(link_id, round, sample_id) DO UPDATE SET "
            "task_id=excluded.task_id, pushed_at=excluded.pushed_at",
            ((link_id, round_, int(s), int(t), at) for s, t in items))

    def ls_current_link(self) -> LsLink | None:
        """The Label Studio project pushed to last (None if never)."""
        if not self.has_table("ls_links"):
            return None
        row = self.conn.execute("SELECT id, url, project_id, title, last_push_at FROM ls_links "
                                "ORDER BY push_seq DESC LIMIT 1").fetchone()
        return LsLink(*row) if row else None

    def ls_tasks(self, link_id: int) -> dict[tuple[int, int], int]:
        """(round, sample_id) -> task id of everything pushed to a link."""
        if not self.has_table("ls_tasks"):
            return {}
        rows = self.conn.execute("SELECT round, sample_id, task_id FROM ls_tasks "
                                 "WHERE link_id=?", (link_id,))
        return {(r, s): t for r, s, t in rows}

    # -- runs (an audit trail of commands) -------------------------------------------------
    def start_run(self, command: str, args: dict[str, Any]) -> int:
        cur = self.conn.execute(
            "INSERT INTO runs(command, args, started_at, status) VALUES (?, ?, ?, 'running')",
            (command, json.dumps(args, default=str), now_iso()))
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str) -> None:
        self.conn.execute("UPDATE runs SET finished_at=?, status=? WHERE id=?",
                          (now_iso(), status, run_id))

    # -- stop set (alft_cli.stopping): fixed pool images predicted after every fine-tuning --
    def stop_set(self) -> np.ndarray:
        """Sample ids of the project's stop set, sorted (empty before the first fine-tuning
        and in projects made before alft had one)."""
        if not self.has_table("stop_set"):
            return np.zeros(0, dtype=np.int64)
        rows = self.conn.execute("SELECT sample_id FROM stop_set ORDER BY sample_id")
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def set_stop_set(self, sample_ids: Iterable[int], info: dict[str, Any]) -> None:
        """Record the stop set once (refuses to replace one); ``info`` (seed, size, pool) goes
        to the meta table. Call inside a transaction."""
        if self.conn.execute("SELECT COUNT(*) FROM stop_set").fetchone()[0]:
            raise ProjectError("the project already has a stop set; it never changes")
        self.conn.executemany("INSERT INTO stop_set(sample_id) VALUES (?)",
                              ((int(s),) for s in sample_ids))
        self.set_meta("stop_set", json.dumps(info))

    def save_stop_predictions(self, round_: int, predicted: bytes, known: bytes, n: int,
                              classes: int, stability: dict[str, Any] | None) -> None:
        """Store (or replace, for a retrained round) a round's packed stop-set predictions,
        the packed mask of stop-set images that were not unlabeled pool images when it was
        trained, and its agreement with the previous round. Call inside a transaction."""
        self.conn.execute(
            "INSERT OR REPLACE INTO stop_predictions(round, n, classes, predicted, known, "
            "stability) VALUES (?, ?, ?, ?, ?, ?)",
            (round_, n, classes, predicted, known,
             json.dumps(stability) if stability is not None else None))

    def stop_predictions_before(self, round_: int) -> tuple[int, int, int, bytes, bytes] | None:
        """(round, n, classes, predicted, known) of the latest round before ``round_`` that
        has stop-set predictions, or None."""
        if not self.has_table("stop_predictions"):
            return None
        return self.conn.execute(
            "SELECT round, n, classes, predicted, known FROM stop_predictions WHERE round < ? "
            "ORDER BY round DESC LIMIT 1", (round_,)).fetchone()

    def stabilities(self) -> dict[int, dict[str, Any] | None]:
        """round -> its stored agreement with the previous round (None: nothing to compare
        with), for the rounds whose stop-set predictions are stored."""
        if not self.has_table("stop_predictions"):
            return {}
        rows = self.conn.execute("SELECT round, stability FROM stop_predictions ORDER BY round")
        return {r: _json_or_none(text) for r, text in rows}


def _connect(path: Path, uri: str | None = None) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves so transactions are explicit.
    conn = sqlite3.connect(uri or str(path), uri=uri is not None, isolation_level=None,
                           timeout=30.0)
    if uri is None:
        # WAL lets read-only commands (status) read while a writer works.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


# Tables and indexes added after schema 1 shipped. Each only adds (no data changes meaning)
# and older alft versions read a store that has it, so adding one is not a schema change:
# projects written before get it the first time a writing command opens them. Read-only
# opens do without: readers treat a missing table as empty.
_LATER_SCHEMA = (
    # mark_labeled looks queries up by sample: without it each answer scanned every pending
    # query, and importing n answers took time quadratic in n (issue 17).
    "CREATE INDEX IF NOT EXISTS queries_sample ON queries(sample_id, state)",
    # Answers routed to the validation split (import-labels --val-from-answers): their label
    # is in `gold` (so they are evaluated on, never trained on nor queried); this says which
    # gold labels are people's answers, from which round and import.
    """CREATE TABLE IF NOT EXISTS val_answers (
        sample_id INTEGER PRIMARY KEY REFERENCES samples(id),
        round INTEGER NOT NULL,
        import_id INTEGER REFERENCES imports(id)
    )""",
    # The stop set (alft_cli.stopping): fixed pool images drawn at the first fine-tuning.
    """CREATE TABLE IF NOT EXISTS stop_set (
        sample_id INTEGER PRIMARY KEY REFERENCES samples(id)
    )""",
    # Each trained round's predictions on the stop set and its agreement with the previous.
    """CREATE TABLE IF NOT EXISTS stop_predictions (
        round INTEGER PRIMARY KEY REFERENCES rounds(round),
        n INTEGER NOT NULL,                -- stop-set images (rows), in sample id order
        classes INTEGER NOT NULL,
        predicted BLOB NOT NULL,           -- packed bits of the (n, classes) predictions >= 0.5
        known BLOB NOT NULL,               -- packed bits of (n,): labeled or out of the pool
        stability TEXT                     -- JSON agreement with the previous round (or NULL)
    )""",
    # The default strategy's evidence per query (alft_cli.auto.combine): this round's
    # probability that MGE+Clustering's labels helped more (NULL: too few labels to judge)
    # and the share the accumulated evidence gave its batch.
    """CREATE TABLE IF NOT EXISTS auto_decisions (
        round INTEGER PRIMARY KEY REFERENCES rounds(round),
        p REAL,
        share REAL NOT NULL
    )""",
)


def _add_missing_indexes(conn: sqlite3.Connection) -> None:
    for statement in _LATER_SCHEMA:
        conn.execute(statement)


def _ids_and_matrix(rows: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.uint8)
    return ids, np.stack([decode_y(r[1]) for r in rows]).astype(np.uint8)


def _json_or_none(text: str | None) -> Any:
    return json.loads(text) if text else None
