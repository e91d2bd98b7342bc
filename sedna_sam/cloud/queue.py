"""The annotation queue's state machine: the transitions that move a flagged sample from
one state to the next (the states and the row: :mod:`sedna_sam.cloud.samples`).

Every transition is a compare-and-set (``UPDATE ... WHERE sample_id=? AND state=?``), so
running a step twice, or two workers racing, moves a sample at most once. The work a step
does before its transition is itself idempotent (atomic file writes, Label Studio tasks
found by image before one is created, deduplicated index lines), so a crash between the
work and the transition just repeats the work on restart: nothing lost, nothing doubled.

The reads, the leases that keep replicas apart and the lock they share are
:class:`~sedna_sam.cloud.queue_store.QueueStore`'s, which :class:`Queue` extends.

The store is chosen by a database URL, one backend per scheme in :data:`QUEUE_BACKENDS`:

- ``sqlite:///path`` (:mod:`sedna_sam.cloud.queue_sqlite`, one file, WAL): the embedded
  default, for the replicas of one machine (in practice one). Leases and locks work
  across the processes of that machine.
- ``postgresql://user@host/db`` (:mod:`sedna_sam.cloud.queue_postgres`): any number of
  replicas on any machines; claims use ``SELECT ... FOR UPDATE SKIP LOCKED`` and locks
  are PostgreSQL advisory locks.

Both create and migrate their schema when opened; the version is kept in a
``schema_version`` table, so a replica of an older release refuses a newer schema
instead of writing into it.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from sedna_sam.cloud.queue_store import QueueStore
from sedna_sam.cloud.samples import ALL_STATES, COLUMNS, FAILED, INGESTED, LABELLED, RECEIVED, UNLEASE, Sample
from sedna_sam.errors import SednaSamError
from sedna_sam.registry import Registry
from sedna_sam.sedna_compat import get_param

QUEUE_BACKENDS: Registry[Any] = Registry("queue database")

# Columns a transition may set.
_SETTABLE = frozenset(
    {"image_path", "meta", "ls_task_id", "annotation_id", "annotation_at", "ingested_annotation_at"}
)


def default_replica_id() -> str:
    """This replica's name in leases: ``$SEDNA_SAM_REPLICA_ID``, else the host name (a
    Kubernetes pod's name), so a container restarted in the same pod releases what it
    held at once. Two replicas on one host must be given different ids."""
    return get_param("SEDNA_SAM_REPLICA_ID") or socket.gethostname()


def url_scheme(url: str) -> str:
    """The backend name of a queue URL: ``postgresql+psycopg://`` -> ``postgresql``; a bare
    path is SQLite."""
    scheme = url.split("://", 1)[0] if "://" in url else "sqlite"
    return scheme.split("+", 1)[0].lower()


def open_queue(url: str) -> Queue:
    """Open (and create or migrate) the queue store named by a database URL."""
    # The backends register themselves ("sqlite"; "postgresql", "postgres") when imported,
    # here rather than at the end of this module (no import cycle); psycopg itself is
    # imported only when such a queue is opened.
    from sedna_sam.cloud import queue_postgres, queue_sqlite  # noqa: F401

    return QUEUE_BACKENDS.create(url_scheme(url), url=url)


class Queue(QueueStore):
    """The queue the service works from, whatever database holds it: the reads and leases
    of :class:`~sedna_sam.cloud.queue_store.QueueStore`, and the state machine: the
    transitions below, each a compare-and-set, the same SQL for every backend.
    """

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
        bad = (set(fields) - _SETTABLE) | (set(expect or {}) - set(COLUMNS))
        if bad:
            raise ValueError(f"cannot use {sorted(bad)} in a transition")
        if "meta" in fields:
            fields["meta"] = json.dumps(fields["meta"])
        sets = "".join(f", {k} = ?" for k in fields)
        conds = "".join(f" AND {k} {self._is} ?" for k in (expect or {}))
        sql = (
            f"UPDATE samples SET state = ?, attempts = 0, last_error = NULL, failed_from = NULL, {UNLEASE}, "
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

    def move_task(self, sample_id: str, from_task_id: int, to_task_id: int) -> bool:
        """The sample's Label Studio task becomes ``to_task_id`` if it is still
        ``from_task_id`` (a stray adopted: :mod:`sedna_sam.cloud.strays`); state unchanged."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE samples SET ls_task_id = ?, updated_at = ? WHERE sample_id = ? AND ls_task_id = ?",
                (int(to_task_id), time.time(), sample_id, int(from_task_id)),
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
                    f"UPDATE samples SET last_error = ?, next_attempt_at = ?, updated_at = ?, {UNLEASE} "
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
                    f"updated_at = ?, {UNLEASE} WHERE sample_id = ?",
                    (FAILED, state, attempts, error, now, sample_id),
                )
            else:
                delay = min(max_backoff_s, backoff_s * 2 ** (attempts - 1))
                db.execute(
                    "UPDATE samples SET attempts = ?, last_error = ?, next_attempt_at = ?, "
                    f"updated_at = ?, {UNLEASE} WHERE sample_id = ?",
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
