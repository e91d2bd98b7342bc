"""The annotation service end to end on one machine: a real Label Studio (``ls_server``),
a local store filled by the edge's own buffer + shipper, tiny random-weight SAM and
Segformer checkpoints. A flagged sample goes all the way to one index line, with the
person's annotation arriving by webhook (delivered by Label Studio itself) or by polling;
and a service killed at every point in between, then restarted, ends with exactly one
Label Studio task and one index line per sample."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fixtures_labelstudio import LabelStudioRest

from sedna_sam.cloud import samples as q
from sedna_sam.cloud.config import PreAnnotationOptions, ServiceConfig
from sedna_sam.cloud.server import SECRET_HEADER, serve
from sedna_sam.cloud.service import FAULT_POINTS, AnnotationService
from sedna_sam.formats.trainids import read_trainids
from sedna_sam.images import encode_png
from sedna_sam.lifelong.data import read_index

SECRET = "e2e-webhook-secret"


class SimulatedCrash(BaseException):
    """Raised from the fault hook: like a kill, no stage catches it."""


def street(seed: int, h: int = 48, w: int = 64) -> bytes:
    from sedna_sam.labels import cityscapes
    from sedna_sam.synthetic import make_street_scene, render_scene

    return encode_png(render_scene(make_street_scene(h, w, seed=seed), cityscapes(), seed=seed))


def ship(store: Path, work: Path, node: str, seed: int) -> str:
    """Flag one synthetic frame on ``node`` and ship it the way the edge does."""
    from sedna_sam.edge.buffer import SampleBuffer, make_sample_id, sample_metadata
    from sedna_sam.edge.shipper import ship_once

    data = street(seed)
    sample_id = make_sample_id(f"frame-{seed}", data)
    meta = sample_metadata(
        sample_id, f"{sample_id}.png", data, score=0.8, scorer="msp", threshold=0.5,
        model_version="m0", node=node, frame_time=time.time(),
    )  # fmt: skip
    SampleBuffer(work / f"buffer-{node}").add(".png", data, meta)
    store.mkdir(exist_ok=True)  # the store root exists (the shipper never creates it)
    ship_once(work / f"buffer-{node}", str(store), node)
    return sample_id


@pytest.fixture(scope="module")
def cloud_env(ls_server, tmp_path_factory, tiny_annotate_options):
    """Store, dataset under Label Studio's document root, tiny models, Label Studio."""

    work = tmp_path_factory.mktemp("cloud")
    run = f"{time.time():.0f}"  # a fresh project even when a Label Studio outlives the session
    dataset = Path(ls_server.document_root) / f"cloud-{work.name}-{run}"
    opts = tiny_annotate_options  # B's: tiny SAM checkpoint + tiny Segformer, ~1 s per image
    # Task image URLs are made relative to Label Studio's document root, as in a deployment.
    env = pytest.MonkeyPatch()
    env.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(ls_server.document_root))
    yield {
        "work": work,
        "run": run,
        "store": work / "store",
        "dataset": dataset,
        "ls": ls_server,
        "pre_annotation": PreAnnotationOptions(
            sam_checkpoint=opts.ckpt_path, semantic_model=opts.semantic_model, device="cpu", sam=opts.sam
        ),
    }
    env.undo()


def make_config(env, labels, name: str, **overrides) -> ServiceConfig:
    values = dict(
        store=str(env["store"]),
        dataset_dir=env["dataset"],
        index_path=env["dataset"] / "index.txt",
        queue_url=f"sqlite:///{env['work']}/{name}.sqlite",
        labels=labels,
        ls_url=env["ls"].url,
        ls_token=env["ls"].token,
        project=f"cloud {name} {env['run']}",
        webhook_secret=SECRET,
        pre_annotation=env["pre_annotation"],
        poll_interval_s=3600,
        backoff_s=0,
        push_settle_s=0,  # the simulated crash comes after Label Studio answered: nothing is in flight
    )
    values.update(overrides)
    return ServiceConfig(**values)


def index_lines_for(index: Path, image: Path) -> list:
    return [s for s in read_index(index, missing_ok=True) if s.image.resolve() == image.resolve()]


