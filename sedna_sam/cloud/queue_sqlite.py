"""The annotation queue over SQLite (one file, WAL): the embedded default, for the
replicas of one machine (in practice one). Registered as the ``sqlite`` backend of
:data:`~sedna_sam.cloud.queue.QUEUE_BACKENDS`; :func:`~sedna_sam.cloud.queue.open_queue`
opens it for ``sqlite:///path`` URLs and bare paths.

Claims are exclusive because SQLite serialises writers (``BEGIN IMMEDIATE``); the shared
lock is a POSIX record lock on a file beside the database, which the kernel drops when
its holder dies.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sedna_sam.cloud.queue import QUEUE_BACKENDS, Queue
from sedna_sam.cloud.queue_store import DEFAULT_LOCK_TIMEOUT_S, lock_key, migrate, redact_url
from sedna_sam.cloud.samples import COLUMNS, SELECT, Sample
from sedna_sam.errors import SednaSamError


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL (SQLAlchemy's
    spelling), or of a bare path."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    if "://" in url:
        raise SednaSamError(f"not a SQLite URL: {redact_url(url)!r} (use sqlite:///path/to/queue.sqlite)")
    return Path(url)


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

    def _claim(self, state: str, limit: int, now: float, owner: str, until: float) -> list[Sample]:
        with self._tx() as db:  # BEGIN IMMEDIATE: no other writer between the read and the lease
            rows = db.execute(
                f"{SELECT} WHERE state = ? AND next_attempt_at <= ? AND lease_until <= ? "
                "ORDER BY next_attempt_at, created_at, sample_id LIMIT ?",
                (state, now, now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE samples SET lease_owner = ?, lease_until = ? WHERE sample_id = ?",
                [(owner, until, r[0]) for r in rows],
            )
        owner_at, until_at = COLUMNS.index("lease_owner"), COLUMNS.index("lease_until")
        claimed = []
        for row in rows:
            row = list(row)
            row[owner_at], row[until_at] = owner, until
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
