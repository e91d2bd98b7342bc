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

Work is *claimed* with a lease (:meth:`Queue.claim`): the claiming replica's id and an
expiry go into the row, and no other replica claims it before the lease runs out or is
released. A replica killed mid-item therefore holds it only until its lease expires (or
until it restarts under the same replica id, when it releases what it held). Leases only
keep replicas from doing the same work twice; correctness never rests on them, since the
transitions are compare-and-set either way. :meth:`Queue.lock` is a lock shared by every
replica of the queue, for the two things a compare-and-set cannot guard: creating a
Label Studio task (an outside system) and rewriting the Sedna index file.

The store is chosen by a database URL, one backend per scheme in :data:`QUEUE_BACKENDS`:

- ``sqlite:///path`` (one file, WAL): the embedded default, for the replicas of one
  machine (in practice one). Leases and locks work across the processes of that machine.
- ``postgresql://user@host/db`` (:mod:`sedna_sam.cloud.queue_postgres`): any number of
  replicas on any machines; claims use ``SELECT ... FOR UPDATE SKIP LOCKED`` and locks
  are PostgreSQL advisory locks.

Both create and migrate their schema when opened; the version is kept in a
``schema_version`` table, so a replica of an older release refuses a newer schema
instead of writing into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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

DEFAULT_LEASE_S = 120.0  # longer than one item takes in any stage, short enough to wait out a dead replica
DEFAULT_LOCK_TIMEOUT_S = 60.0

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
    "lease_owner",
    "lease_until",
    "push_started_at",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM samples"

# Columns a transition may set, and clearing a lease (a transition ends the claim).
_SETTABLE = frozenset(
    {"image_path", "meta", "ls_task_id", "annotation_id", "annotation_at", "ingested_annotation_at"}
)
_UNLEASE = "lease_owner = NULL, lease_until = 0"


@dataclass(frozen=True)
class Sample:
    """One queue row. ``meta`` is the shipper's JSON (score, scorer, node, frame_time, ...).

    ``lease_owner``/``lease_until``: the replica working on it and until when (epoch
    seconds; 0 = nobody). ``push_started_at``: when a replica last started creating its
    Label Studio task (None: never), so a later push knows to look for a task first.
    """

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
    lease_owner: str | None = None
    lease_until: float = 0.0
    push_started_at: float | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Sample:
        values = dict(zip(_COLUMNS, row))
        values["meta"] = json.loads(values["meta"] or "{}")
        return cls(**values)


class QueueUnavailable(SednaSamError, ConnectionError):
    """The queue database cannot be reached (down, restarting, network): worth waiting
    out, like Label Studio being down; the message names the database without its password."""


def default_replica_id() -> str:
    """This replica's name in leases: ``$SEDNA_SAM_REPLICA_ID``, else the host name (a
    Kubernetes pod's name), so a container restarted in the same pod releases what it
    held at once. Two replicas on one host must be given different ids."""
    return os.environ.get("SEDNA_SAM_REPLICA_ID") or socket.gethostname()


# ----------------------------------------------------------------------------- URLs


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL (SQLAlchemy's
    spelling), or of a bare path."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    if "://" in url:
        raise SednaSamError(f"not a SQLite URL: {redact_url(url)!r} (use sqlite:///path/to/queue.sqlite)")
    return Path(url)


def url_scheme(url: str) -> str:
    """The backend name of a queue URL: ``postgresql+psycopg://`` -> ``postgresql``; a bare
    path is SQLite."""
    scheme = url.split("://", 1)[0] if "://" in url else "sqlite"
    return scheme.split("+", 1)[0].lower()


