"""Three `sedna-sam cloud serve` replicas on one PostgreSQL queue, against a real Label
Studio (``ls_server``) and a real PostgreSQL (``pg_server``), fed by the edge's own buffer
and shipper. Replicas are real processes killed with SIGKILL (see tests/cloud_replica.py)
and restarted under the same id; a simulated person annotates every task and delivers the
webhook to a replica picked at random, as a Kubernetes Service would.

Pre-annotation runs with ``--pre-annotation semantic`` on the tiny random-weight Segformer
(the service's fastest real path): what is under test is the queue, not the model.

What must hold, whatever was killed when: every sample ends ingested; Label Studio has
exactly one task per sample's image; the Sedna index exactly one line per sample; and no
sample was pre-annotated by two replicas.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cloud_replica import KILL_PLAN_ENV, WORK_LOG_ENV, Person, ReplicaPool, write_kill_plan
from fixtures_labelstudio import LabelStudioRest

from sedna_sam.cloud import queue as q
from sedna_sam.cloud.samples import FAILED, INGESTED
from sedna_sam.cloud.server import SECRET_HEADER
from sedna_sam.cloud.service import FAULT_POINTS
from sedna_sam.lifelong.data import read_index

SECRET = "replicas-webhook-secret"
N_REPLICAS = 3
POLL_INTERVAL_S = 10


def frame(seed: int) -> tuple[str, bytes]:
    """(sample id, PNG bytes) of one synthetic 48x64 street frame, id as the edge makes it."""
    from sedna_sam.edge.buffer import make_sample_id
    from sedna_sam.images import encode_png
    from sedna_sam.labels import cityscapes
    from sedna_sam.synthetic import make_street_scene, render_scene

    data = encode_png(render_scene(make_street_scene(48, 64, seed=seed), cityscapes(), seed=seed))
    return make_sample_id(f"frame-{seed}", data), data


def ship(store: Path, work: Path, node: str, frames: list[tuple[str, bytes]]) -> None:
    """Flag ``frames`` on ``node`` and ship them the way the edge does."""
    from sedna_sam.edge.buffer import SampleBuffer, sample_metadata
    from sedna_sam.edge.shipper import ship_once

    buffer = SampleBuffer(work / f"buffer-{node}")
    for sample_id, data in frames:
        meta = sample_metadata(
            sample_id, f"{sample_id}.png", data, score=0.8, scorer="msp", threshold=0.5,
            model_version="m0", node=node, frame_time=time.time(),
        )  # fmt: skip
        buffer.add(".png", data, meta)
    ship_once(work / f"buffer-{node}", str(store), node)


@dataclass
class Cluster:
    work: Path
    store: Path
    dataset: Path
    index: Path
    plan: Path
    work_log: Path
    queue: q.Queue
    pool: ReplicaPool
    rest: LabelStudioRest
    project: str
    strays_seen: int = 0  # second tasks found at the end (then deleted by a poll)

    def project_id(self) -> int:
        found = [p for p in self.rest.call("GET", "/api/projects", params={"page_size": 1000})["results"]]
        (project,) = [p for p in found if p["title"] == self.project]
        return project["id"]

    def drive(self, person: Person, done, timeout_s: float, chaos=None) -> None:
        """Keep replicas running (restart the dead), play the person, until ``done()``."""
        deadline = time.time() + timeout_s
        while not done():
            if time.time() > deadline:
                raise AssertionError(
                    f"timed out; queue {self.queue.counts()}, errors {self.queue.last_errors(3)}\n"
                    f"{self.pool.logs_tail()}"
                )
            if chaos is not None:
                chaos()
            self.pool.restart_dead()
            if not person.work_once():
                time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(ls_server, pg_server, tmp_path_factory, tiny_segformer_dir):
    work = tmp_path_factory.mktemp("replicas")
    run = f"{time.time():.0f}"  # a fresh project even when a Label Studio outlives the session
    dataset = Path(ls_server.document_root) / f"replicas-{work.name}-{run}"
    store = work / "store"
    store.mkdir()
    queue_url = pg_server.create_database(f"replicas_{run}")
    plan = work / "kill-plan.json"
    write_kill_plan(plan, {})
    project = f"replicas {run}"
    args = [
        "--store", str(store), "--dataset-dir", str(dataset), "--ls-url", ls_server.url, "--project", project,
        "--interval", "0.3", "--poll-interval", str(POLL_INTERVAL_S), "--batch", "8", "--lease", "30", "--max-attempts", "20", "--push-settle", "10",
        "--pre-annotation", "semantic", "--semantic-model", str(tiny_segformer_dir), "--device", "cpu",
    ]  # fmt: skip
    env = {
        "SEDNA_SAM_QUEUE_URL": queue_url,  # as from a Secret: not on the command line
        "LABEL_STUDIO_API_KEY": ls_server.token,
        "SEDNA_SAM_WEBHOOK_SECRET": SECRET,
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(ls_server.document_root),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
        KILL_PLAN_ENV: str(plan),
        WORK_LOG_ENV: str(work / "work.log"),
    }
    pool = ReplicaPool(N_REPLICAS, args, env, work)
    queue = q.open_queue(queue_url)
    pool.start_all()
    try:
        yield Cluster(
            work, store, dataset, dataset / "index.txt", plan, work / "work.log", queue, pool,
            LabelStudioRest(ls_server.url, ls_server.token), project,
        )  # fmt: skip
    finally:
        pool.stop()
        queue.close()
    logs = "\n".join((work / f"{rid}.log").read_text(errors="replace") for rid in pool.ids)
    assert pg_server.password not in logs, "the queue password reached a log"


def tasks_once_settled(cluster: Cluster, images: dict[str, Path], polls: int = 4) -> tuple[list[dict], int]:
    """The project's tasks, once no image shows in two; and how many second tasks there were
    at first. A push cut short by a kill can be completed by Label Studio after the next
    push looked for it; the service's poll (every 10 s here) deletes such a task
    (sedna_sam.cloud.strays), so this waits up to ``polls`` poll intervals, no more."""
    names = {image.name for image in images.values()}
    deadline = time.time() + polls * POLL_INTERVAL_S
    first = None
    while True:
        tasks = cluster.rest.project_tasks(cluster.project_id())
        per_image = collections.Counter(t["data"]["image"].rsplit("/", 1)[-1] for t in tasks)
        extra = sum(n - 1 for name, n in per_image.items() if name in names and n > 1)
        first = extra if first is None else first
        if extra == 0 or time.time() > deadline:
            return tasks, first
        cluster.pool.restart_dead()
        time.sleep(1)


def check_end_state(cluster: Cluster, sample_ids: list[str]) -> dict[str, int]:
    """Every sample ingested, one Label Studio task and one index line each, pre-annotated
    by one replica at most; returns how often each was pre-annotated."""
    queue = cluster.queue
    images = {}
    for sid in sample_ids:
        s = queue.get(sid)
        assert s is not None and s.state == INGESTED, (sid, s and (s.state, s.last_error))
        images[sid] = Path(s.image_path)
        assert (cluster.dataset / "train_ids" / f"{sid}_TrainIds.png").is_file()
    tasks, cluster.strays_seen = tasks_once_settled(cluster, images)
    per_image = collections.Counter(t["data"]["image"].rsplit("/", 1)[-1] for t in tasks)
    for sid, image in images.items():
        assert per_image[image.name] == 1, f"{sid}: {per_image[image.name]} Label Studio tasks"
        assert queue.get(sid).ls_task_id in {t["id"] for t in tasks}
    lines = collections.Counter(s.image.resolve() for s in read_index(cluster.index))
    for sid, image in images.items():
        assert lines[image.resolve()] == 1, f"{sid}: {lines[image.resolve()]} index lines"
    runs = collections.Counter(
        line.split()[0] for line in cluster.work_log.read_text().splitlines()
    ) if cluster.work_log.exists() else collections.Counter()  # fmt: skip
    assert all(runs[sid] <= 1 for sid in sample_ids), {sid: runs[sid] for sid in sample_ids if runs[sid] > 1}
    return runs


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_kill_9_a_replica_at_each_fault_point(cluster, point):
    """Whichever replica reaches ``point`` for the sample is killed -9 there and restarted;
    the three replicas finish the sample: one task, one index line."""
    sample_id, data = frame(500 + FAULT_POINTS.index(point))
    write_kill_plan(cluster.plan, {sample_id: point})  # before the sample exists anywhere
    ship(cluster.store, cluster.work, "edge-fault", [(sample_id, data)])
    person = Person(cluster.rest, cluster.queue, cluster.pool, SECRET, SECRET_HEADER)
    done = lambda: (s := cluster.queue.get(sample_id)) is not None and s.state == INGESTED  # noqa: E731
    cluster.drive(person, done, timeout_s=120)
    assert (cluster.plan.with_name(f"killed-{sample_id}")).exists(), "no replica reached the fault point"
    check_end_state(cluster, [sample_id])


def test_200_samples_3_replicas_random_kill_9(cluster):
    """200 flagged samples, random kill -9 of replicas while they work: none lost, none
    doubled in Label Studio or the index, none pre-annotated twice."""
    write_kill_plan(cluster.plan, {})
    frames = [frame(1000 + i) for i in range(200)]
    ids = [sid for sid, _ in frames]
    person = Person(cluster.rest, cluster.queue, cluster.pool, SECRET, SECRET_HEADER)
    rng = random.Random(15)
    kills_before = cluster.pool.kills
    next_kill = [time.time() + rng.uniform(3, 6)]

    def chaos() -> None:
        """kill -9 a random live replica every 5-10 s until every sample is ingested."""
        if time.time() >= next_kill[0]:
            live = [i for i in range(N_REPLICAS) if cluster.pool.alive(i)]
            if live:
                cluster.pool.kill(rng.choice(live))
            next_kill[0] = time.time() + rng.uniform(5, 10)

    shipper = threading.Thread(target=ship, args=(cluster.store, cluster.work, "edge-bulk", frames))
    shipper.start()
    started = time.time()
    cluster.drive(
        person,
        lambda: _all_ingested(cluster, ids),
        timeout_s=400,
        chaos=chaos,
    )
    shipper.join()
    seconds = time.time() - started
    kills = cluster.pool.kills - kills_before
    assert kills >= 3, f"only {kills} kills happened in {seconds:.0f} s"
    runs = check_end_state(cluster, ids)
    assert sum(runs[sid] for sid in ids) >= len(ids) - kills  # at most one lost record per kill
    assert cluster.queue.counts()[FAILED] == 0
    print(
        f"200 samples, {N_REPLICAS} replicas, {kills} kill -9, {seconds:.0f} s; "
        f"webhooks delivered {person.delivered}, left to polling {person.undelivered}; "
        f"second Label Studio tasks settled at the end: {cluster.strays_seen}"
    )


def _all_ingested(cluster: Cluster, ids: list[str]) -> bool:
    rows = cluster.queue._read(
        "SELECT COUNT(*) FROM samples WHERE state = ? AND sample_id = ANY(?)", (INGESTED, ids)
    )
    return rows[0][0] == len(ids)
