"""The annotation queue on PostgreSQL: any number of ``cloud serve`` replicas, on any
machines, share one queue (``--queue postgresql://user@host:5432/db``).

The state machine and its compare-and-set transitions are :class:`~sedna_sam.cloud.queue.Queue`'s,
the same SQL as SQLite's; what differs:

- :meth:`PostgresQueue._claim` leases due samples with ``SELECT ... FOR UPDATE SKIP
  LOCKED`` in one statement, so replicas claiming at once take disjoint samples and never
  wait on each other; a replica that dies holds its samples until the lease runs out.
- :meth:`PostgresQueue.lock` is a session-level advisory lock on a dedicated connection:
  PostgreSQL drops it when that session ends, so a replica killed while holding it
  blocks nobody.
- Rows touched inside a transaction are locked with ``SELECT ... FOR UPDATE``.
- Connections come from a small pool per process (the worker loop and the webhook
  handlers share it), opened with TCP keepalives so a vanished server is noticed.

The schema is created and migrated at open, under a transaction-level advisory lock, so
replicas starting together migrate once. Credentials: in the URL (from a Secret), or
libpq's own ``PGPASSWORD`` / ``PGPASSFILE`` with a URL that has none; the password never
reaches a log line or an error message (:func:`~sedna_sam.cloud.queue_store.redact_url`).

psycopg 3 is imported when a PostgreSQL queue is opened (``pip install 'sedna-sam[cloud]'``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

from sedna_sam.cloud.queue import QUEUE_BACKENDS, Queue
from sedna_sam.cloud.queue_store import DEFAULT_LOCK_TIMEOUT_S, QueueUnavailable, lock_key, migrate
from sedna_sam.cloud.samples import COLUMNS, Sample
from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)

POOL_SIZE = 8  # connections per process: the worker loop, lock holders, webhook bursts
POOL_WAIT_S = 60.0
_SCHEMA_LOCK = lock_key("sedna-sam queue schema")
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}

# Same versions as the SQLite migrations (sedna_sam.cloud.queue_sqlite.SQLITE_MIGRATIONS), in
# PostgreSQL's types: epoch seconds as double precision, Label Studio ids as bigint.
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS samples (
            sample_id      TEXT PRIMARY KEY,
            node           TEXT NOT NULL DEFAULT '',
            state          TEXT NOT NULL,
            image_path     TEXT NOT NULL,
            source         TEXT NOT NULL DEFAULT '',
            meta           TEXT NOT NULL DEFAULT '{}',
            ls_task_id     BIGINT,
            annotation_id  BIGINT,
            annotation_at  TEXT,
            ingested_annotation_at TEXT,
            attempts       INTEGER NOT NULL DEFAULT 0,
            last_error     TEXT,
            failed_from    TEXT,
            next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            created_at     DOUBLE PRECISION NOT NULL,
            updated_at     DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS samples_state ON samples (state, next_attempt_at)",
        "CREATE UNIQUE INDEX IF NOT EXISTS samples_task ON samples (ls_task_id) WHERE ls_task_id IS NOT NULL",
    ),
    (
        "ALTER TABLE samples ADD COLUMN lease_owner TEXT",
        "ALTER TABLE samples ADD COLUMN lease_until DOUBLE PRECISION NOT NULL DEFAULT 0",
        "ALTER TABLE samples ADD COLUMN push_started_at DOUBLE PRECISION",
        # Releases before this one kept no record of a push in progress: a sample that may
        # be mid-push looks for its task first.
        "UPDATE samples SET push_started_at = updated_at "
        "WHERE ls_task_id IS NULL AND (state = 'pre_annotated' OR failed_from = 'pre_annotated')",
        "CREATE INDEX IF NOT EXISTS samples_lease ON samples (lease_owner) WHERE lease_owner IS NOT NULL",
        "CREATE TABLE IF NOT EXISTS ticks (name TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL)",
    ),
)


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise SednaSamError(
            "a postgresql:// queue needs psycopg 3: pip install 'sedna-sam[cloud]' (or 'psycopg[binary]')"
        ) from None
    return psycopg


def _pg(sql: str) -> str:
    """The shared SQL's ``?`` placeholders in psycopg's spelling (the SQL has no ``%``)."""
    return sql.replace("?", "%s")


class _Tx:
    """A transaction's connection, taking SQL with ``?`` placeholders."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()):
        return self.conn.execute(_pg(sql), tuple(params))


class _Pool:
    """At most ``size`` connections, reused across threads; a broken or closed one is
    dropped and replaced on next use (a restarted server costs one failed call)."""

    def __init__(self, connect, size: int) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self.size = size

    @contextmanager
    def connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=POOL_WAIT_S):
            raise QueueUnavailable(f"all {self.size} queue connections busy for {POOL_WAIT_S:.0f} s")
        conn = None
        try:
            with self._lock:
                while self._idle and conn is None:
                    conn = self._idle.pop()
                    if conn.closed:
                        conn = None
            if conn is None:
                conn = self._connect()
            yield conn
        finally:
            if conn is not None:
                self._give_back(conn)
            self._slots.release()

    def _give_back(self, conn) -> None:
        from psycopg.pq import TransactionStatus

        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            with self._lock:
                self._idle.append(conn)
            return
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


