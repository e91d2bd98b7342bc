"""The cloud annotation service: flagged samples in, Sedna index lines out.

One pass of :meth:`AnnotationService.step`::

    store/flagged/<node>/<id>.json  --scan-->        received        (row in the queue)
    received        --pre_annotate-->  pre_annotated    image checked (size, sha256) and copied
                                                        into raw_data/, SAM + voting -> SSA JSON,
                                                        polygons -> ls_data/ task JSON
    pre_annotated   --push-->          in_label_studio  a prediction task in Label Studio (its
                                                        id kept in the queue)
    in_label_studio --(person)-->      labelled         webhook POST /webhook, or polling
    labelled        --ingest-->        ingested         TrainIds PNG + "<image> <label>" line

Each stage does idempotent work, then one compare-and-set transition (see
:mod:`sedna_sam.cloud.queue`); a process killed anywhere resumes on restart without
losing or doubling anything. ``fault`` is a hook called at every point where a crash
would matter; tests raise from it (or kill the process there) to crash the service.

Any number of replicas may share one queue (PostgreSQL): each pass *claims* its samples
with a lease under the replica's id, so replicas split the work instead of repeating it;
a replica that dies holds its samples until the lease ends (or it restarts under the same
id). The two steps that a compare-and-set cannot make safe run under a lock shared by
every replica (:meth:`~sedna_sam.cloud.queue_store.QueueStore.lock`): creating the Label Studio
task of a sample (with a recorded intent, so a replica that died after creating it is
followed by a search, not by a second task), and rewriting the Sedna index file.
Polling Label Studio is taken in turns: one replica per interval; the poll also settles
a second task that Label Studio completed after that search (:mod:`.strays`).

Stages are plain functions registered by the state they start from (:data:`STAGES`).
The settings are :mod:`sedna_sam.cloud.config`'s; the store is read by
:mod:`sedna_sam.cloud.store`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from sedna_sam.cloud import samples as q
from sedna_sam.cloud.config import ServiceConfig
from sedna_sam.cloud.metrics import Scrape, ServiceMetrics, job_rounds
from sedna_sam.cloud.queue import default_replica_id, open_queue
from sedna_sam.cloud.store import fetch_sample, scan_store
from sedna_sam.errors import SednaSamError, is_connection_error
from sedna_sam.storage import DatasetLayout, url_filesystem

log = logging.getLogger(__name__)

FaultHook = Callable[[str, str], None]  # (point, sample_id) -> None; raises to simulate a crash


class Deferred(Exception):
    """A stage cannot run yet for a reason outside the sample (the queue holds it until
    then); not a failure: no attempt is counted and no error recorded."""


# ----------------------------------------------------------------------------- the service


class AnnotationService:
    """The queue, the stages, and the collaborators (pre-annotation engine, Label Studio).

    ``engine`` and ``ls`` are built lazily on first use so ``cloud status`` and the HTTP
    endpoints work without loading SAM; an already loaded engine may be passed in. Tests
    pass a ``fault`` hook.
    """

    def __init__(self, config: ServiceConfig, *, fault: FaultHook | None = None, engine=None) -> None:
        self.config = config
        self.layout = DatasetLayout(Path(config.dataset_dir))
        self.queue = open_queue(config.queue_url)
        self.replica_id = config.replica_id or default_replica_id()
        released = self.queue.release_all(self.replica_id)
        if released:
            log.info("replica %s restarted: %d sample(s) it held are free again", self.replica_id, released)
        self.metrics = ServiceMetrics(scrape=self.scrape)
        self.fault = fault
        self.wake = threading.Event()  # set by the webhook so ingestion runs at once
        self.started_at = time.time()
        self.last_step_at: float | None = None
        self.last_poll_at = 0.0
        self.reported_conflicts: set[tuple[str, int]] = set()  # (sample, task): logged once
        self._engine = engine  # a loaded pre-annotation engine may be shared (it keeps no per-sample state)
        self._ls = None
        self._store_fs, self._store_root = url_filesystem(config.store)

    # -- collaborators ----------------------------------------------------------------

    @property
    def engine(self):
        if self._engine is None:
            from sedna_sam.cloud import adapters

            self._engine = adapters.build_engine(self.config)
        return self._engine

    @property
    def ls(self):
        if self._ls is None:
            from sedna_sam.cloud import adapters

            # Replicas starting together would each find no project (storage, webhook) and
            # make one: the first makes it, the others find it.
            with self.queue.lock(f"label-studio:{self.config.ls_url}:{self.config.project}"):
                self._ls = adapters.connect_label_studio(self.config)
        return self._ls

    def _at(self, point: str, sample_id: str) -> None:
        if self.fault is not None:
            self.fault(point, sample_id)

    def scrape(self) -> Scrape:
        """What ``/metrics`` reads at each scrape: the queue, the job's rounds."""
        from sedna_sam.cloud.status import queue_summary

        summary = queue_summary(self.queue.all_samples())
        rounds = job_rounds(self.config.job_output_dir)
        return Scrape(summary.counts, summary.flag_to_label, rounds, up_since=self.started_at)

    # -- one pass ---------------------------------------------------------------------

    def scan(self) -> int:
        """Add samples the store has and the queue does not; returns how many."""
        known = self.queue.known_ids()
        added = 0
        for s in scan_store(self._store_fs, self._store_root):
            if s.sample_id in known:
                continue
            if self.queue.receive(s.sample_id, node=s.node, source=s.json_path):
                log.info("received %s from node %s", s.sample_id, s.node)
                added += 1
                known.add(s.sample_id)
            self._at("scan:received", s.sample_id)
        return added

    def step(self, *, poll: bool | None = None) -> dict[str, int]:
        """One pass: scan the store, run every stage on due samples, poll Label Studio
        when due (or when ``poll`` is True). Returns samples moved per stage."""
        moved = {"received": self.scan()}
        for state, (stage, _) in STAGES.items():
            if state == q.LABELLED and (poll or (poll is None and self._poll_due())):
                moved["labelled"] = self.poll()
            claimed = self.queue.claim(
                state, self.config.batch, owner=self.replica_id, lease_s=self.config.lease_s
            )
            moved[stage] = sum(self._run_claimed(state, s) for s in claimed)
        self.last_step_at = time.time()
        return moved

    def _run_claimed(self, state: str, sample: q.Sample) -> bool:
        """Run one sample of a claimed batch: renew its lease first (the batch's earlier
        items took time) and work on the row as it is now; skip it when the lease was lost
        to another replica meanwhile. The lease ends when the stage is done, whether or
        not it moved the sample (a newer annotation may need another replica at once)."""
        current = self.queue.renew(sample.sample_id, state, self.replica_id, self.config.lease_s)
        if current is None:
            log.debug("%s: no longer this replica's (%s), skipped", sample.sample_id, self.replica_id)
            return False
        done = self.run_stage(state, current)
        self.queue.release(sample.sample_id, self.replica_id)
        return done

    def run_until_idle(self, max_steps: int = 50, *, poll: bool | None = None) -> None:
        """Step until a pass moves nothing (tests and one-shot runs)."""
        for _ in range(max_steps):
            if not any(self.step(poll=poll).values()):
                return

    def run_stage(self, state: str, sample: q.Sample) -> bool:
        """Run the stage out of ``state`` on one sample; failures are counted in the queue
        (back-off, then ``failed``) and never stop the pass. A BaseException (a crash,
        KeyboardInterrupt) is not caught: the process dies and a restart resumes."""
        stage, func = STAGES[state]
        start = time.perf_counter()
        try:
            func(self, sample)
        except Deferred as why:
            log.info("%s %s waits: %s", stage, sample.sample_id, why)
            return False
        except Exception as exc:  # noqa: BLE001 - one bad sample must not stop the service
            seconds = time.perf_counter() - start
            self.metrics.observe(stage, seconds, ok=False)
            message = str(exc) if isinstance(exc, SednaSamError) else f"{type(exc).__name__}: {exc}"
            transient = is_connection_error(exc)
            after = self.queue.record_failure(
                sample.sample_id,
                state,
                message,
                max_attempts=self.config.max_attempts,
                backoff_s=self.config.backoff_s,
                transient=transient,
            )
            if transient:
                log.warning(
                    "%s %s waits: cannot connect (%s); not counted as an attempt",
                    stage,
                    sample.sample_id,
                    message,
                )
            else:
                level = logging.ERROR if after is not None and after.state == q.FAILED else logging.WARNING
                log.log(
                    level,
                    "%s %s failed (attempt %s): %s",
                    stage,
                    sample.sample_id,
                    after and after.attempts,
                    message,
                )
            if not isinstance(exc, SednaSamError):
                log.debug("%s", traceback.format_exc())
            return False
        self.metrics.observe(stage, time.perf_counter() - start, ok=True)
        return True

    # -- Label Studio tells us about annotations --------------------------------------

    def annotation_event(self, task_id: int, annotation_id: int, updated_at: str | None) -> str:
        """A person submitted or updated annotation ``annotation_id`` of task ``task_id``
        (from the webhook or a poll). Idempotent; returns the queue's outcome."""
        outcome = self.queue.mark_labelled(task_id, annotation_id, updated_at)
        if outcome == q.LABELLED:
            log.info("task %s: annotation %s (%s) to ingest", task_id, annotation_id, updated_at)
            self.wake.set()
        return outcome

    def _poll_due(self) -> bool:
        """Time to poll, and this replica's turn: replicas share one poll per interval."""
        if time.time() - self.last_poll_at < self.config.poll_interval_s:
            return False
        return self.queue.take_turn("poll-label-studio", self.config.poll_interval_s)

    def poll(self) -> int:
        """The webhook's fallback: ask Label Studio for the newest annotation of every task
        still waiting for a person (and of ingested ones, for later corrections). The same
        listing finds a sample's second tasks, which :mod:`sedna_sam.cloud.strays` settles."""
        from sedna_sam.cloud import adapters
        from sedna_sam.cloud.strays import plan_strays, settle

        self.last_poll_at = time.time()
        samples = self.queue.all_samples()  # before the listing (see plan_strays)
        waiting = {
            s.ls_task_id
            for s in samples
            if s.ls_task_id is not None and s.state in (q.IN_LABEL_STUDIO, q.INGESTED)
        }
        if not any(s.ls_task_id is not None for s in samples):
            return 0
        moved = 0
        try:
            tasks = adapters.project_tasks(self.ls)
        except Exception as exc:  # noqa: BLE001 - Label Studio down: try again next poll
            log.warning("polling Label Studio failed: %s", exc)
            return 0
        for task in tasks:
            if task.task_id in waiting and task.newest is not None:
                if self.annotation_event(task.task_id, *task.newest) == q.LABELLED:
                    moved += 1
        for plan in plan_strays(tasks, samples, adapters.image_task_key):
            try:
                settle(self, plan)
            except Exception as exc:  # noqa: BLE001 - the next poll tries again
                log.warning("%s: settling its second Label Studio tasks failed: %s", plan.sample_id, exc)
        return moved


