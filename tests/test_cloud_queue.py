"""The annotation queue's contract, run against both backends (a SQLite file in WAL mode
and a real PostgreSQL database): transitions are compare-and-set, survive reopening,
repeated deliveries change nothing, claims are exclusive leases that expire, locks are
shared by every user of the queue and die with their holder, and the schema is versioned."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from sedna_sam.cloud import queue as q
from sedna_sam.cloud import queue_sqlite, queue_store
from sedna_sam.cloud.samples import (
    ALL_STATES,
    FAILED,
    IN_LABEL_STUDIO,
    INGESTED,
    LABELLED,
    PRE_ANNOTATED,
    RECEIVED,
)
from sedna_sam.errors import SednaSamError


@pytest.fixture
def queue(any_queue_url):
    opened = q.open_queue(any_queue_url)
    yield opened
    opened.close()


def backend(queue) -> str:
    return q.url_scheme(queue.url)


def test_file_is_sqlite_in_wal_mode(tmp_path):
    queue = q.open_queue(f"sqlite:///{tmp_path}/state/queue.sqlite")
    queue.receive("a", node="n1", source="store/flagged/n1/a.json", meta={"score": 0.9})
    mode = sqlite3.connect(tmp_path / "state" / "queue.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_happy_path_and_reopen(queue):
    assert queue.receive("a", node="n1", meta={"score": 0.9})
    assert not queue.receive("a", node="n1")  # second delivery: nothing new
    assert queue.advance("a", RECEIVED, PRE_ANNOTATED, image_path="/d/raw_data/a.png")
    assert not queue.advance("a", RECEIVED, PRE_ANNOTATED)  # already done: no-op
    assert queue.set_task("a", 41)
    assert not queue.set_task("a", 42)  # a second, different task id is refused
    assert queue.advance("a", PRE_ANNOTATED, IN_LABEL_STUDIO)
    queue.close()

    again = q.open_queue(queue.url)
    s = again.get("a")
    assert (s.state, s.ls_task_id, s.image_path, s.meta) == (
        IN_LABEL_STUDIO,
        41,
        "/d/raw_data/a.png",
        {"score": 0.9},
    )
    assert again.by_task(41).sample_id == "a"
    assert again.counts() == {**dict.fromkeys(ALL_STATES, 0), IN_LABEL_STUDIO: 1}
    assert again.known_ids() == {"a"} and [x.sample_id for x in again.in_state(IN_LABEL_STUDIO)] == ["a"]
    again.close()


def test_labelled_is_idempotent_and_updates_reopen_ingested(queue):
    queue.receive("a")
    queue.advance("a", RECEIVED, PRE_ANNOTATED)
    queue.set_task("a", 7)
    queue.advance("a", PRE_ANNOTATED, IN_LABEL_STUDIO)
    assert queue.mark_labelled(999, 1, "t1") == "unknown-task"
    assert queue.mark_labelled(7, 1, "t1") == LABELLED
    assert queue.mark_labelled(7, 1, "t1") == "unchanged"  # the same webhook twice
    # Ingest only if the annotation is still the version the work was done for.
    assert not queue.advance("a", LABELLED, INGESTED, expect={"annotation_at": "t0"})
    assert queue.advance("a", LABELLED, INGESTED, expect={"annotation_at": "t1"}, ingested_annotation_at="t1")
    assert queue.mark_labelled(7, 1, "t1") == "unchanged"
    assert queue.mark_labelled(7, 1, "t2") == LABELLED  # the person corrected it again
    s = queue.get("a")
    assert (s.state, s.annotation_at, s.ingested_annotation_at) == (LABELLED, "t2", "t1")
    # A condition on a column that is NULL matches NULL (null-safe equality on both backends).
    queue.receive("b")
    assert queue.advance("b", RECEIVED, PRE_ANNOTATED, expect={"annotation_at": None, "ls_task_id": None})


def test_failures_back_off_then_fail_and_retry(queue):
    queue.receive("a")
    s = queue.record_failure("a", RECEIVED, "boom 1", max_attempts=3, backoff_s=100)
    assert (s.state, s.attempts, s.last_error) == (RECEIVED, 1, "boom 1")
    assert queue.claim(RECEIVED) == []  # backing off
    assert [x.sample_id for x in queue.claim(RECEIVED, now=s.next_attempt_at + 1)] == ["a"]
    queue.record_failure("a", RECEIVED, "boom 2", max_attempts=3)
    s = queue.record_failure("a", RECEIVED, "boom 3\x00", max_attempts=3)  # a NUL is dropped, not fatal
    assert (s.state, s.failed_from, s.attempts) == (FAILED, RECEIVED, 3)
    assert [e.last_error for e in queue.last_errors()] == ["boom 3"]
    assert queue.record_failure("a", RECEIVED, "late", max_attempts=3) is None  # not in that state
    assert queue.retry() == 1
    s = queue.get("a")
    assert (s.state, s.attempts) == (RECEIVED, 0)
    assert queue.advance("a", RECEIVED, PRE_ANNOTATED)
    assert queue.get("a").last_error is None


def test_concurrent_threads_move_a_sample_once(queue):
    queue.receive("a")
    wins = []

    def mover():
        wins.append(queue.advance("a", RECEIVED, PRE_ANNOTATED))

    threads = [threading.Thread(target=mover) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


# ----------------------------------------------------------------------------- leases


def test_claims_are_leases_that_expire_renew_and_end(queue):
    for sid in ("a", "b", "c"):
        queue.receive(sid)
    now = time.time()
    first = queue.claim(RECEIVED, 2, now=now, owner="r1", lease_s=60)
    assert [s.sample_id for s in first] == ["a", "b"]
    assert {(s.lease_owner, round(s.lease_until - now)) for s in first} == {("r1", 60)}
    assert [s.sample_id for s in queue.claim(RECEIVED, 5, now=now, owner="r2", lease_s=60)] == ["c"]
    assert queue.claim(RECEIVED, 5, now=now, owner="r3") == []  # all leased
    assert queue.leases(now) == {"r1": 2, "r2": 1}

    # r1 still holds a: renewing returns the row as it is now; r2 cannot renew r1's sample.
    assert queue.renew("a", RECEIVED, "r1", lease_s=60).lease_owner == "r1"
    assert queue.renew("a", RECEIVED, "r2") is None
    assert queue.renew("a", PRE_ANNOTATED, "r1") is None  # not in that state

    # r1 dies; after its lease, r3 takes its samples and r1 (back) cannot renew them.
    later = time.time() + 61
    assert sorted(s.sample_id for s in queue.claim(RECEIVED, 5, now=later, owner="r3")) == ["a", "b", "c"]
    assert queue.renew("b", RECEIVED, "r1") is None

    # A transition ends the lease; so do release and a restart under the same id.
    assert queue.advance("a", RECEIVED, PRE_ANNOTATED)
    assert queue.get("a").lease_owner is None
    assert queue.release("b", "r3") and not queue.release("b", "r3")
    assert queue.release_all("r3") == 1  # c
    assert queue.leases(later) == {}


def test_a_new_annotation_keeps_the_ingesting_replicas_lease(queue):
    """A correction arriving while a replica ingests the older version: the sample waits
    for that replica (whose transition then fails on the version) instead of a second
    replica writing the same label file at the same time."""
    queue.receive("a")
    queue.advance("a", RECEIVED, PRE_ANNOTATED)
    queue.set_task("a", 5)
    queue.advance("a", PRE_ANNOTATED, IN_LABEL_STUDIO)
    queue.mark_labelled(5, 1, "t1")
    (claimed,) = queue.claim(LABELLED, owner="r1")
    assert queue.mark_labelled(5, 1, "t2") == LABELLED
    assert queue.claim(LABELLED, owner="r2") == []
    assert not queue.advance(
        "a",
        LABELLED,
        INGESTED,
        expect={"annotation_at": claimed.annotation_at},
        ingested_annotation_at="t1",
    )
    queue.release("a", "r1")
    (again,) = queue.claim(LABELLED, owner="r2")
    assert again.annotation_at == "t2"


def test_concurrent_claimers_take_disjoint_samples(queue):
    """8 consumers claiming batches at once: every sample is claimed exactly once."""
    n = 120
    for i in range(n):
        queue.receive(f"s{i:03d}")
    taken: dict[str, list[str]] = {}
    start = threading.Barrier(8)

    def consumer(name: str) -> None:
        mine: list[str] = []
        start.wait()
        while True:
            batch = queue.claim(RECEIVED, 4, owner=name)
            if not batch:
                break
            mine += [s.sample_id for s in batch]
        taken[name] = mine

    threads = [threading.Thread(target=consumer, args=(f"c{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [sid for mine in taken.values() for sid in mine]
    assert sorted(everything) == [f"s{i:03d}" for i in range(n)]  # all, none twice
    assert sum(queue.leases().values()) == n


def test_take_turn_lets_one_caller_through_per_interval(queue):
    now = time.time()
    assert queue.take_turn("poll", 10, now=now)
    assert not queue.take_turn("poll", 10, now=now + 5)
    assert queue.take_turn("other", 10, now=now + 5)  # turns are per name
    assert queue.take_turn("poll", 10, now=now + 11)


def test_begin_push_remembers_an_earlier_start(queue):
    queue.receive("a")
    assert queue.begin_push("a") is None
    assert queue.begin_push("a") is not None
    with pytest.raises(SednaSamError, match="not in the queue"):
        queue.begin_push("nope")


# ----------------------------------------------------------------------------- locks


def test_lock_is_exclusive_and_times_out(queue):
    inside, order = threading.Event(), []

    def holder():
        with queue.lock("index:/d/index.txt"):
            inside.set()
            time.sleep(0.5)
            order.append("holder out")

    t = threading.Thread(target=holder)
    t.start()
    assert inside.wait(10)
    with queue.lock("index:/d/index.txt", timeout_s=10):
        order.append("waiter in")
    t.join()
    assert order == ["holder out", "waiter in"]

    inside.clear()
    release = threading.Event()

    def long_holder():
        with queue.lock("push:a"):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=long_holder)
    t.start()
    assert inside.wait(10)
    with pytest.raises(SednaSamError, match="still held"):
        with queue.lock("push:a", timeout_s=0.3):
            pass
    release.set()
    t.join()


HOLD_LOCK = """
import sys, time
from sedna_sam.cloud.queue import open_queue
queue = open_queue(sys.argv[1])
with queue.lock("push:killed"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_lock_dies_with_its_killed_holder(queue):
    """kill -9 of a replica inside a lock (creating a task, appending to the index) frees
    the lock: PostgreSQL ends the session, the kernel drops the flock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, queue.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked", proc.stdout.read()
        with pytest.raises(SednaSamError, match="still held"):
            with queue.lock("push:killed", timeout_s=0.3):
                pass
        proc.kill()
        proc.wait(10)
        with queue.lock("push:killed", timeout_s=15):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()


# ----------------------------------------------------------------------------- schema and URLs


def test_schema_is_versioned_and_a_newer_one_is_refused(queue):
    latest = len(queue_sqlite.SQLITE_MIGRATIONS)
    assert queue.schema_version() == latest
    q.open_queue(queue.url).close()  # reopening migrates nothing
    assert queue.schema_version() == latest
    with queue._tx() as db:
        db.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (latest + 1, time.time())
        )
    with pytest.raises(SednaSamError, match=f"schema version {latest + 1}, newer than this sedna-sam"):
        q.open_queue(queue.url)


def test_a_queue_made_before_versioning_is_migrated(tmp_path):
    """A SQLite file of the single-replica releases (no schema_version, no lease columns)
    opens with its samples intact and gains the new columns."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(queue_sqlite.SQLITE_MIGRATIONS[0][0] + ";")
    db.execute(
        "INSERT INTO samples (sample_id, node, state, image_path, created_at, updated_at, ls_task_id) "
        "VALUES ('old', 'n1', 'in_label_studio', '/d/raw_data/old.png', 1, 2, 17)"
    )
    db.execute(  # may have been killed between creating its task and storing the id
        "INSERT INTO samples (sample_id, state, image_path, created_at, updated_at) "
        "VALUES ('mid-push', 'pre_annotated', '/d/raw_data/mid-push.png', 1, 3)"
    )
    db.commit()
    db.close()
    queue = q.open_queue(f"sqlite:///{path}")
    assert queue.schema_version() == len(queue_sqlite.SQLITE_MIGRATIONS)
    s = queue.get("old")
    assert (s.state, s.ls_task_id, s.lease_owner, s.lease_until) == (IN_LABEL_STUDIO, 17, None, 0.0)
    assert [x.sample_id for x in queue.claim(IN_LABEL_STUDIO, owner="r1")] == ["old"]
    assert queue.get("mid-push").push_started_at == 3  # its push looks for a task first
    assert queue.begin_push("mid-push") == 3


def test_a_postgresql_queue_at_version_1_is_migrated(pg_url):
    import psycopg

    from sedna_sam.cloud.queue_postgres import PG_MIGRATIONS

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at DOUBLE PRECISION)")
        for statement in PG_MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        conn.execute(
            "INSERT INTO samples (sample_id, state, image_path, created_at, updated_at) "
            "VALUES ('old', 'received', '', 1, 1)"
        )
    queue = q.open_queue(pg_url)
    assert queue.schema_version() == len(PG_MIGRATIONS) == len(queue_sqlite.SQLITE_MIGRATIONS)
    assert [s.sample_id for s in queue.claim(RECEIVED, owner="r1")] == ["old"]
    queue.close()


