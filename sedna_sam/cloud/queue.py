"""The annotation queue: one row per flagged sample and the state it has reached.

States, in order (``failed`` is off to the side)::

    received -> pre_annotated -> in_label_studio -> labelled -> ingested
         \\____________\\________________\\______________\\____> failed

- ``received``: the sample's JSON and image were read from the store, the image checked
  (size, sha256) and copied into the dataset's raw_data/.
- ``pre_annotated``: SSA JSON and the Label Studio task JSON exist under the dataset.
- ``in_label_studio``: the task exists in Label Studio; its id is stored here.
- ``labelled``: a person submitted (or updated) an annotation; its id and time are stored.
- ``ingested``: TrainIds PNG written and the ``<image> <label>`` line is in the index.

Every transition is a compare-and-set (``UPDATE ... WHERE sample_id=? AND state=?``), so
running a step twice, or two workers racing, moves a sample at most once. The work a step
does before its transition is itself idempotent (atomic file writes, Label Studio tasks
found by image before one is created, deduplicated index lines), so a crash between the
work and the transition just repeats the work on restart: nothing lost, nothing doubled.

The store is chosen by a database URL. ``sqlite:///path`` (one file, WAL) is the embedded
default for one service replica. ``postgresql://`` is the seam for several replicas
(DESIGN.md section 8): claim with ``SELECT ... FOR UPDATE SKIP LOCKED`` in
:meth:`Queue.claim`; it is not built here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedna_sam.errors import SednaSamError
from sedna_sam.registry import Registry

RECEIVED = "received"
PRE_ANNOTATED = "pre_annotated"
IN_LABEL_STUDIO = "in_label_studio"
LABELLED = "labelled"
INGESTED = "ingested"
FAILED = "failed"

# The happy path, in order; ``failed`` is reachable from any state before ``ingested``.
STATES = (RECEIVED, PRE_ANNOTATED, IN_LABEL_STUDIO, LABELLED, INGESTED)
ALL_STATES = STATES + (FAILED,)

QUEUE_BACKENDS: Registry[Any] = Registry("queue database")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    sample_id      TEXT PRIMARY KEY,
    node           TEXT NOT NULL DEFAULT '',
    state          TEXT NOT NULL,
    image_path     TEXT NOT NULL,          -- the copy under the dataset's raw_data/
    source         TEXT NOT NULL DEFAULT '', -- the store JSON it came from
    meta           TEXT NOT NULL DEFAULT '{}', -- the shipper's metadata, as JSON
    ls_task_id     INTEGER,
    annotation_id  INTEGER,
    annotation_at  TEXT,                   -- the annotation's updated_at as Label Studio gave it
    ingested_annotation_at TEXT,           -- annotation_at of the version last ingested
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    failed_from    TEXT,                   -- the state a failed sample was in (for retry)
    next_attempt_at REAL NOT NULL DEFAULT 0,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_state ON samples (state, next_attempt_at);
CREATE UNIQUE INDEX IF NOT EXISTS samples_task ON samples (ls_task_id) WHERE ls_task_id IS NOT NULL;
"""

_COLUMNS = (
    "sample_id",
    "node",
    "state",
    "image_path",
    "source",
    "meta",
    "ls_task_id",
    "annotation_id",
    "annotation_at",
    "ingested_annotation_at",
    "attempts",
    "last_error",
    "failed_from",
    "next_attempt_at",
    "created_at",
    "updated_at",
)


@dataclass(frozen=True)
class Sample:
    """One queue row. ``meta`` is the shipper's JSON (score, scorer, node, frame_time, ...)."""

    sample_id: str
    node: str
    state: str
    image_path: str
    source: str
    meta: dict[str, Any]
    ls_task_id: int | None
    annotation_id: int | None
    annotation_at: str | None
    ingested_annotation_at: str | None
    attempts: int
    last_error: str | None
    failed_from: str | None
    next_attempt_at: float
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: tuple) -> Sample:
        values = dict(zip(_COLUMNS, row))
        values["meta"] = json.loads(values["meta"] or "{}")
        return cls(**values)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL (SQLAlchemy's
    spelling), or of a bare path."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    if "://" in url:
        raise SednaSamError(f"not a SQLite URL: {url!r} (use sqlite:///path/to/queue.sqlite)")
    return Path(url)


def open_queue(url: str) -> Queue:
    """Open (and create) the queue store named by a database URL."""
    scheme = url.split("://", 1)[0] if "://" in url else "sqlite"
    scheme = scheme.split("+", 1)[0]  # postgresql+psycopg -> postgresql
    return QUEUE_BACKENDS.create(scheme, url=url)


@QUEUE_BACKENDS.register("postgresql")
class _PostgresQueue:
    """Seam for several replicas sharing one queue (DESIGN.md section 8); not built here."""

    def __init__(self, url: str) -> None:
        raise SednaSamError(
            "a PostgreSQL queue is not built yet: run one replica with the SQLite default "
            "(sqlite:///path/queue.sqlite). To add it, implement Queue's methods over "
            "psycopg with the same SQL, claiming work with SELECT ... FOR UPDATE SKIP LOCKED."
        )