# ----------------------------------------------------------------------------- stages


def pre_annotate(service: AnnotationService, sample: q.Sample) -> None:
    """received -> pre_annotated: fetch and check the image, SAM + voting, write the SSA
    JSON and the Label Studio task JSON (both atomic; skipped when already there)."""
    from sedna_sam.cloud import adapters

    layout = service.layout
    image, meta = fetch_sample(service._store_fs, sample.source, layout.raw_data, root=service._store_root)
    service._at("pre_annotate:fetched", sample.sample_id)
    adapters.pre_annotate(service.engine, service.config, layout, image)
    service._at("pre_annotate:written", sample.sample_id)
    service.queue.advance(sample.sample_id, q.RECEIVED, q.PRE_ANNOTATED, image_path=str(image), meta=meta)
    service._at("pre_annotate:committed", sample.sample_id)


def push(service: AnnotationService, sample: q.Sample) -> None:
    """pre_annotated -> in_label_studio: one prediction task per image. The task id is
    stored before the state moves, so a restart at any point never creates a second one.

    Replicas: creating the task runs under the sample's lock, and records its start first
    (:meth:`~sedna_sam.cloud.queue.Queue.begin_push`). A push that finds none knows no task
    exists and creates it without reading the project's tasks. One that finds an earlier
    start (a replica died, or its request timed out, between sending the task and storing
    its id) lets that request settle (``push_settle_s``: Label Studio finishes a request
    whose client has gone), then looks the image up in Label Studio before creating one.
    Should that request commit later still, the poll deletes the extra task (:mod:`.strays`)."""
    from sedna_sam.cloud import adapters

    task_id = sample.ls_task_id
    if task_id is None:
        ls = service.ls  # connected first: Label Studio down is no push started
        with service.queue.lock(f"push:{sample.sample_id}"):
            current = service.queue.get(sample.sample_id)
            task_id = current.ls_task_id if current is not None else None
            if task_id is None:
                started_before = current.push_started_at if current is not None else None
                if started_before is not None and time.time() < started_before + service.config.push_settle_s:
                    until = started_before + service.config.push_settle_s
                    service.queue.defer(sample.sample_id, q.PRE_ANNOTATED, until)
                    raise Deferred(
                        f"a push started at {time.strftime('%H:%M:%S', time.localtime(started_before))} was cut "
                        f"short; looking for its Label Studio task after {until - time.time():.0f} s"
                    )
                service.queue.begin_push(sample.sample_id)
                task_id = adapters.push_task(
                    ls, service.layout, Path(sample.image_path), look_first=started_before is not None
                )
                service._at("push:created", sample.sample_id)
                service.queue.set_task(sample.sample_id, task_id)
                service._at("push:stored", sample.sample_id)
    service.queue.advance(sample.sample_id, q.PRE_ANNOTATED, q.IN_LABEL_STUDIO)
    log.info("%s is Label Studio task %s", sample.sample_id, task_id)
    service._at("push:committed", sample.sample_id)