@QUEUE_BACKENDS.register("postgres")
@QUEUE_BACKENDS.register("postgresql")
class PostgresQueue(Queue):
    """The queue in a PostgreSQL database shared by every replica (see the module doc)."""

    _is = "IS NOT DISTINCT FROM"
    _for_update = " FOR UPDATE"

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE, connect_timeout_s: int = 10) -> None:
        self.url = url
        self._psycopg = _psycopg()
        self._conninfo = (
            "postgresql://" + url.split("://", 1)[1]
        )  # postgresql+psycopg:// and postgres:// alike
        self._password = urlsplit(self._conninfo).password
        self._connect_timeout_s = connect_timeout_s
        self._pool = _Pool(self._connect, pool_size)
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))  # replicas starting together
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at DOUBLE PRECISION)"
            )
            current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            reached = migrate(db, PG_MIGRATIONS, int(current), self.display_url)
        if reached != current:
            log.info("queue %s: schema version %s -> %s", self.display_url, current, reached)

    # -- plumbing ---------------------------------------------------------------------

    def _scrub(self, message: str) -> str:
        """A driver message without the password, should it quote the connection string."""
        for secret in {self._password, unquote(self._password or "")} - {None, ""}:
            message = message.replace(secret, "***")
        return message.strip()

    def _connect(self):
        from psycopg.conninfo import conninfo_to_dict

        psycopg = self._psycopg
        try:
            given = conninfo_to_dict(self._conninfo)
        except psycopg.ProgrammingError as exc:
            raise SednaSamError(f"bad queue URL {self.display_url}: {self._scrub(str(exc))}") from None
        extra = {k: v for k, v in _KEEPALIVES.items() if k not in given}
        extra.setdefault("connect_timeout", str(self._connect_timeout_s))
        extra.setdefault("application_name", "sedna-sam cloud")
        try:
            return psycopg.connect(self._conninfo, autocommit=True, **{**extra, **given})
        except psycopg.OperationalError as exc:
            raise QueueUnavailable(
                f"cannot connect to the queue database {self.display_url}: {self._scrub(str(exc))}"
            ) from None

    def _unavailable(self, conn, exc: Exception) -> Exception:
        """A lost connection as :class:`QueueUnavailable` (a network failure: transient),
        any other database error unchanged."""
        if conn.closed or isinstance(exc, self._psycopg.errors.AdminShutdown):
            return QueueUnavailable(f"lost the queue database {self.display_url}: {self._scrub(str(exc))}")
        return exc

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        with self._pool.connection() as conn:
            try:
                with conn.transaction():
                    yield _Tx(conn)
            except self._psycopg.OperationalError as exc:
                raise self._unavailable(conn, exc) from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._pool.connection() as conn:
            try:
                return conn.execute(_pg(sql), tuple(params)).fetchall()
            except self._psycopg.OperationalError as exc:
                raise self._unavailable(conn, exc) from None

    def close(self) -> None:
        self._pool.close()

    # -- claims and locks -------------------------------------------------------------

    def _claim(self, state: str, limit: int, now: float, owner: str, until: float) -> list[Sample]:
        returning = ", ".join(f"samples.{c}" for c in COLUMNS)
        sql = (
            "WITH picked AS (SELECT sample_id FROM samples "
            "WHERE state = ? AND next_attempt_at <= ? AND lease_until <= ? "
            "ORDER BY next_attempt_at, created_at, sample_id LIMIT ? FOR UPDATE SKIP LOCKED) "
            "UPDATE samples SET lease_owner = ?, lease_until = ? FROM picked "
            f"WHERE samples.sample_id = picked.sample_id RETURNING {returning}"
        )
        with self._tx() as db:
            rows = db.execute(sql, (state, now, now, limit, owner, until)).fetchall()
        claimed = [Sample.from_row(r) for r in rows]
        claimed.sort(key=lambda s: (s.next_attempt_at, s.created_at, s.sample_id))
        return claimed

    @contextmanager
    def lock(self, name: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
        """A session advisory lock on a pooled connection kept for the block. Waiting is
        bounded by ``lock_timeout``; the session's end (a killed replica) releases it."""
        psycopg = self._psycopg
        key = lock_key(name)
        with self._pool.connection() as conn:
            try:
                conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            except psycopg.errors.LockNotAvailable:
                raise SednaSamError(
                    f"lock {name!r} of the queue {self.display_url} still held after {timeout_s:.0f} s"
                ) from None
            except psycopg.OperationalError as exc:
                raise self._unavailable(conn, exc) from None
            try:
                yield
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except Exception:  # noqa: BLE001 - session gone: the lock went with it
                    conn.close()
