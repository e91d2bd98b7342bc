"""The cloud service's intake and HTTP face against hostile input (issue 12, findings 2 and
5): samples must carry size and sha256 and stay plain files inside the store; images over
the pixel cap never reach raw_data/; 100 simultaneous webhook deliveries are all
answered; oversized bodies get 413 and absurd payloads 400, quickly."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_cloud import local_service_config, serving
from fixtures_http import http_call, raw_exchange

from sedna_sam.cloud import samples as q
from sedna_sam.cloud.server import SECRET_HEADER
from sedna_sam.cloud.service import AnnotationService
from sedna_sam.cloud.store import fetch_sample
from sedna_sam.errors import InputError
from sedna_sam.images import encode_png
from sedna_sam.storage import url_filesystem

SECRET = "hardening-secret"


def put_sample(node_dir: Path, sample_id: str, data: bytes, **meta) -> Path:
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / f"{sample_id}.png").write_bytes(data)
    fields = {"image": f"{sample_id}.png", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    fields.update(meta)
    fields = {k: v for k, v in fields.items() if v is not None}
    (node_dir / f"{sample_id}.json").write_text(json.dumps(fields))
    return node_dir / f"{sample_id}.json"


IMAGE = encode_png(np.full((24, 32, 3), 100, np.uint8))


@pytest.mark.parametrize(
    "missing, message",
    [
        ({"size": None}, "'size'"),
        ({"sha256": None}, "'sha256'"),
        ({"size": True}, "'size'"),
        ({"sha256": "00"}, "'sha256'"),
    ],
)
def test_sample_without_size_or_sha256_is_refused(missing, message, tmp_path):
    store = tmp_path / "store"
    put_sample(store / "flagged" / "edge-1", "s1", IMAGE, **missing)
    fs, root = url_filesystem(str(store))
    with pytest.raises(InputError, match=message):
        fetch_sample(fs, f"{root}/flagged/edge-1/s1.json", tmp_path / "raw", root=root)
    assert not (tmp_path / "raw").exists()


def test_symlinks_out_of_the_store_are_refused(tmp_path):
    store, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes(IMAGE)
    node = store / "flagged" / "edge-1"
    # 1. the image is a symlink to a file outside the store (main copied it into raw_data/)
    put_sample(node, "linked", IMAGE)
    (node / "linked.png").unlink()
    (node / "linked.png").symlink_to(secret)
    # 2. the JSON is a symlink
    put_sample(outside, "meta", IMAGE)
    (node / "meta.json").symlink_to(outside / "meta.json")
    (node / "meta.png").write_bytes(IMAGE)
    # 3. a node directory that is a symlink out of the store
    put_sample(outside / "evil-node", "far", IMAGE)
    (store / "flagged" / "evil").symlink_to(outside / "evil-node")
    # 4. a symlink that stays inside the store is still not a plain file
    put_sample(node, "inner", IMAGE)
    (node / "inner.png").unlink()
    (node / "inner.png").symlink_to(node / "meta.png")
    fs, root = url_filesystem(str(store))
    for json_path, message in [
        (f"{root}/flagged/edge-1/linked.json", "outside the store"),
        (f"{root}/flagged/edge-1/meta.json", "outside the store"),
        (f"{root}/flagged/evil/far.json", "outside the store"),
        (f"{root}/flagged/edge-1/inner.json", "symbolic link"),
    ]:
        with pytest.raises(InputError, match=message):
            fetch_sample(fs, json_path, tmp_path / "raw", root=root)
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def test_image_over_the_pixel_cap_never_reaches_raw_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SEDNA_SAM_MAX_IMAGE_PIXELS", "500")  # the 32x24 image has 768
    store = tmp_path / "store"
    put_sample(store / "flagged" / "edge-1", "big", IMAGE)
    fs, root = url_filesystem(str(store))
    with pytest.raises(InputError, match="over the cap"):
        fetch_sample(fs, f"{root}/flagged/edge-1/big.json", tmp_path / "raw", root=root)
    assert not (tmp_path / "raw" / "big.png").exists()


# ----------------------------------------------------------------------------- HTTP


@pytest.fixture
def running(tmp_path, labels):
    service = AnnotationService(local_service_config(tmp_path, labels, SECRET))
    with serving(service) as port:
        yield service, port


def hook(task_id, annotation_id, updated_at="2026-11-01T10:00:00Z") -> dict:
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": annotation_id, "task": task_id, "updated_at": updated_at, "result": []},
        "task": {"id": task_id},
    }


def post(port: int, body: bytes, headers: dict | None = None, timeout: float = 30) -> tuple[int, str]:
    status, payload = http_call(
        "127.0.0.1", port, "POST", "/webhook", body, {SECRET_HEADER: SECRET, **(headers or {})}, timeout
    )
    return status, payload.decode()


def test_100_concurrent_webhook_deliveries_are_all_answered(running):
    """Label Studio does not retry a webhook: with main's listen backlog of 5, 13-22 of 50
    simultaneous deliveries were reset."""
    service, port = running
    for i in range(100):
        service.queue.receive(f"s{i}", node="edge-1")
        service.queue.advance(f"s{i}", q.RECEIVED, q.PRE_ANNOTATED)
        service.queue.set_task(f"s{i}", 1000 + i)
        service.queue.advance(f"s{i}", q.PRE_ANNOTATED, q.IN_LABEL_STUDIO)
    barrier = threading.Barrier(100)
    answers: list = [None] * 100

    def deliver(i: int) -> None:
        barrier.wait()
        try:
            answers[i] = post(port, json.dumps(hook(1000 + i, 5000 + i)).encode())
        except OSError as exc:
            answers[i] = (0, repr(exc))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    failed = [a for a in answers if a is None or a[0] != 200]
    assert not failed, f"{len(failed)} deliveries not answered 200: {failed[:3]}"
    assert service.queue.counts()[q.IN_LABEL_STUDIO] == 0  # every delivery was recorded


def _raw(port: int, data: bytes) -> bytes:
    return raw_exchange("127.0.0.1", port, data)


def test_oversized_and_absurd_webhooks_get_clean_answers(running):
    service, port = running
    started = time.monotonic()
    head = f"POST /webhook HTTP/1.1\r\nHost: x\r\n{SECRET_HEADER}: {SECRET}\r\n"
    assert _raw(port, (head + "Content-Length: 99999999999\r\n\r\n").encode()).startswith(b"HTTP/1.0 413")
    assert _raw(port, (head + "Content-Length: -1\r\n\r\n").encode()).startswith(b"HTTP/1.0 400")
    status, text = post(port, b"{" + b" " * (9 << 20) + b"}")  # 9 MB, over the 8 MB cap
    assert status == 413 and "over the limit" in text
    for payload, message in [
        (hook(2**70, 1), "task id"),
        (hook(1, 2**70), "annotation id"),
        (hook(True, 1), "task id"),
        (hook("12", 1), "task id"),
        (hook(1, 1, updated_at={"a": 1}), "updated_at"),
        ({"action": "ANNOTATION_CREATED", "annotation": [1], "task": 1}, "annotation"),
    ]:
        status, text = post(port, json.dumps(payload).encode())
        assert status == 400 and message in text, (payload, status, text)
    deep = b"[" * 100_000 + b"]" * 100_000
    assert post(port, deep)[0] == 400
    assert time.monotonic() - started < 20  # no hung connection
    assert service.metrics.webhooks["bad_request"] >= 9