@QUEUE_BACKENDS.register("sqlite")
class Queue:
    """The queue over SQLite (one file, WAL). Safe to share across threads: each call
    opens its own short transaction; writes are serialised by SQLite's lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)  # executescript runs its own transaction

    # -- plumbing ---------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed transition survives power loss
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- reads ------------------------------------------------------------------------

    def get(self, sample_id: str) -> Sample | None:
        row = (
            self._conn()
            .execute(f"SELECT {', '.join(_COLUMNS)} FROM samples WHERE sample_id = ?", (sample_id,))
            .fetchone()
        )
        return Sample.from_row(row) if row else None

    def by_task(self, ls_task_id: int) -> Sample | None:
        row = (
            self._conn()
            .execute(f"SELECT {', '.join(_COLUMNS)} FROM samples WHERE ls_task_id = ?", (int(ls_task_id),))
            .fetchone()
        )
        return Sample.from_row(row) if row else None

    def known_ids(self) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT sample_id FROM samples")}

    def in_state(self, state: str, limit: int | None = None) -> list[Sample]:
        """Samples in ``state``, oldest first (regardless of retry back-off)."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM samples WHERE state = ? ORDER BY created_at, sample_id"
        params: tuple = (state,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (int(limit),)
        return [Sample.from_row(r) for r in self._conn().execute(sql, params)]

    def claim(self, state: str, limit: int = 16, now: float | None = None) -> list[Sample]:
        """Samples in ``state`` that are due (back-off elapsed), oldest first.

        With one replica nothing else takes work, so this is a plain read; a shared
        PostgreSQL queue would claim with ``FOR UPDATE SKIP LOCKED`` here.
        """
        now = time.time() if now is None else now
        rows = self._conn().execute(
            f"SELECT {', '.join(_COLUMNS)} FROM samples WHERE state = ? AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, created_at, sample_id LIMIT ?",
            (state, now, int(limit)),
        )
        return [Sample.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of samples per state; every state is present (0 when empty)."""
        counts = dict.fromkeys(ALL_STATES, 0)
        for state, n in self._conn().execute("SELECT state, COUNT(*) FROM samples GROUP BY state"):
            counts[state] = n
        return counts

    def all_samples(self) -> list[Sample]:
        """Every sample (for the status page's summary)."""
        rows = self._conn().execute(f"SELECT {', '.join(_COLUMNS)} FROM samples")
        return [Sample.from_row(r) for r in rows]

    def recent(self, limit: int = 20) -> list[Sample]:
        """The samples that changed last, newest first."""
        rows = self._conn().execute(
            f"SELECT {', '.join(_COLUMNS)} FROM samples ORDER BY updated_at DESC LIMIT ?", (int(limit),)
        )
        return [Sample.from_row(r) for r in rows]

    def last_errors(self, limit: int = 10) -> list[Sample]:
        rows = self._conn().execute(
            f"SELECT {', '.join(_COLUMNS)} FROM samples WHERE last_error IS NOT NULL "
            "ORDER BY updated_at DESC LIMIT ?",
            (int(limit),),
        )
        return [Sample.from_row(r) for r in rows]

    # -- transitions (each one idempotent) --------------------------------------------

    def receive(
        self,
        sample_id: str,
        *,
        image_path: str = "",
        node: str = "",
        source: str = "",
        meta: dict | None = None,
    ) -> bool:
        """Add a sample in state ``received``; False (and no change) if it is already known."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO samples (sample_id, node, state, image_path, source, meta, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sample_id, node, RECEIVED, str(image_path), source, json.dumps(meta or {}), now, now),
            )
            return cur.rowcount == 1

    def advance(
        self,
        sample_id: str,
        from_state: str,
        to_state: str,
        *,
        expect: dict[str, Any] | None = None,
        **fields: Any,
    ) -> bool:
        """Move ``sample_id`` from ``from_state`` to ``to_state`` and set ``fields``; clears
        attempts and error. ``expect`` adds conditions on columns (e.g. the annotation
        version the work was done for, so an update that arrived meanwhile is not lost).
        False (nothing changed) when the sample is not in ``from_state`` or a condition
        fails, e.g. because this transition already happened."""
        if to_state not in ALL_STATES:
            raise ValueError(f"unknown state {to_state!r}")
        settable = {
            "image_path",
            "meta",
            "ls_task_id",
            "annotation_id",
            "annotation_at",
            "ingested_annotation_at",
        }
        bad = (set(fields) - settable) | (set(expect or {}) - set(_COLUMNS))
        if bad:
            raise ValueError(f"cannot use {sorted(bad)} in a transition")
        if "meta" in fields:
            fields["meta"] = json.dumps(fields["meta"])
        sets = "".join(f", {k} = ?" for k in fields)
        conds = "".join(f" AND {k} IS ?" for k in (expect or {}))
        sql = (
            "UPDATE samples SET state = ?, attempts = 0, last_error = NULL, failed_from = NULL, "
            f"next_attempt_at = 0, updated_at = ?{sets} WHERE sample_id = ? AND state = ?{conds}"
        )
        params = (to_state, time.time(), *fields.values(), sample_id, from_state, *(expect or {}).values())
        with self._tx() as db:
            return db.execute(sql, params).rowcount == 1

    def set_task(self, sample_id: str, ls_task_id: int) -> bool:
        """Remember the Label Studio task before the state moves, so a restart finds it."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE samples SET ls_task_id = ?, updated_at = ? WHERE sample_id = ? "
                "AND (ls_task_id IS NULL OR ls_task_id = ?)",
                (int(ls_task_id), time.time(), sample_id, int(ls_task_id)),
            )
            return cur.rowcount == 1

    def mark_labelled(self, ls_task_id: int, annotation_id: int, annotation_at: str | None) -> str:
        """A person submitted or updated an annotation of task ``ls_task_id``.

        Returns what happened: ``"labelled"`` (the sample moves to labelled, or re-enters it
        because an ingested annotation changed), ``"unchanged"`` (this version is already
        known) or ``"unknown-task"`` (not one of ours). A sample found by its task id has its
        task in Label Studio whatever its state says (the id is stored before the state
        moves), so it may move to labelled from any state. Delivering the same webhook
        twice is harmless.
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT sample_id, state, annotation_id, annotation_at, ingested_annotation_at "
                "FROM samples WHERE ls_task_id = ?",
                (int(ls_task_id),),
            ).fetchone()
            if row is None:
                return "unknown-task"
            sample_id, state, known_id, known_at, ingested_at = row
            same = known_id == annotation_id and known_at == annotation_at
            if state == INGESTED and same and ingested_at == annotation_at:
                return "unchanged"
            if state == LABELLED and same:
                return "unchanged"
            db.execute(
                "UPDATE samples SET state = ?, annotation_id = ?, annotation_at = ?, attempts = 0, "
                "last_error = NULL, failed_from = NULL, next_attempt_at = 0, updated_at = ? "
                "WHERE sample_id = ?",
                (LABELLED, int(annotation_id), annotation_at, now, sample_id),
            )
            return LABELLED

    def record_failure(
        self,
        sample_id: str,
        state: str,
        error: str,
        *,
        max_attempts: int = 5,
        backoff_s: float = 10.0,
        max_backoff_s: float = 600.0,
        transient: bool = False,
    ) -> Sample | None:
        """Count a failed attempt at the step out of ``state``. The sample waits
        ``backoff_s * 2**(attempts-1)`` (capped) before the next try; after ``max_attempts``
        it moves to ``failed`` (``failed_from`` remembers ``state`` for :meth:`retry`).

        ``transient`` (e.g. Label Studio unreachable): the error is recorded and the sample
        waits ``max_backoff_s`` at most, but the attempt is not counted, so an outage
        never fails samples that are fine."""
        now = time.time()
        if transient:
            with self._tx() as db:
                db.execute(
                    "UPDATE samples SET last_error = ?, next_attempt_at = ?, updated_at = ? "
                    "WHERE sample_id = ? AND state = ?",
                    (error[:2000], now + min(backoff_s, max_backoff_s), now, sample_id, state),
                )
            return self.get(sample_id)
        with self._tx() as db:
            row = db.execute(
                "SELECT attempts FROM samples WHERE sample_id = ? AND state = ?", (sample_id, state)
            ).fetchone()
            if row is None:
                return None
            attempts = row[0] + 1
            if attempts >= max_attempts:
                db.execute(
                    "UPDATE samples SET state = ?, failed_from = ?, attempts = ?, last_error = ?, "
                    "updated_at = ? WHERE sample_id = ?",
                    (FAILED, state, attempts, error[:2000], now, sample_id),
                )
            else:
                delay = min(max_backoff_s, backoff_s * 2 ** (attempts - 1))
                db.execute(
                    "UPDATE samples SET attempts = ?, last_error = ?, next_attempt_at = ?, "
                    "updated_at = ? WHERE sample_id = ?",
                    (attempts, error[:2000], now + delay, now, sample_id),
                )
        return self.get(sample_id)

    def retry(self, sample_id: str | None = None) -> int:
        """Put failed samples (one, or all when ``sample_id`` is None) back into the state
        they failed in, attempts reset; returns how many."""
        sql = (
            "UPDATE samples SET state = failed_from, attempts = 0, next_attempt_at = 0, "
            "failed_from = NULL, updated_at = ? WHERE state = ? AND failed_from IS NOT NULL"
        )
        params: tuple = (time.time(), FAILED)
        if sample_id is not None:
            sql += " AND sample_id = ?"
            params += (sample_id,)
        with self._tx() as db:
            return db.execute(sql, params).rowcount
