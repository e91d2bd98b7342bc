"""The annotation queue's status page (`GET /` of `sedna-sam cloud serve`): the numbers are
the queue's, thumbnails and Label Studio links are there, it needs the webhook secret, and
a person sees it in Chromium (screenshot under test-artifacts/)."""

from __future__ import annotations

import json
import time

import pytest
from fixtures_browser import chromium_page, images_loaded, screenshot
from fixtures_cloud import local_service_config, serving
from fixtures_http import fetch

from sedna_sam.cloud import samples as q
from sedna_sam.cloud.status import percentile, queue_summary

SECRET = "status-secret"


def test_percentiles_and_summary_are_pure():
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2 and percentile([1, 2, 3, 4], 99) == 4 and percentile([5], 90) == 5

    def sample(i, state, updated, created=0.0, meta=None):
        return q.Sample(
            f"s{i}",
            "edge-1",
            state,
            "",
            "",
            meta or {},
            None,
            None,
            None,
            None,
            0,
            None,
            None,
            0.0,
            created,
            updated,
        )

    now = 10_000.0
    rows = [
        sample(1, q.RECEIVED, now - 10),
        sample(2, q.RECEIVED, now - 30),
        sample(3, q.INGESTED, now - 100, meta={"frame_time": now - 700}),  # 600 s from flag to label
        sample(4, q.INGESTED, now - 7200, meta={"frame_time": now - 7300}),  # 100 s, two hours ago
        sample(5, q.FAILED, now - 5),
    ]
    s = queue_summary(rows, now)
    assert s.counts[q.RECEIVED] == 2 and s.counts[q.INGESTED] == 2 and s.counts[q.LABELLED] == 0
    assert (s.ingested_last_hour, s.ingested_last_day) == (1, 2)
    assert s.age_percentiles[q.RECEIVED][50] == 10 and s.age_percentiles[q.RECEIVED][99] == 30
    assert s.flag_to_label[50] == 100 and s.flag_to_label[99] == 600
    assert q.INGESTED not in s.age_percentiles


@pytest.fixture
def service_with_samples(tmp_path, labels):
    from sedna_sam.cloud.service import AnnotationService
    from sedna_sam.images import write_png
    from sedna_sam.synthetic import make_street_scene, render_scene

    config = local_service_config(tmp_path, labels, SECRET, ls_url="http://label-studio.example:8080")
    service = AnnotationService(config)
    raw = tmp_path / "dataset" / "raw_data"
    raw.mkdir(parents=True)
    path = {}
    for i, state in enumerate((q.PRE_ANNOTATED, q.IN_LABEL_STUDIO, q.INGESTED, q.FAILED)):
        image = write_png(raw / f"s{i}.png", render_scene(make_street_scene(64, 128, seed=i), labels, seed=i))
        sid = f"s{i}"
        path[sid] = state
        service.queue.receive(
            sid, image_path=str(image), node="edge-3", meta={"frame_time": time.time() - 60}
        )
        steps = [q.RECEIVED, q.PRE_ANNOTATED, q.IN_LABEL_STUDIO, q.LABELLED, q.INGESTED]
        if state == q.FAILED:
            service.queue.record_failure(
                sid, q.RECEIVED, "pre_annotate: the image is corrupt", max_attempts=1
            )
            continue
        for a, b in zip(steps, steps[1:]):
            if a == state:
                break
            if b == q.IN_LABEL_STUDIO:
                service.queue.set_task(sid, 40 + i)
            service.queue.advance(sid, a, b)
    # the worker loop would start pre-annotating; a long interval keeps the states as set up
    with serving(service, interval_s=3600) as port:
        yield service, f"http://127.0.0.1:{port}"


def get(url: str) -> tuple[int, str]:
    status, _, text = fetch(url)
    return status, text


def test_status_page_needs_the_secret_and_shows_the_queue(service_with_samples):
    service, url = service_with_samples
    assert get(url + "/")[0] == 401 and get(url + "/?secret=wrong")[0] == 403
    status, page = get(f"{url}/?secret={SECRET}")
    assert status == 200 and "http-equiv=refresh" in page
    counts = service.queue.counts()
    for state, n in counts.items():
        assert f'data-state="{state}">{n}<' in page
    assert counts[q.INGESTED] == 1 and counts[q.FAILED] == 1
    assert "the image is corrupt" in page and page.count("data:image/jpeg;base64,") == 4
    assert (
        "http://label-studio.example:8080" not in page or "/data?task=41" in page
    )  # links need a project id
    status, body = get(f"{url}/status.json?secret={SECRET}")
    data = json.loads(body)
    assert data["counts"] == counts and data["ingested_last_hour"] == 1
    assert 50 < data["flag_to_label_seconds"]["p50"] < 600
    assert SECRET not in page and SECRET not in body
    # /metrics carries the same flag-to-label percentiles
    status, metrics = get(url + "/metrics")
    assert status == 200 and 'sedna_sam_flag_to_label_seconds{quantile="0.5"}' in metrics


@pytest.mark.browser
def test_status_page_in_a_browser(service_with_samples, tmp_path):
    service, url = service_with_samples
    with chromium_page(tmp_path / "profile") as page:
        page.goto(f"{url}/?secret={SECRET}")
        widths = images_loaded(page)
        screenshot(page, "status-page.png")
        counts = page.eval_on_selector_all(
            "#counts td[data-state]", "els => els.map(e => [e.dataset.state, +e.innerText])"
        )
        states = page.eval_on_selector_all("#recent td[data-key=state]", "els => els.map(e => e.innerText)")
    assert len(widths) == 4 and all(w > 0 for w in widths)
    assert dict(counts) == service.queue.counts()
    assert sorted(states) == sorted([q.PRE_ANNOTATED, q.IN_LABEL_STUDIO, q.INGESTED, q.FAILED])
