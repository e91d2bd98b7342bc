"""The service's HTTP face over a real socket: /healthz, /metrics (parsed with the
Prometheus client's own parser), and /webhook's shared-secret check."""

from __future__ import annotations

import json

import pytest
from fixtures_cloud import local_service_config, serving
from fixtures_http import fetch
from prometheus_client.parser import text_string_to_metric_families

from sedna_sam.cloud import samples as q
from sedna_sam.cloud.metrics import STAGE_BUCKETS
from sedna_sam.cloud.server import SECRET_HEADER
from sedna_sam.cloud.service import AnnotationService

SECRET = "s3cret-for-tests"


@pytest.fixture
def running(tmp_path, labels):
    """A service (empty store, no Label Studio needed for these endpoints) on a free port."""
    service = AnnotationService(local_service_config(tmp_path, labels, SECRET))
    with serving(service) as port:
        yield service, f"http://127.0.0.1:{port}"


def request(url, body=None, headers=None, method=None):
    return fetch(url, None if body is None else json.dumps(body).encode(), headers, method)


def hook(task_id, annotation_id, updated_at, action="ANNOTATION_CREATED"):
    """The shape Label Studio POSTs (label_studio/webhooks: action, annotation, task, project)."""
    return {
        "action": action,
        "annotation": {"id": annotation_id, "task": task_id, "updated_at": updated_at, "result": []},
        "task": {"id": task_id, "data": {"image": "/data/local-files/?d=x.png"}},
        "project": {"id": 1},
    }


def waiting_sample(service, sample_id="s1", task_id=11):
    service.queue.receive(sample_id, node="edge-1")
    service.queue.advance(sample_id, q.RECEIVED, q.PRE_ANNOTATED)
    service.queue.set_task(sample_id, task_id)
    service.queue.advance(sample_id, q.PRE_ANNOTATED, q.IN_LABEL_STUDIO)


def test_healthz(running):
    service, url = running
    status, _, body = request(url + "/healthz")
    assert status == 200
    assert json.loads(body)["queue"]["received"] == 0
    assert request(url + "/nope")[0] == 404


@pytest.mark.parametrize(
    "headers, path, expected",
    [
        ({}, "/webhook", 401),
        ({SECRET_HEADER: "wrong"}, "/webhook", 403),
        ({SECRET_HEADER: SECRET + "x"}, "/webhook", 403),
        ({}, "/webhook?secret=wrong", 403),
    ],
)
def test_forged_webhook_is_refused(running, headers, path, expected):
    service, url = running
    waiting_sample(service)
    status, _, _ = request(
        url + path, hook(11, 5, "2026-01-01T00:00:00Z"), {"Content-Type": "application/json", **headers}
    )
    assert status == expected
    assert service.queue.get("s1").state == q.IN_LABEL_STUDIO  # nothing changed


def test_webhook_with_secret_marks_labelled_once(running):
    service, url = running
    waiting_sample(service)
    headers = {"Content-Type": "application/json", SECRET_HEADER: SECRET}
    status, _, body = request(url + "/webhook", hook(11, 5, "t1"), headers)
    assert (status, json.loads(body)["result"]) == (200, q.LABELLED)
    # Label Studio may deliver twice; the secret in the URL works too.
    status, _, body = request(
        url + f"/webhook?secret={SECRET}", hook(11, 5, "t1"), {"Content-Type": "application/json"}
    )
    assert json.loads(body)["result"] == "unchanged"
    assert request(url + "/webhook", hook(999, 1, "t"), headers)[2] == '{"result": "unknown-task"}'
    other = {"action": "PROJECT_UPDATED", "project": {"id": 1}}
    assert json.loads(request(url + "/webhook", other, headers)[2])["result"] == "ignored"
    assert request(url + "/webhook", {"action": "ANNOTATION_CREATED"}, headers)[0] == 400
    s = service.queue.get("s1")
    # The worker loop then tries to ingest (no Label Studio here: a counted failure).
    assert (s.annotation_id, s.annotation_at) == (5, "t1")