def wait_for(predicate, timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_flagged_sample_to_index_line_by_webhook_and_by_polling(cloud_env, labels):
    """Served over HTTP: Label Studio itself POSTs the webhook when the person submits."""
    env = cloud_env
    config = make_config(env, labels, "e2e")
    service = AnnotationService(config)
    stop, ready = threading.Event(), threading.Event()

    def on_ready(server):
        # Label Studio reaches us on this port; registered when the service first talks to it.
        config.webhook_url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
        ready.set()

    thread = threading.Thread(
        target=serve,
        args=(service, "127.0.0.1", 0),
        kwargs={"interval_s": 0.2, "stop": stop, "ready": on_ready},
    )
    thread.start()
    try:
        assert ready.wait(30)
        by_hook = ship(env["store"], env["work"], "edge-1", seed=11)
        sample = wait_for(
            lambda: (s := service.queue.get(by_hook)) and s.state == q.IN_LABEL_STUDIO and s,
            120,
            "in_label_studio",
        )
        image = Path(sample.image_path)
        assert image.parent == env["dataset"] / "raw_data"
        assert (env["dataset"] / "ssa_output" / f"{by_hook}_semantic.json").is_file()
        person = LabelStudioRest(env["ls"].url, env["ls"].token)
        # The service registered its webhook (secret as a header) in the project. A Label
        # Studio with SSRF protection on refuses 127.0.0.1 URLs; then the test posts what
        # Label Studio would have posted, built from Label Studio's own records.
        ls_delivers = bool(person.call("GET", "/api/webhooks/", params={"project": service.ls.project_id}))

        def deliver(action: str, annotation: dict) -> None:
            if ls_delivers:
                return
            task = person.call("GET", f"/api/tasks/{sample.ls_task_id}")
            body = json.dumps({"action": action, "annotation": annotation, "task": task}).encode()
            req = urllib.request.Request(
                config.webhook_url, body, {"Content-Type": "application/json", SECRET_HEADER: SECRET}
            )
            urllib.request.urlopen(req, timeout=10).close()

        # Label Studio serves the task's image (local-files storage over raw_data/ connected).
        task = person.call("GET", f"/api/tasks/{sample.ls_task_id}")
        served = person.session.get(env["ls"].url + task["data"]["image"], timeout=30)
        assert served.status_code == 200 and served.content == image.read_bytes()
        annotation = person.annotate(sample.ls_task_id, relabel="bus")
        deliver("ANNOTATION_CREATED", annotation)
        # Label Studio posts ANNOTATION_CREATED to /webhook (with our secret header); no poll runs.
        done = wait_for(
            lambda: (s := service.queue.get(by_hook)) and s.state == q.INGESTED and s, 60, "ingested"
        )
        assert done.annotation_id == annotation["id"]
        assert service.metrics.webhooks["accepted"] >= 1
        label = env["dataset"] / "train_ids" / f"{by_hook}_TrainIds.png"
        train_ids = read_trainids(label)
        assert train_ids.dtype == np.uint16 and train_ids.shape == (48, 64)
        assert labels.label2id["bus"] in np.unique(train_ids)
        (line,) = index_lines_for(config.index_path, image)
        assert line.label.resolve() == label.resolve()

        # A correction after ingestion (ANNOTATION_UPDATED) rewrites the label, not the index.
        deliver("ANNOTATION_UPDATED", person.correct(annotation["id"], relabel="train"))
        wait_for(lambda: labels.label2id["train"] in np.unique(read_trainids(label)), 60, "corrected label")
        wait_for(lambda: service.queue.get(by_hook).state == q.INGESTED, 30, "re-ingested")
        assert len(index_lines_for(config.index_path, image)) == 1

        # Polling fallback: an annotation Label Studio tells nobody about.
        by_poll = ship(env["store"], env["work"], "edge-2", seed=12)
        sample = wait_for(
            lambda: (s := service.queue.get(by_poll)) and s.state == q.IN_LABEL_STUDIO and s,
            120,
            "in_label_studio",
        )
        for hook in person.call("GET", "/api/webhooks/", params={"project": service.ls.project_id}):
            person.call("DELETE", f"/api/webhooks/{hook['id']}/")
        person.annotate(sample.ls_task_id)
        time.sleep(1.0)
        assert service.queue.get(by_poll).state == q.IN_LABEL_STUDIO  # nobody told the service
        config.poll_interval_s = 0.5
        wait_for(lambda: service.queue.get(by_poll).state == q.INGESTED, 60, "ingested by polling")
        assert len(index_lines_for(config.index_path, Path(sample.image_path))) == 1

        # /metrics reflects it.
        with urllib.request.urlopen(config.webhook_url.replace("/webhook", "/metrics"), timeout=10) as resp:
            text = resp.read().decode()
        assert 'sedna_sam_queue_samples{state="ingested"} 2' in text
        assert 'sedna_sam_samples_processed_total{stage="ingest"}' in text
    finally:
        stop.set()
        service.wake.set()
        thread.join(30)
    project_tasks = person.project_tasks(service.ls.project_id)
    assert len(project_tasks) == 2


@pytest.fixture(scope="module")
def crash_project(cloud_env, labels):
    return make_config(cloud_env, labels, "crash")


@pytest.fixture(scope="module")
def engine(crash_project):
    """The loaded tiny SAM + Segformer, shared by the crashed and the restarted service
    (loading is not what these tests are about; the engine keeps no per-sample state)."""
    from sedna_sam.cloud.adapters import build_engine

    return build_engine(crash_project)


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_kill_and_restart_at_each_point_gives_one_task_and_one_line(cloud_env, crash_project, engine, point):
    env = cloud_env
    config = crash_project
    sample_id = ship(env["store"], env["work"], "edge-crash", seed=100 + FAULT_POINTS.index(point))
    person = LabelStudioRest(env["ls"].url, env["ls"].token)
    armed = {"on": True}

    def fault(at: str, sid: str) -> None:
        if armed["on"] and at == point and sid == sample_id:
            armed["on"] = False
            raise SimulatedCrash(at)

    def drive(service: AnnotationService) -> None:
        """Run the pipeline for this sample to the end, playing the person when asked."""
        for _ in range(10):
            service.run_until_idle(poll=True)
            s = service.queue.get(sample_id)
            if (
                s is not None
                and s.state == q.IN_LABEL_STUDIO
                and not person.call("GET", f"/api/tasks/{s.ls_task_id}")["annotations"]
            ):
                person.annotate(s.ls_task_id)
            elif s is not None and s.state == q.INGESTED:
                return

    first = AnnotationService(config, fault=fault, engine=engine)
    with pytest.raises(SimulatedCrash):
        drive(first)
    first.queue.close()
    assert not armed["on"], "the crash point was never reached"

    second = AnnotationService(config, engine=engine)  # restarted: same files, fresh queue/LS state
    drive(second)
    s = second.queue.get(sample_id)
    assert s.state == q.INGESTED, (s.state, s.last_error)
    image = Path(s.image_path)
    tasks = [
        t for t in person.project_tasks(second.ls.project_id) if t["data"]["image"].endswith(f"/{image.name}")
    ]
    assert len(tasks) == 1 and tasks[0]["id"] == s.ls_task_id
    assert len(index_lines_for(config.index_path, image)) == 1
    assert (env["dataset"] / "train_ids" / f"{sample_id}_TrainIds.png").is_file()
