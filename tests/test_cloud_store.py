"""The service's intake from the store the edge shipper writes (D's real buffer + shipper
make the files): complete samples only, checked by size and sha256, bad ones reported by
name in the queue while the others go on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from fixtures_cloud import local_service_config

from sedna_sam.cloud import samples as q
from sedna_sam.cloud.service import AnnotationService
from sedna_sam.cloud.store import fetch_sample, scan_store
from sedna_sam.errors import InputError
from sedna_sam.images import encode_png
from sedna_sam.storage import url_filesystem


def ship(store, tmp_path, node: str, name: str, seed: int) -> str:
    """Flag one small image on ``node`` and ship it to ``store`` the way the edge does."""
    from sedna_sam.edge.buffer import SampleBuffer, make_sample_id, sample_metadata
    from sedna_sam.edge.shipper import ship_once

    rng = np.random.default_rng(seed)
    data = encode_png(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    sample_id = make_sample_id(name, data)
    meta = sample_metadata(
        sample_id, f"{sample_id}.png", data, score=0.9, scorer="msp", threshold=0.5,
        model_version="m0", node=node, frame_time=time.time(),
    )  # fmt: skip
    buffer = tmp_path / f"buffer-{node}"
    SampleBuffer(buffer).add(".png", data, meta)
    Path(store).mkdir(exist_ok=True)  # the store root exists (the shipper never creates it)
    ship_once(buffer, str(store), node)
    return sample_id


def make_service(tmp_path, labels, **overrides) -> AnnotationService:
    return AnnotationService(local_service_config(tmp_path, labels, **overrides))


def test_scan_sees_complete_samples_only(tmp_path, labels):
    store = tmp_path / "store"
    a = ship(store, tmp_path, "edge-1", "cam0/frame 1.png", 1)
    b = ship(store, tmp_path, "edge-2", "cam0/frame 2.png", 2)
    (store / "flagged" / "edge-1" / "in-flight.png").write_bytes(b"partial")  # image, no JSON yet
    fs, root = url_filesystem(str(store))
    found = scan_store(fs, root)
    assert [(s.sample_id, s.node) for s in found] == sorted([(a, "edge-1"), (b, "edge-2")])

    service = make_service(tmp_path, labels)
    assert service.scan() == 2
    assert service.scan() == 0  # known: nothing twice
    assert service.queue.get(a).node == "edge-1"
    assert service.queue.counts()[q.RECEIVED] == 2


def test_fetch_checks_and_copies_once(tmp_path):
    store = tmp_path / "store"
    sid = ship(store, tmp_path, "edge-1", "frame", 3)
    fs, root = url_filesystem(str(store))
    json_path = f"{root}/flagged/edge-1/{sid}.json"
    image, meta = fetch_sample(fs, json_path, tmp_path / "raw_data")
    assert image == tmp_path / "raw_data" / f"{sid}.png"
    assert image.read_bytes() == (store / "flagged" / "edge-1" / f"{sid}.png").read_bytes()
    assert meta["node"] == "edge-1" and meta["score"] == 0.9
    mtime = image.stat().st_mtime_ns
    fetch_sample(fs, json_path, tmp_path / "raw_data")
    assert image.stat().st_mtime_ns == mtime  # already there with the right checksum: not rewritten


def test_bad_samples_fail_by_name_and_others_go_on(tmp_path, labels):
    store = tmp_path / "store"
    good = ship(store, tmp_path, "edge-1", "good", 4)
    tampered = ship(store, tmp_path, "edge-1", "tampered", 5)
    image = store / "flagged" / "edge-1" / f"{tampered}.png"
    image.write_bytes(image.read_bytes()[:-1] + b"\x00")  # same size, other bytes
    truncated = ship(store, tmp_path, "edge-1", "truncated", 6)
    (store / "flagged" / "edge-1" / f"{truncated}.png").write_bytes(b"\x89PNG")
    (store / "flagged" / "edge-1" / "garbage.json").write_text("{not json")
    meta_only = store / "flagged" / "edge-1" / "lost.json"
    meta_only.write_text(json.dumps({"image": "lost.png", "size": 3, "sha256": "0" * 64}))

    fs, root = url_filesystem(str(store))
    for sid, message in [
        (tampered, "sha256 does not match"),
        (truncated, "4 bytes, but"),
        ("garbage", "not valid JSON"),
        ("lost", "missing from the store"),
    ]:
        try:
            fetch_sample(fs, f"{root}/flagged/edge-1/{sid}.json", tmp_path / "raw")
        except InputError as exc:
            assert message in str(exc) and sid in str(exc)
        else:
            raise AssertionError(f"{sid} was accepted")

    # In the service: each bad one ends in `failed` with that message after its attempts
    # (the good one needs SAM, which the end-to-end tests bring).
    service = make_service(tmp_path, labels, max_attempts=2, backoff_s=0)
    service.scan()
    for _ in range(2):
        for s in service.queue.claim(q.RECEIVED, 10):
            if s.sample_id != good:
                service.run_stage(q.RECEIVED, s)
    failed = {s.sample_id: s for s in service.queue.in_state(q.FAILED)}
    assert set(failed) == {tampered, truncated, "garbage", "lost"}
    assert "sha256" in failed[tampered].last_error and failed[tampered].failed_from == q.RECEIVED
    assert failed[tampered].attempts == 2
    assert not (tmp_path / "dataset" / "raw_data" / f"{tampered}.png").exists()
    assert service.metrics.failed["pre_annotate"] == 8
    assert service.queue.get(good).state == q.RECEIVED


def test_status_table_lists_states_and_last_errors(tmp_path, labels):
    from sedna_sam.commands.cloud import format_status

    store = tmp_path / "store"
    tampered = ship(store, tmp_path, "edge-1", "tampered", 7)
    image = store / "flagged" / "edge-1" / f"{tampered}.png"
    image.write_bytes(image.read_bytes()[:-1] + b"\x01")
    service = make_service(tmp_path, labels, max_attempts=1)
    service.scan()
    service.run_stage(q.RECEIVED, service.queue.get(tampered))
    table = format_status(service.queue)
    rows = dict(line.split() for line in table.splitlines()[1:8])
    assert rows == {**{s: "0" for s in q.ALL_STATES}, q.FAILED: "1", "total": "1"}
    assert "last errors:" in table and tampered in table and "sha256 does not match" in table
    assert service.queue.retry() == 1 and service.queue.get(tampered).state == q.RECEIVED


def test_label_studio_down_is_waited_out_not_counted(tmp_path, labels):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = make_service(tmp_path, labels, max_attempts=1, ls_url=f"http://127.0.0.1:{port}", ls_token="t")
    service.queue.receive("s1")
    service.queue.advance("s1", q.RECEIVED, q.PRE_ANNOTATED, image_path=str(tmp_path / "s1.png"))
    for _ in range(3):
        assert not service.run_stage(q.PRE_ANNOTATED, service.queue.get("s1"))
    s = service.queue.get("s1")
    assert (s.state, s.attempts) == (q.PRE_ANNOTATED, 0)  # max_attempts=1, yet not failed
    assert "Connection" in s.last_error or "connect" in s.last_error.lower()