def redact_url(url: str) -> str:
    """``url`` safe to log or print: its password (in the user part or a ``password=``
    query parameter) replaced by ``***``. The queue URL usually comes from a Secret."""
    url = _URL_PASSWORD.sub(r"\1***\2", url, count=1)
    return _QUERY_PASSWORD.sub(r"\1***", url)


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:)[^/?#]*(@)")  # up to the last @
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def open_queue(url: str) -> Queue:
    """Open (and create or migrate) the queue store named by a database URL."""
    # The PostgreSQL backend registers itself ("postgresql", "postgres") when imported, here
    # rather than at the end of this module (no import cycle); psycopg itself is imported
    # only when such a queue is opened.
    from sedna_sam.cloud import queue_postgres  # noqa: F401

    return QUEUE_BACKENDS.create(url_scheme(url), url=url)


# ----------------------------------------------------------------------------- the interface


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """One open transaction: ``execute`` takes SQL with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


class Queue(ABC):
    """The queue the service works from, whatever database holds it.

    The SQL shared by the backends lives here, written with ``?`` placeholders and the
    few dialect differences as class attributes; a backend supplies connections and
    transactions (:meth:`_tx`, :meth:`_read`), its schema migrations, :meth:`claim` and
    :meth:`lock`. Safe to share across threads (the webhook handlers and the worker loop).
    """

    url: str
    _is = "IS"  # null-safe equality
    _for_update = ""  # row lock clause of a SELECT inside a transaction

    # -- what a backend supplies ------------------------------------------------------

    @abstractmethod
    def _tx(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction, committed when the block ends, rolled back on an error."""

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of one read-only statement, outside any transaction."""

    @abstractmethod
    def claim(
        self,
        state: str,
        limit: int = 16,
        now: float | None = None,
        *,
        owner: str = "",
        lease_s: float = DEFAULT_LEASE_S,
    ) -> list[Sample]:
        """Samples in ``state`` that are due (back-off elapsed) and not leased to anyone,
        oldest first, now leased to ``owner`` until ``now + lease_s``. Two replicas
        claiming at once never get the same sample."""

    @abstractmethod
    def lock(self, name: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> contextlib.AbstractContextManager:
        """An exclusive lock named ``name``, shared by every replica using this queue,
        held for the ``with`` block and released if the holder dies. Raises
        :class:`SednaSamError` after ``timeout_s`` of waiting."""

    @abstractmethod
    def close(self) -> None:
        """Close this thread's (SQLite) or every (PostgreSQL) connection."""

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs."""
        return redact_url(self.url)

    # -- reads ------------------------------------------------------------------------

    def get(self, sample_id: str) -> Sample | None:
        rows = self._read(f"{_SELECT} WHERE sample_id = ?", (sample_id,))
        return Sample.from_row(rows[0]) if rows else None

    def by_task(self, ls_task_id: int) -> Sample | None:
        rows = self._read(f"{_SELECT} WHERE ls_task_id = ?", (int(ls_task_id),))
        return Sample.from_row(rows[0]) if rows else None

    def known_ids(self) -> set[str]:
        return {r[0] for r in self._read("SELECT sample_id FROM samples")}

    def in_state(self, state: str, limit: int | None = None) -> list[Sample]:
        """Samples in ``state``, oldest first (regardless of retry back-off and leases)."""
        sql = f"{_SELECT} WHERE state = ? ORDER BY created_at, sample_id"
        params: tuple = (state,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (int(limit),)
        return [Sample.from_row(r) for r in self._read(sql, params)]

    def counts(self) -> dict[str, int]:
        """Number of samples per state; every state is present (0 when empty)."""
        counts = dict.fromkeys(ALL_STATES, 0)
        for state, n in self._read("SELECT state, COUNT(*) FROM samples GROUP BY state"):
            counts[state] = int(n)
        return counts

    def all_samples(self) -> list[Sample]:
        """Every sample (for the status page's summary)."""
        return [Sample.from_row(r) for r in self._read(_SELECT)]

    def recent(self, limit: int = 20) -> list[Sample]:
        """The samples that changed last, newest first."""
        rows = self._read(f"{_SELECT} ORDER BY updated_at DESC LIMIT ?", (int(limit),))
        return [Sample.from_row(r) for r in rows]

    def last_errors(self, limit: int = 10) -> list[Sample]:
        rows = self._read(
            f"{_SELECT} WHERE last_error IS NOT NULL ORDER BY updated_at DESC LIMIT ?", (int(limit),)
        )
        return [Sample.from_row(r) for r in rows]

    def leases(self, now: float | None = None) -> dict[str, int]:
        """Samples each replica holds now (unexpired leases), for ``cloud status``."""
        now = time.time() if now is None else now
        rows = self._read(
            "SELECT lease_owner, COUNT(*) FROM samples WHERE lease_owner IS NOT NULL AND lease_until > ? "
            "GROUP BY lease_owner ORDER BY lease_owner",
            (now,),
        )
        return {owner: int(n) for owner, n in rows}

    # -- leases -----------------------------------------------------------------------

    def renew(
        self, sample_id: str, state: str, owner: str, lease_s: float = DEFAULT_LEASE_S
    ) -> Sample | None:
        """Extend ``owner``'s lease on ``sample_id`` (still in ``state``) and return the row
        as it is now; None when the lease was lost (it ran out and another replica claimed
        the sample) or the sample moved on. Called before each item of a claimed batch."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE samples SET lease_until = ? WHERE sample_id = ? AND state = ? AND lease_owner = ?",
                (now + lease_s, sample_id, state, owner),
            )
            if cur.rowcount != 1:
                return None
            row = db.execute(f"{_SELECT} WHERE sample_id = ?", (sample_id,)).fetchone()
        return Sample.from_row(row)

    def defer(self, sample_id: str, state: str, until: float) -> bool:
        """Leave ``sample_id`` (in ``state``) alone until ``until``: no attempt counted, no
        error recorded, lease ended. For waiting on something outside, not a failure."""
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE samples SET next_attempt_at = ?, {_UNLEASE} WHERE sample_id = ? AND state = ?",
                (until, sample_id, state),
            )
            return cur.rowcount == 1

    def release(self, sample_id: str, owner: str) -> bool:
        """End ``owner``'s lease on ``sample_id`` (work done, or given up)."""
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE samples SET {_UNLEASE} WHERE sample_id = ? AND lease_owner = ?", (sample_id, owner)
            )
            return cur.rowcount == 1

    def release_all(self, owner: str) -> int:
        """End every lease ``owner`` holds: a replica starting again under the same id did
        not finish what it held before. Returns how many."""
        with self._tx() as db:
            return db.execute(f"UPDATE samples SET {_UNLEASE} WHERE lease_owner = ?", (owner,)).rowcount

    def take_turn(self, name: str, interval_s: float, now: float | None = None) -> bool:
        """True for exactly one caller, across replicas, per ``interval_s`` (e.g. polling
        Label Studio: one replica polls per interval, not every replica)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("INSERT INTO ticks (name, at) VALUES (?, 0) ON CONFLICT (name) DO NOTHING", (name,))
            cur = db.execute(
                "UPDATE ticks SET at = ? WHERE name = ? AND at <= ?", (now, name, now - interval_s)
            )
            return cur.rowcount == 1

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
                "INSERT INTO samples (sample_id, node, state, image_path, source, meta, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sample_id) DO NOTHING",
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
        attempts, error and lease. ``expect`` adds conditions on columns (e.g. the
        annotation version the work was done for, so an update that arrived meanwhile is
        not lost). False (nothing changed) when the sample is not in ``from_state`` or a
        condition fails, e.g. because this transition already happened."""
        if to_state not in ALL_STATES:
            raise ValueError(f"unknown state {to_state!r}")
        bad = (set(fields) - _SETTABLE) | (set(expect or {}) - set(_COLUMNS))
        if bad:
            raise ValueError(f"cannot use {sorted(bad)} in a transition")
        if "meta" in fields:
            fields["meta"] = json.dumps(fields["meta"])
        sets = "".join(f", {k} = ?" for k in fields)
        conds = "".join(f" AND {k} {self._is} ?" for k in (expect or {}))
        sql = (
            f"UPDATE samples SET state = ?, attempts = 0, last_error = NULL, failed_from = NULL, {_UNLEASE}, "
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

    def begin_push(self, sample_id: str) -> float | None:
        """Record that a Label Studio task is about to be created for ``sample_id``;
        returns when a push was started before (None: never). Called under
        ``lock("push:<id>")``: a push that finds an earlier start must look for the task
        that start may have created (the replica may have died before storing its id)."""
        with self._tx() as db:
            row = db.execute(
                f"SELECT push_started_at FROM samples WHERE sample_id = ?{self._for_update}", (sample_id,)
            ).fetchone()
            if row is None:
                raise SednaSamError(f"sample {sample_id} is not in the queue")
            db.execute("UPDATE samples SET push_started_at = ? WHERE sample_id = ?", (time.time(), sample_id))
        return row[0]

    def mark_labelled(self, ls_task_id: int, annotation_id: int, annotation_at: str | None) -> str:
        """A person submitted or updated an annotation of task ``ls_task_id``.

        Returns what happened: ``"labelled"`` (the sample moves to labelled, or re-enters it
        because an ingested annotation changed), ``"unchanged"`` (this version is already
        known) or ``"unknown-task"`` (not one of ours). A sample found by its task id has its
        task in Label Studio whatever its state says (the id is stored before the state
        moves), so it may move to labelled from any state. Delivering the same webhook
        twice is harmless. A lease is kept: a replica ingesting the older version finishes
        (its transition then fails on the version) before another one takes the newer.
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT sample_id, state, annotation_id, annotation_at, ingested_annotation_at "
                f"FROM samples WHERE ls_task_id = ?{self._for_update}",
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
        The lease ends either way, so any replica may take the next try.

        ``transient`` (e.g. Label Studio unreachable): the error is recorded and the sample
        waits ``max_backoff_s`` at most, but the attempt is not counted, so an outage
        never fails samples that are fine."""
        now = time.time()
        error = error.replace("\x00", "")[:2000]  # PostgreSQL's text holds no NUL
        if transient:
            with self._tx() as db:
                db.execute(
                    f"UPDATE samples SET last_error = ?, next_attempt_at = ?, updated_at = ?, {_UNLEASE} "
                    "WHERE sample_id = ? AND state = ?",
                    (error, now + min(backoff_s, max_backoff_s), now, sample_id, state),
                )
            return self.get(sample_id)
        with self._tx() as db:
            row = db.execute(
                f"SELECT attempts FROM samples WHERE sample_id = ? AND state = ?{self._for_update}",
                (sample_id, state),
            ).fetchone()
            if row is None:
                return None
            attempts = row[0] + 1
            if attempts >= max_attempts:
                db.execute(
                    "UPDATE samples SET state = ?, failed_from = ?, attempts = ?, last_error = ?, "
                    f"updated_at = ?, {_UNLEASE} WHERE sample_id = ?",
                    (FAILED, state, attempts, error, now, sample_id),
                )
            else:
                delay = min(max_backoff_s, backoff_s * 2 ** (attempts - 1))
                db.execute(
                    "UPDATE samples SET attempts = ?, last_error = ?, next_attempt_at = ?, "
                    f"updated_at = ?, {_UNLEASE} WHERE sample_id = ?",
                    (attempts, error, now + delay, now, sample_id),
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

    # -- schema -----------------------------------------------------------------------

    def schema_version(self) -> int:
        rows = self._read("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0] or 0)


def lock_key(name: str) -> int:
    """A stable signed 64-bit number for a lock name (PostgreSQL advisory locks take one)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


def migrate(db: Tx, migrations: Sequence[Sequence[str]], current: int, where: str) -> int:
    """Apply ``migrations[current:]`` (migration ``i`` brings the schema to version
    ``i + 1``) inside the caller's transaction, recording each version; returns the
    version reached. A schema newer than this code knows is refused: an older replica
    must not write rows a newer one reads differently."""
    latest = len(migrations)
    if current > latest:
        raise SednaSamError(
            f"the queue at {where} has schema version {current}, newer than this sedna-sam knows "
            f"({latest}): upgrade sedna-sam on this replica (every replica must run the same release)"
        )
    for version in range(current + 1, latest + 1):
        for statement in migrations[version - 1]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time()))
    return latest


# ----------------------------------------------------------------------------- SQLite

# Version 1 is the schema of the releases before versioning (a file without a
# schema_version table but with samples is at version 1).
SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS samples (
            sample_id      TEXT PRIMARY KEY,
            node           TEXT NOT NULL DEFAULT '',
            state          TEXT NOT NULL,
            image_path     TEXT NOT NULL,            -- the copy under the dataset's raw_data/
            source         TEXT NOT NULL DEFAULT '', -- the store JSON it came from
            meta           TEXT NOT NULL DEFAULT '{}', -- the shipper's metadata, as JSON
            ls_task_id     INTEGER,
            annotation_id  INTEGER,
            annotation_at  TEXT,                     -- the annotation's updated_at as Label Studio gave it
            ingested_annotation_at TEXT,             -- annotation_at of the version last ingested
            attempts       INTEGER NOT NULL DEFAULT 0,
            last_error     TEXT,
            failed_from    TEXT,                     -- the state a failed sample was in (for retry)
            next_attempt_at REAL NOT NULL DEFAULT 0,
            created_at     REAL NOT NULL,
            updated_at     REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS samples_state ON samples (state, next_attempt_at)",
        "CREATE UNIQUE INDEX IF NOT EXISTS samples_task ON samples (ls_task_id) WHERE ls_task_id IS NOT NULL",
    ),
    (
        "ALTER TABLE samples ADD COLUMN lease_owner TEXT",
        "ALTER TABLE samples ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
        "ALTER TABLE samples ADD COLUMN push_started_at REAL",
        # Releases before this one kept no record of a push in progress: a sample that may
        # be mid-push looks for its task first.
        "UPDATE samples SET push_started_at = updated_at "
        "WHERE ls_task_id IS NULL AND (state = 'pre_annotated' OR failed_from = 'pre_annotated')",
        "CREATE TABLE IF NOT EXISTS ticks (name TEXT PRIMARY KEY, at REAL NOT NULL)",
    ),
)


@QUEUE_BACKENDS.register("sqlite")
class SqliteQueue(Queue):
    """The queue over SQLite (one file, WAL). Safe to share across threads: each thread
    has its own connection and each call its own short transaction; writes are
    serialised by SQLite's lock, which also makes :meth:`claim` exclusive."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at REAL)"
            )
            current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            if current is None:  # a file made before versioning has samples at version 1
                legacy = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'samples'")
                current = 1 if legacy.fetchone() else 0
                if current:
                    db.execute(
                        "INSERT INTO schema_version (version, applied_at) VALUES (1, ?)", (time.time(),)
                    )
            migrate(db, SQLITE_MIGRATIONS, int(current), str(self.path))

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

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._conn().execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- claims and locks -------------------------------------------------------------

    def claim(
        self,
        state: str,
        limit: int = 16,
        now: float | None = None,
        *,
        owner: str = "",
        lease_s: float = DEFAULT_LEASE_S,
    ) -> list[Sample]:
        now = time.time() if now is None else now
        with self._tx() as db:  # BEGIN IMMEDIATE: no other writer between the read and the lease
            rows = db.execute(
                f"{_SELECT} WHERE state = ? AND next_attempt_at <= ? AND lease_until <= ? "
                "ORDER BY next_attempt_at, created_at, sample_id LIMIT ?",
                (state, now, now, int(limit)),
            ).fetchall()
            db.executemany(
                "UPDATE samples SET lease_owner = ?, lease_until = ? WHERE sample_id = ?",
                [(owner, now + lease_s, r[0]) for r in rows],
            )
        owner_at, until_at = _COLUMNS.index("lease_owner"), _COLUMNS.index("lease_until")
        claimed = []
        for row in rows:
            row = list(row)
            row[owner_at], row[until_at] = owner, now + lease_s
            claimed.append(Sample.from_row(row))
        return claimed

    @contextmanager
    def lock(self, name: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
        """A POSIX record lock on one byte of ``<database>.locks`` (its offset: the name's
        hash), which excludes the other processes of this machine (the only ones a SQLite
        file serves) and is dropped by the kernel when the holder dies; plus an in-process
        lock per name, since record locks do not exclude threads of one process."""
        deadline = time.monotonic() + timeout_s
        with _THREAD_LOCKS.hold(name, timeout_s, what=f"lock {name!r} of the queue {self.path}"):
            fd = _lock_file(self.path.with_name(self.path.name + ".locks"))
            offset = lock_key(name) & 0x3FFF_FFFF_FFFF_FFFF
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                    break
                except OSError:  # EAGAIN / EACCES: another process holds it
                    if time.monotonic() > deadline:
                        raise SednaSamError(
                            f"lock {name!r} of the queue {self.path} still held after {timeout_s:.0f} s"
                        ) from None
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)


class _NamedThreadLocks:
    """Exclusive locks by name among the threads of this process; an entry lives only
    while someone holds or waits for it (names are per sample: they must not pile up)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, list] = {}  # name -> [lock, users]

    @contextmanager
    def hold(self, name: str, timeout_s: float, what: str) -> Iterator[None]:
        with self._mutex:
            entry = self._locks.setdefault(name, [threading.Lock(), 0])
            entry[1] += 1
        try:
            if not entry[0].acquire(timeout=timeout_s):
                raise SednaSamError(f"{what} still held after {timeout_s:.0f} s")
            try:
                yield
            finally:
                entry[0].release()
        finally:
            with self._mutex:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[name]


_THREAD_LOCKS = _NamedThreadLocks()
_LOCK_FDS: dict[Path, int] = {}
_LOCK_FDS_MUTEX = threading.Lock()


def _lock_file(path: Path) -> int:
    """One descriptor per lock file per process, never closed: closing any descriptor of a
    file drops every POSIX lock the process holds on it, including other threads'."""
    key = path.resolve()
    with _LOCK_FDS_MUTEX:
        if key not in _LOCK_FDS:
            _LOCK_FDS[key] = os.open(key, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        return _LOCK_FDS[key]

