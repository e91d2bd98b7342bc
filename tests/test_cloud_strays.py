"""A sample's second Label Studio task (a push cut short that Label Studio completed after
the next push had looked): the poll finds it by image and deletes it, or adopts it when a
person annotated it instead of the sample's own task, or leaves both for a person when
both are annotated (``sedna_sam.cloud.strays``).

The late task is made the way Label Studio makes it: the sample's own task JSON imported a
second time into the project, on a real Label Studio (``ls_server``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from fixtures_cloud import local_service_config
from fixtures_labelstudio import LabelStudioRest

from sedna_sam.cloud import samples as q
from sedna_sam.cloud.adapters import image_task_key
from sedna_sam.cloud.config import PreAnnotationOptions
from sedna_sam.cloud.queue import open_queue
from sedna_sam.cloud.service import AnnotationService
from sedna_sam.cloud.strays import TaskSummary, plan_strays, summarize_task
from sedna_sam.formats.trainids import read_trainids

# -- the plan, from listings (pure) ---------------------------------------------------


def _sample(queue, sample_id: str, task_id: int | None) -> q.Sample:
    queue.receive(sample_id, image_path=f"/data/raw_data/{sample_id}.png")
    queue.advance(sample_id, q.RECEIVED, q.PRE_ANNOTATED, image_path=f"/data/raw_data/{sample_id}.png")
    if task_id is not None:
        assert queue.set_task(sample_id, task_id)
    return queue.get(sample_id)


def _task(task_id: int, stem: str, annotated: bool = False, folder: str = "/data/raw_data") -> TaskSummary:
    """A listed task showing ``<folder>/<stem>.png``, keyed as the service keys its own."""
    key = image_task_key(f"{folder}/{stem}.png")
    return TaskSummary(task_id, key, (900 + task_id, "2026-11-30T10:00:00Z") if annotated else None)


@pytest.fixture
def queue(tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "/data")
    queue = open_queue(f"sqlite:///{tmp_path}/queue.sqlite")
    yield queue
    queue.close()


def test_an_unannotated_second_task_is_deleted_and_the_own_task_kept(queue):
    s = _sample(queue, "a", 10)
    (plan,) = plan_strays([_task(10, "a"), _task(11, "a"), _task(12, "other")], [s], image_task_key)
    assert (plan.keep.task_id, plan.delete, plan.conflicts, plan.adopts) == (10, [11], [], False)


def test_the_annotated_task_is_kept_whichever_it_is(queue):
    s = _sample(queue, "a", 10)
    (plan,) = plan_strays(
        [_task(10, "a"), _task(11, "a", annotated=True), _task(12, "a")], [s], image_task_key
    )
    assert (plan.keep.task_id, plan.delete, plan.conflicts, plan.adopts) == (11, [10, 12], [], True)
    (plan,) = plan_strays([_task(10, "a", annotated=True), _task(11, "a")], [s], image_task_key)
    assert (plan.keep.task_id, plan.delete, plan.adopts) == (10, [11], False)


def test_two_annotated_tasks_are_both_kept_for_a_person(queue):
    s = _sample(queue, "a", 10)
    (plan,) = plan_strays(
        [_task(10, "a", annotated=True), _task(11, "a", annotated=True)], [s], image_task_key
    )
    assert (plan.keep.task_id, plan.delete, plan.conflicts, plan.adopts) == (10, [], [11], False)


def test_a_sample_whose_own_task_is_gone_adopts_the_one_left(queue):
    s = _sample(queue, "a", 10)
    (plan,) = plan_strays([_task(13, "a"), _task(11, "a")], [s], image_task_key)
    assert (plan.keep.task_id, plan.delete, plan.adopts) == (11, [13], True)


def test_nothing_to_do_for_one_task_each_or_a_push_in_progress(queue):
    samples = [_sample(queue, "a", 10), _sample(queue, "b", 20), _sample(queue, "c", None)]
    # "c" has no stored task yet: its push may be the one that made task 30
    assert plan_strays([_task(10, "a"), _task(20, "b"), _task(30, "c")], samples, image_task_key) == []
    # the same file name in another folder of the document root is another image
    assert (
        plan_strays([_task(10, "a"), _task(11, "a", folder="/data/other/raw_data")], samples, image_task_key)
        == []
    )


def test_summaries_read_the_listing_as_label_studio_returns_it():
    task = {
        "id": 7,
        "data": {"image": "/data/local-files/?d=ds/raw_data/frame%201.png"},
        "annotations": [
            {"id": 1, "updated_at": "2026-11-30T10:00:00Z", "was_cancelled": False, "result": []},
            {"id": 2, "updated_at": "2026-11-30T11:00:00Z", "was_cancelled": True, "result": []},
        ],
    }
    assert summarize_task(task) == TaskSummary(
        7, "local:ds/raw_data/frame 1.png", (1, "2026-11-30T10:00:00Z")
    )
    assert summarize_task({"id": 8, "data": {"image": "s3://bucket/x.png"}}) == TaskSummary(
        8, "s3://bucket/x.png", None
    )


# -- on a real Label Studio ----------------------------------------------------------


@pytest.fixture
def service(ls_server, tmp_path, labels, tiny_segformer_dir, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(ls_server.document_root))
    dataset = Path(ls_server.document_root) / f"strays-{tmp_path.name}-{time.time():.0f}"
    config = local_service_config(
        tmp_path,
        labels,
        dataset_dir=dataset,
        index_path=dataset / "index.txt",
        ls_url=ls_server.url,
        ls_token=ls_server.token,
        project=f"strays {tmp_path.name} {time.time():.0f}",
        pre_annotation=PreAnnotationOptions(
            kind="semantic", semantic_model=str(tiny_segformer_dir), device="cpu"
        ),
        backoff_s=0,
    )
    service = AnnotationService(config)
    yield service
    service.queue.close()


def _in_label_studio(service: AnnotationService, seed: int) -> q.Sample:
    """Ship one frame and run the service until its task is in Label Studio."""
    from test_cloud_e2e import ship

    sample_id = ship(Path(service.config.store), Path(service.config.store).parent, "edge-strays", seed)
    service.run_until_idle(poll=False)
    sample = service.queue.get(sample_id)
    assert sample.state == q.IN_LABEL_STUDIO, (sample.state, sample.last_error)
    return sample


def _late_task(service: AnnotationService, rest: LabelStudioRest, sample: q.Sample) -> int:
    """What Label Studio commits for a push whose replica was killed: the same task again."""
    task = json.loads(service.layout.ls_task(Path(sample.image_path).stem).read_text())
    made = rest.call(
        "POST",
        f"/api/projects/{service.ls.project_id}/import",
        params={"return_task_ids": "true"},
        json=[task],
    )
    (task_id,) = made["task_ids"]
    assert task_id != sample.ls_task_id
    return task_id


def _tasks_of(service: AnnotationService, rest: LabelStudioRest, sample: q.Sample) -> list[int]:
    name = Path(sample.image_path).name
    return sorted(
        t["id"] for t in rest.project_tasks(service.ls.project_id) if t["data"]["image"].endswith(name)
    )


def test_the_poll_deletes_an_unannotated_second_task(service, ls_server):
    rest = LabelStudioRest(ls_server.url, ls_server.token)
    sample = _in_label_studio(service, seed=41)
    late = _late_task(service, rest, sample)
    assert _tasks_of(service, rest, sample) == sorted([sample.ls_task_id, late])

    service.poll()
    assert _tasks_of(service, rest, sample) == [sample.ls_task_id]
    assert service.queue.get(sample.sample_id).ls_task_id == sample.ls_task_id
    assert service.metrics.duplicate_tasks["deleted"] == 1
    service.poll()  # nothing left to do
    assert service.metrics.duplicate_tasks["deleted"] == 1

    # the person annotates the task that is left; it is ingested as usual
    annotation = rest.annotate(sample.ls_task_id)
    assert (
        service.annotation_event(sample.ls_task_id, annotation["id"], annotation["updated_at"]) == q.LABELLED
    )
    service.run_until_idle(poll=False)
    assert service.queue.get(sample.sample_id).state == q.INGESTED


def test_a_second_task_annotated_instead_is_adopted_and_ingested(service, ls_server):
    rest = LabelStudioRest(ls_server.url, ls_server.token)
    sample = _in_label_studio(service, seed=42)
    late = _late_task(service, rest, sample)
    annotation = rest.annotate(late)  # the person opened the other one

    assert service.poll() == 0  # the annotation is on a task the queue did not know
    now = service.queue.get(sample.sample_id)
    assert (now.ls_task_id, now.state) == (late, q.LABELLED)
    assert _tasks_of(service, rest, sample) == [late]  # the sample's empty own task is gone
    assert service.metrics.duplicate_tasks["adopted"] == 1

    service.run_until_idle(poll=False)
    done = service.queue.get(sample.sample_id)
    assert (done.state, done.annotation_id) == (q.INGESTED, annotation["id"]), done.last_error
    assert read_trainids(service.layout.trainids(Path(sample.image_path).stem)).shape == (48, 64)


def test_two_annotated_tasks_are_kept_and_reported_once(service, ls_server, caplog):
    rest = LabelStudioRest(ls_server.url, ls_server.token)
    sample = _in_label_studio(service, seed=43)
    late = _late_task(service, rest, sample)
    rest.annotate(sample.ls_task_id)
    rest.annotate(late, relabel="car")

    with caplog.at_level(logging.ERROR, logger="sedna_sam.cloud.strays"):
        service.poll()
        service.poll()
    reports = [r.getMessage() for r in caplog.records if "both are annotated" in r.getMessage()]
    assert len(reports) == 1 and f"{late}" in reports[0], reports
    assert _tasks_of(service, rest, sample) == sorted([sample.ls_task_id, late])
    assert service.queue.get(sample.sample_id).ls_task_id == sample.ls_task_id
    assert service.metrics.duplicate_tasks["conflict"] == 1