def ingest(service: AnnotationService, sample: q.Sample) -> None:
    """labelled -> ingested: the person's polygons -> 16-bit TrainIds PNG -> one index
    line. The transition only happens if the annotation is still the version converted
    (a correction that arrived meanwhile is ingested on the next pass)."""
    from sedna_sam.cloud import adapters

    image = Path(sample.image_path)
    label = service.layout.trainids(image.stem)
    adapters.write_trainids_from_task(
        service.ls, service.config.labels, sample.ls_task_id, sample.annotation_id, label
    )
    service._at("ingest:trainids", sample.sample_id)
    # The index is rewritten whole (atomic rename): one writer at a time across replicas,
    # which a file lock on a shared volume does not promise on every filesystem.
    with service.queue.lock(f"index:{service.config.index_path}"):
        added = adapters.append_index(service.config.index_path, image, label)
    service._at("ingest:indexed", sample.sample_id)
    moved = service.queue.advance(
        sample.sample_id,
        q.LABELLED,
        q.INGESTED,
        expect={"annotation_at": sample.annotation_at, "annotation_id": sample.annotation_id},
        ingested_annotation_at=sample.annotation_at,
    )
    log.info(
        "%s ingested%s%s",
        sample.sample_id,
        "" if added else " (index line already there)",
        "" if moved else "; a newer annotation arrived, ingesting again",
    )
    service._at("ingest:committed", sample.sample_id)


# Stage out of each state, in pipeline order. ``in_label_studio`` has no stage: it waits
# for a person (webhook or poll).
STAGES: dict[str, tuple[str, Callable[[AnnotationService, q.Sample], None]]] = {
    q.RECEIVED: ("pre_annotate", pre_annotate),
    q.PRE_ANNOTATED: ("push", push),
    q.LABELLED: ("ingest", ingest),
}

# Points where ``fault`` is called, in pipeline order (tests crash at each one).
FAULT_POINTS = (
    "scan:received",
    "pre_annotate:fetched",
    "pre_annotate:written",
    "pre_annotate:committed",
    "push:created",
    "push:stored",
    "push:committed",
    "ingest:trainids",
    "ingest:indexed",
    "ingest:committed",
)
