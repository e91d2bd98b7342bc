"""The annotation queue's state store (SQLite file, WAL): transitions are compare-and-set,
survive reopening, and repeated deliveries change nothing."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from sedna_sam.cloud import queue as q
from sedna_sam.errors import SednaSamError


@pytest.fixture
def queue(tmp_path):
    return q.open_queue(f"sqlite:///{tmp_path}/state/queue.sqlite")


def test_file_is_sqlite_in_wal_mode(queue, tmp_path):
    queue.receive("a", node="n1", source="store/flagged/n1/a.json", meta={"score": 0.9})
    mode = sqlite3.connect(tmp_path / "state" / "queue.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_happy_path_and_reopen(queue, tmp_path):
    assert queue.receive("a", node="n1", meta={"score": 0.9})
    assert not queue.receive("a", node="n1")  # second delivery: nothing new
    assert queue.advance("a", q.RECEIVED, q.PRE_ANNOTATED, image_path="/d/raw_data/a.png")
    assert not queue.advance("a", q.RECEIVED, q.PRE_ANNOTATED)  # already done: no-op
    assert queue.set_task("a", 41)
    assert not queue.set_task("a", 42)  # a second, different task id is refused
    assert queue.advance("a", q.PRE_ANNOTATED, q.IN_LABEL_STUDIO)
    queue.close()

    again = q.open_queue(f"sqlite:///{tmp_path}/state/queue.sqlite")
    s = again.get("a")
    assert (s.state, s.ls_task_id, s.image_path, s.meta) == (
        q.IN_LABEL_STUDIO,
        41,
        "/d/raw_data/a.png",
        {"score": 0.9},
    )
    assert again.by_task(41).sample_id == "a"
    assert again.counts() == {**dict.fromkeys(q.ALL_STATES, 0), q.IN_LABEL_STUDIO: 1}


def test_labelled_is_idempotent_and_updates_reopen_ingested(queue):
    queue.receive("a")
    queue.advance("a", q.RECEIVED, q.PRE_ANNOTATED)
    queue.set_task("a", 7)
    queue.advance("a", q.PRE_ANNOTATED, q.IN_LABEL_STUDIO)
    assert queue.mark_labelled(999, 1, "t1") == "unknown-task"
    assert queue.mark_labelled(7, 1, "t1") == q.LABELLED
    assert queue.mark_labelled(7, 1, "t1") == "unchanged"  # the same webhook twice
    # Ingest only if the annotation is still the version the work was done for.
    assert not queue.advance("a", q.LABELLED, q.INGESTED, expect={"annotation_at": "t0"})
    assert queue.advance(
        "a", q.LABELLED, q.INGESTED, expect={"annotation_at": "t1"}, ingested_annotation_at="t1"
    )
    assert queue.mark_labelled(7, 1, "t1") == "unchanged"
    assert queue.mark_labelled(7, 1, "t2") == q.LABELLED  # the person corrected it again
    s = queue.get("a")
    assert (s.state, s.annotation_at, s.ingested_annotation_at) == (q.LABELLED, "t2", "t1")


def test_failures_back_off_then_fail_and_retry(queue):
    queue.receive("a")
    s = queue.record_failure("a", q.RECEIVED, "boom 1", max_attempts=3, backoff_s=100)
    assert (s.state, s.attempts, s.last_error) == (q.RECEIVED, 1, "boom 1")
    assert queue.claim(q.RECEIVED) == []  # backing off
    assert [x.sample_id for x in queue.claim(q.RECEIVED, now=s.next_attempt_at + 1)] == ["a"]
    queue.record_failure("a", q.RECEIVED, "boom 2", max_attempts=3)
    s = queue.record_failure("a", q.RECEIVED, "boom 3", max_attempts=3)
    assert (s.state, s.failed_from, s.attempts) == (q.FAILED, q.RECEIVED, 3)
    assert [e.last_error for e in queue.last_errors()] == ["boom 3"]
    assert queue.record_failure("a", q.RECEIVED, "late", max_attempts=3) is None  # not in that state
    assert queue.retry() == 1
    s = queue.get("a")
    assert (s.state, s.attempts) == (q.RECEIVED, 0)
    assert queue.advance("a", q.RECEIVED, q.PRE_ANNOTATED)
    assert queue.get("a").last_error is None


def test_concurrent_threads_move_a_sample_once(queue):
    queue.receive("a")
    wins = []

    def mover():
        wins.append(queue.advance("a", q.RECEIVED, q.PRE_ANNOTATED))

    threads = [threading.Thread(target=mover) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_database_urls(tmp_path):
    assert q.sqlite_path("sqlite:////abs/q.sqlite").as_posix() == "/abs/q.sqlite"
    assert q.sqlite_path("sqlite:///rel/q.sqlite").as_posix() == "rel/q.sqlite"
    with pytest.raises(SednaSamError, match="PostgreSQL queue is not built"):
        q.open_queue("postgresql://user@db/sedna")
    with pytest.raises(SednaSamError, match="unknown queue database"):
        q.open_queue("mysql://db/x")
