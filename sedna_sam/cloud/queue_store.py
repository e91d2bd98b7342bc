"""A queue database: what each backend supplies, the reads every caller uses, and the
leases that keep replicas from working on the same sample.

Work is *claimed* with a lease (:meth:`QueueStore.claim`): the claiming replica's id and
an expiry go into the row, and no other replica claims it before the lease runs out or
is released. A replica killed mid-item therefore holds it only until its lease expires
(or until it restarts under the same replica id, when it releases what it held). Leases
only keep replicas from doing the same work twice; correctness never rests on them,
since the transitions (:class:`sedna_sam.cloud.queue.Queue`) are compare-and-set either
way. :meth:`QueueStore.lock` is a lock shared by every replica of the queue, for the two
things a compare-and-set cannot guard: creating a Label Studio task (an outside system)
and rewriting the Sedna index file.

The SQL lives here and in :mod:`sedna_sam.cloud.queue`, written with ``?`` placeholders
and the few dialect differences as class attributes. Nothing here imports a database
driver (``cloud serve --help`` reads :data:`DEFAULT_LEASE_S`).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from sedna_sam.cloud.samples import ALL_STATES, SELECT, UNLEASE, Sample
from sedna_sam.errors import SednaSamError

DEFAULT_LEASE_S = 120.0  # longer than one item takes in any stage, short enough to wait out a dead replica
DEFAULT_LOCK_TIMEOUT_S = 60.0


class QueueUnavailable(SednaSamError, ConnectionError):
    """The queue database cannot be reached (down, restarting, network): worth waiting
    out, like Label Studio being down; the message names the database without its password."""


def redact_url(url: str) -> str:
    """``url`` safe to log or print: its password (in the user part or a ``password=``
    query parameter) replaced by ``***``. The queue URL usually comes from a Secret."""
    url = _URL_PASSWORD.sub(r"\1***\2", url, count=1)
    return _QUERY_PASSWORD.sub(r"\1***", url)


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:)[^/?#]*(@)")  # up to the last @
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


# ----------------------------------------------------------------------------- the interface


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """One open transaction: ``execute`` takes SQL with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


class QueueStore(ABC):
    """The queue's database, whatever it is: a backend supplies connections and
    transactions (:meth:`_tx`, :meth:`_read`), its schema migrations, :meth:`_claim` and
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
    def _claim(self, state: str, limit: int, now: float, owner: str, until: float) -> list[Sample]:
        """:meth:`claim` in this database: at most ``limit`` due, unleased samples in
        ``state``, leased to ``owner`` until ``until``, in claim order."""

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
        rows = self._read(f"{SELECT} WHERE sample_id = ?", (sample_id,))
        return Sample.from_row(rows[0]) if rows else None

    def by_task(self, ls_task_id: int) -> Sample | None:
        rows = self._read(f"{SELECT} WHERE ls_task_id = ?", (int(ls_task_id),))
        return Sample.from_row(rows[0]) if rows else None

    def known_ids(self) -> set[str]:
        return {r[0] for r in self._read("SELECT sample_id FROM samples")}

    def in_state(self, state: str, limit: int | None = None) -> list[Sample]:
        """Samples in ``state``, oldest first (regardless of retry back-off and leases)."""
        sql = f"{SELECT} WHERE state = ? ORDER BY created_at, sample_id"
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
        return [Sample.from_row(r) for r in self._read(SELECT)]

    def recent(self, limit: int = 20) -> list[Sample]:
        """The samples that changed last, newest first."""
        rows = self._read(f"{SELECT} ORDER BY updated_at DESC LIMIT ?", (int(limit),))
        return [Sample.from_row(r) for r in rows]

    def last_errors(self, limit: int = 10) -> list[Sample]:
        rows = self._read(
            f"{SELECT} WHERE last_error IS NOT NULL ORDER BY updated_at DESC LIMIT ?", (int(limit),)
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
        now = time.time() if now is None else now
        return self._claim(state, int(limit), now, owner, now + lease_s)

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
            row = db.execute(f"{SELECT} WHERE sample_id = ?", (sample_id,)).fetchone()
        return Sample.from_row(row)

    def defer(self, sample_id: str, state: str, until: float) -> bool:
        """Leave ``sample_id`` (in ``state``) alone until ``until``: no attempt counted, no
        error recorded, lease ended. For waiting on something outside, not a failure."""
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE samples SET next_attempt_at = ?, {UNLEASE} WHERE sample_id = ? AND state = ?",
                (until, sample_id, state),
            )
            return cur.rowcount == 1

    def release(self, sample_id: str, owner: str) -> bool:
        """End ``owner``'s lease on ``sample_id`` (work done, or given up)."""
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE samples SET {UNLEASE} WHERE sample_id = ? AND lease_owner = ?", (sample_id, owner)
            )
            return cur.rowcount == 1

    def release_all(self, owner: str) -> int:
        """End every lease ``owner`` holds: a replica starting again under the same id did
        not finish what it held before. Returns how many."""
        with self._tx() as db:
            return db.execute(f"UPDATE samples SET {UNLEASE} WHERE lease_owner = ?", (owner,)).rowcount

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
