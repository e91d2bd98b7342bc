"""The bounded sample buffer: caps, top scores kept, drops logged, cut-off writes cleaned."""

from __future__ import annotations

import json
import logging
import os
import time

from sedna_sam.edge.buffer import SampleBuffer


def test_samples_are_image_plus_json_written_last(tmp_path, edge_sample):
    buf = SampleBuffer(tmp_path / "b")
    assert edge_sample(buf, "cam 1/frame:7", 0.7, nbytes=500)
    [s] = buf.samples()
    assert s.image_path.is_file() and s.json_path.is_file()
    assert s.sample_id.startswith("cam_1_frame_7-")  # safe for every store
    meta = json.loads(s.json_path.read_text())
    assert meta["image"] == s.image_path.name and meta["size"] == 500 == s.image_path.stat().st_size
    for key in ("sha256", "score", "scorer", "threshold", "model_version", "node", "frame_time"):
        assert key in meta
    # an image without its JSON is not a sample
    (tmp_path / "b" / "half.png").write_bytes(b"x")
    assert [x.sample_id for x in buf.samples()] == [s.sample_id]


def test_overflow_by_count_keeps_the_highest_scores(tmp_path, edge_sample, caplog):
    buf = SampleBuffer(tmp_path / "b", max_bytes=10**9, max_count=3)
    for i, score in enumerate([0.5, 0.9, 0.2, 0.7, 0.1, 0.95]):
        edge_sample(buf, f"f{i}", score)
    assert sorted(s.score for s in buf.samples()) == [0.7, 0.9, 0.95]
    assert buf.dropped == 3
    dropped_logs = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped_logs) == 3
    assert any("score 0.2000" in m for m in dropped_logs) and any("score 0.1000" in m for m in dropped_logs)
    assert len(list((tmp_path / "b").glob("*.png"))) == 3  # dropped files are gone


def test_overflow_by_bytes_evicts_several_low_scores(tmp_path, edge_sample):
    buf = SampleBuffer(tmp_path / "b", max_bytes=3 * 1000 + 3 * 400, max_count=100)
    for i, score in enumerate([0.3, 0.4, 0.5]):
        assert edge_sample(buf, f"small{i}", score, nbytes=1000)
    assert edge_sample(buf, "big", 0.9, nbytes=2000)  # needs two small ones gone
    assert sorted(s.score for s in buf.samples()) == [0.5, 0.9]
    count, used = buf.usage()
    assert count == 2 and used <= buf.max_bytes
    # a newcomer scoring below everything kept is the one dropped
    assert not edge_sample(buf, "low", 0.1, nbytes=2500)
    assert sorted(s.score for s in buf.samples()) == [0.5, 0.9]


def test_clean_orphans_removes_only_old_images_without_json(tmp_path, edge_sample, caplog):
    buf = SampleBuffer(tmp_path / "b")
    edge_sample(buf, "kept", 0.5)
    old, fresh = tmp_path / "b" / "old.png", tmp_path / "b" / "fresh.png"
    old.write_bytes(b"1")
    fresh.write_bytes(b"2")
    past = time.time() - 3600
    os.utime(old, (past, past))
    with caplog.at_level(logging.INFO):
        assert buf.clean_orphans() == 1
    assert not old.exists() and fresh.exists() and len(buf.samples()) == 1
