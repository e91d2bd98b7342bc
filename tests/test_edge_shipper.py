"""Shipping flagged samples: verified uploads, crash/restart without loss or duplicates,
an unreachable store (directory and a real local S3 server) keeps samples buffered."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sedna_sam.edge.buffer import SampleBuffer
from sedna_sam.edge.shipper import Shipper, StoreUnreachable


def store_samples(root: Path, node: str = "node-a") -> dict[str, dict]:
    """Complete samples in a directory store: JSON present and image matching it."""
    out = {}
    for j in sorted((root / "flagged" / node).glob("*.json")):
        meta = json.loads(j.read_text())
        img = j.parent / meta["image"]
        assert img.stat().st_size == meta["size"]
        assert hashlib.sha256(img.read_bytes()).hexdigest() == meta["sha256"]
        out[meta["sample_id"]] = meta
    return out


def fill(buffer, edge_sample, n: int, nbytes: int = 2000) -> set[str]:
    for i in range(n):
        edge_sample(buffer, f"s{i:03d}", score=i / n, nbytes=nbytes)
    return {s.sample_id for s in buffer.samples()}


def test_ship_to_directory_layout_and_local_removal(tmp_path, edge_sample):
    buf = SampleBuffer(tmp_path / "buf")
    ids = fill(buf, edge_sample, 4)
    stats = Shipper(buf, f"file://{tmp_path / 'store'}", "node-a").run(once=True)
    assert stats.shipped == 4 and set(store_samples(tmp_path / "store")) == ids
    assert buf.samples() == [] and not list((tmp_path / "buf").glob("*.png"))


class Crash(Exception):
    pass


def test_crash_between_upload_and_delete_then_rerun(tmp_path, edge_sample):
    buf = SampleBuffer(tmp_path / "buf")
    ids = fill(buf, edge_sample, 3)
    store = str(tmp_path / "store")
    shipper = Shipper(buf, store, "node-a")
    real_remove = buf.remove
    calls = []

    def crash_on_second(sample):
        calls.append(sample)
        if len(calls) == 2:
            raise Crash("power cut after upload, before delete")
        real_remove(sample)

    buf.remove = crash_on_second
    with pytest.raises(Crash):
        shipper.ship_pending()
    buf.remove = real_remove
    assert len(buf.samples()) == 2  # the crashed one is still local
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.json")}

    again = Shipper(SampleBuffer(tmp_path / "buf"), store, "node-a")  # the restarted process
    stats = again.run(once=True)
    assert stats.already_there == 1 and stats.shipped == 1
    assert set(store_samples(tmp_path / "store")) == ids
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.json")}
    assert all(after[name] == mtime for name, mtime in before.items())  # nothing sent twice


def test_crash_between_image_and_json_upload(tmp_path, edge_sample):
    buf = SampleBuffer(tmp_path / "buf")
    ids = fill(buf, edge_sample, 2)
    shipper = Shipper(buf, str(tmp_path / "store"), "node-a")
    real_put = shipper._put

    def put(path, data):
        if path.endswith(".json"):
            raise Crash("killed before the JSON went up")
        real_put(path, data)

    shipper._put = put
    with pytest.raises(Crash):
        shipper.ship_pending()
    assert store_samples(tmp_path / "store") == {}  # the cloud sees nothing half-done
    assert (
        Shipper(SampleBuffer(tmp_path / "buf"), str(tmp_path / "store"), "node-a").run(once=True).shipped == 2
    )
    assert set(store_samples(tmp_path / "store")) == ids


SHIP_SCRIPT = """
import sys, time
from sedna_sam.edge.buffer import SampleBuffer
from sedna_sam.edge.shipper import Shipper
buf = SampleBuffer(sys.argv[1])
shipper = Shipper(buf, sys.argv[2], "node-a")
real = shipper._put
def slow_put(path, data):
    time.sleep(0.02)
    real(path, data)
shipper._put = slow_put
shipper.ship_pending()
"""


def test_killed_shipper_process_resumes_without_loss_or_duplicates(tmp_path, edge_sample):
    buf = SampleBuffer(tmp_path / "buf")
    ids = fill(buf, edge_sample, 40, nbytes=500)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", SHIP_SCRIPT, str(tmp_path / "buf"), str(store)])
    deadline = time.time() + 60
    while time.time() < deadline and len(list(store.rglob("*.json"))) < 5:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-upload, no cleanup
    proc.wait()
    shipped_before = {p.name: p.stat().st_mtime_ns for p in store.rglob("*.json")}
    assert 5 <= len(shipped_before) < 40
    stats = Shipper(SampleBuffer(tmp_path / "buf"), str(store), "node-a").run(once=True)
    assert set(store_samples(store)) == ids  # nothing lost
    assert stats.shipped == 40 - len(shipped_before)  # only what had not arrived is sent
    after = {p.name: p.stat().st_mtime_ns for p in store.rglob("*.json")}
    assert all(after[n] == m for n, m in shipped_before.items())  # nothing re-sent
    assert SampleBuffer(tmp_path / "buf").samples() == []


def test_unreachable_directory_store_keeps_samples_then_ships(tmp_path, edge_sample):
    buf = SampleBuffer(tmp_path / "buf")
    ids = fill(buf, edge_sample, 3)
    blocker = tmp_path / "mnt"
    blocker.write_text("the store's mount is missing: a file where the directory should be")
    shipper = Shipper(buf, str(blocker / "store"), "node-a", backoff_s=0.05, max_backoff_s=0.2)
    with pytest.raises(StoreUnreachable):
        shipper.ship_pending()
    assert {s.sample_id for s in buf.samples()} == ids


def test_s3_store_down_then_up_ships_everything(tmp_path, edge_sample, local_s3, monkeypatch):
    buf = SampleBuffer(tmp_path / "buf")
    ids = fill(buf, edge_sample, 3)
    url = "s3://edge-store/store"
    # wrong port: nothing listens there
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(StoreUnreachable):
        Shipper(buf, url, "node-a").ship_pending()
    assert {s.sample_id for s in buf.samples()} == ids
    # right port, server stopped: the shipper backs off, then ships once it is back
    monkeypatch.setenv("S3_ENDPOINT_URL", local_s3.endpoint)
    local_s3.stop()
    shipper = Shipper(buf, url, "node-a", backoff_s=0.2, max_backoff_s=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=shipper.run, kwargs={"stop": stop, "poll_s": 0.2})
    thread.start()
    try:
        deadline = time.time() + 30
        while shipper.stats.retries < 1 and time.time() < deadline:
            time.sleep(0.1)
        assert shipper.stats.retries >= 1 and len(buf.samples()) == 3
        local_s3.start()
        while buf.samples() and time.time() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
    assert buf.samples() == []
    fs = shipper.fs
    keys = fs.find("edge-store/store/flagged/node-a")
    assert sorted(k.rsplit("/", 1)[1] for k in keys if k.endswith(".json")) == sorted(
        f"{i}.json" for i in ids
    )
    for sid in ids:
        meta = json.loads(fs.cat_file(f"edge-store/store/flagged/node-a/{sid}.json"))
        assert (
            hashlib.sha256(fs.cat_file(f"edge-store/store/flagged/node-a/{meta['image']}")).hexdigest()
            == meta["sha256"]
        )