def scrape(url):
    status, headers, text = request(url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(text)}


def stage_counts(families) -> dict:
    """{(metric, stage, le or ""): value} of the per-stage counters and histogram buckets."""
    out = {}
    for name in ("sedna_sam_samples_processed", "sedna_sam_samples_failed", "sedna_sam_stage_seconds"):
        for s in families[name].samples:
            if name != "sedna_sam_stage_seconds" or s.name.endswith("_bucket"):
                out[(name, s.labels["stage"], s.labels.get("le", ""))] = s.value
    return out


def settled(url, timeout_s: float = 10.0):
    """Scrape until two scrapes 0.3 s apart agree: the service's own loop, which may have
    touched the sample while the test moved it through its states, is done with it."""
    import time

    deadline = time.monotonic() + timeout_s
    last = stage_counts(scrape(url))
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = stage_counts(scrape(url))
        if now == last:
            return now
        last = now
    raise AssertionError("the service's counters kept changing")


def test_metrics_parse_as_prometheus_text(running):
    service, url = running
    waiting_sample(service)
    request(url + "/webhook", hook(11, 5, "t1"), {})  # refused: counted
    before = settled(url)
    service.metrics.observe("pre_annotate", 1.7, ok=True)
    service.metrics.observe("push", 0.02, ok=True)
    families = scrape(url)
    depth = {s.labels["state"]: s.value for s in families["sedna_sam_queue_samples"].samples}
    assert set(depth) == set(q.ALL_STATES)
    assert depth[q.IN_LABEL_STUDIO] + depth[q.LABELLED] == 1
    assert families["sedna_sam_stage_seconds"].type == "histogram"
    after = stage_counts(families)
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    # exactly our two observations: 1.7 s in the buckets from 2.5 up, 0.02 s from 0.025 up
    hist = "sedna_sam_stage_seconds"
    assert delta.pop(("sedna_sam_samples_processed", "pre_annotate", "")) == 1
    assert delta.pop(("sedna_sam_samples_processed", "push", "")) == 1
    every = {str(b) for b in STAGE_BUCKETS} | {"+Inf"}
    assert {k[2] for k in delta if k[:2] == (hist, "pre_annotate")} == {
        le for le in every if float(le) >= 2.5
    }
    assert {k[2] for k in delta if k[:2] == (hist, "push")} == every
    assert set(delta.values()) == {1} and all(k[0] == hist for k in delta)
    refused = {s.labels["outcome"]: s.value for s in families["sedna_sam_webhook_requests"].samples}
    assert refused["refused"] == 1


def test_empty_secret_refuses_everything():
    from sedna_sam.cloud.server import check_secret

    assert check_secret("", "anything") == 403
    assert check_secret("", "") == 401
    assert check_secret("abc", "abc") is None


def test_cli_serve_answers_and_stops_on_sigterm(tmp_path):
    """`sedna-sam cloud serve` as a process: /healthz up, SIGTERM ends it cleanly, the
    secret never reaches the log; `cloud status` then reads the same queue."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "store").mkdir()
    env = {
        **os.environ,
        "SEDNA_SAM_STORE": str(tmp_path / "store"),
        "SEDNA_SAM_DATASET_DIR": str(tmp_path / "dataset"),
        "SEDNA_SAM_WEBHOOK_SECRET": SECRET,
        "LOG_LEVEL": "DEBUG",
    }
    cmd = [
        sys.executable,
        "-m",
        "sedna_sam",
        "cloud",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tiny-random-models",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120  # builds and loads the tiny models first
        while True:
            try:
                status, _, body = request(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "service did not come up"
                time.sleep(0.2)
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert (
            request(f"http://127.0.0.1:{port}/webhook", hook(1, 1, "t"), {SECRET_HEADER: "forged"})[0] == 403
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert SECRET not in out and "refused" in out
    status = subprocess.run(
        [sys.executable, "-m", "sedna_sam", "cloud", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "in_label_studio" in status.stdout