def test_replicas_starting_together_migrate_once(pg_url):
    errors, queues = [], []

    def start():
        try:
            queues.append(q.open_queue(pg_url))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(queues) == 6
    rows = queues[0]._read("SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, len(queue_sqlite.SQLITE_MIGRATIONS) + 1))
    for opened in queues:
        opened.close()


def test_database_urls(tmp_path):
    assert queue_sqlite.sqlite_path("sqlite:////abs/q.sqlite").as_posix() == "/abs/q.sqlite"
    assert queue_sqlite.sqlite_path("sqlite:///rel/q.sqlite").as_posix() == "rel/q.sqlite"
    assert q.url_scheme("postgresql+psycopg://u@db/x") == "postgresql" and q.url_scheme("/a/b") == "sqlite"
    assert queue_store.redact_url("postgresql://sam:s3cr%40t@db:5432/sedna?sslmode=require") == (
        "postgresql://sam:***@db:5432/sedna?sslmode=require"
    )
    assert queue_store.redact_url("postgresql://db/sedna?user=sam&password=s3cret") == (
        "postgresql://db/sedna?user=sam&password=***"
    )
    assert queue_store.redact_url("sqlite:////data/q.sqlite") == "sqlite:////data/q.sqlite"
    with pytest.raises(SednaSamError, match="unknown queue database"):
        q.open_queue("mysql://db/x")


def test_an_unreachable_database_is_named_without_its_password():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pytest.importorskip("psycopg")
    with pytest.raises(queue_store.QueueUnavailable) as caught:
        q.open_queue(f"postgresql://sam:hunter2secret@127.0.0.1:{port}/sedna")
    message = str(caught.value)
    assert "hunter2secret" not in message and f"postgresql://sam:***@127.0.0.1:{port}/sedna" in message
    assert isinstance(caught.value, ConnectionError)  # waited out like Label Studio being down
