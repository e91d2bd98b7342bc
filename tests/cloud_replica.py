"""Replicas of `sedna-sam cloud serve` for the multi-replica tests, and the person who
annotates for them.

Each replica is its own process running the real CLI (``sedna_sam.cli.main(["cloud",
"serve", ...])``), with its own queue connections, Label Studio session and HTTP port,
and is killed with SIGKILL: by the test (at a random moment) or by itself at a fault
point named in a kill plan. Replicas are forked from a multiprocessing *forkserver* that
imported torch and transformers once: a restart then takes a fraction of a second instead
of the ~10 s those imports cost on a 2-core machine, which is what lets a test restart
replicas dozens of times.

Two hooks are installed in each replica (test-only, by patching before the CLI runs):

- the service's ``fault`` hook reads the kill plan (``{sample_id: fault point}``, JSON at
  ``$SEDNA_SAM_TEST_KILL_PLAN``) and SIGKILLs its own process the first time it reaches
  that point for that sample (a ``killed-<sample id>`` file records it);
- every finished pre-annotation appends ``<stem> <replica>`` to ``$SEDNA_SAM_TEST_WORK_LOG``,
  so a test can count how often each sample was pre-annotated across all replicas.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

PRELOAD = [
    "replica_preload",  # torch, transformers' Segformer classes, the service's modules
    "psycopg",
    "requests",
    "sedna_sam.annotate.batch",
    "sedna_sam.annotate.semantic",
    "sedna_sam.segformer",
    "sedna_sam.formats.labelstudio",
    "sedna_sam.convert",
    "sedna_sam.labelstudio.client",
]
KILL_PLAN_ENV = "SEDNA_SAM_TEST_KILL_PLAN"
WORK_LOG_ENV = "SEDNA_SAM_TEST_WORK_LOG"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_kill_plan(path: Path, plan: dict[str, str]) -> None:
    """Replace the kill plan atomically (replicas read it at every fault point)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- inside a replica


def _kill_at_planned_point(point: str, sample_id: str) -> None:
    plan_path = os.environ.get(KILL_PLAN_ENV)
    if not plan_path:
        return
    try:
        plan = json.loads(Path(plan_path).read_text())
    except (OSError, ValueError):
        return
    if plan.get(sample_id) != point:
        return
    marker = Path(plan_path).with_name(f"killed-{sample_id}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return  # killed there once already: this time it goes through
    os.kill(os.getpid(), signal.SIGKILL)


def _install_hooks(replica: str) -> None:
    from sedna_sam.annotate import batch as batch_mod
    from sedna_sam.cloud import service as service_mod

    original_init = service_mod.AnnotationService.__init__

    def init(self, config, *, fault=None, engine=None):
        original_init(self, config, fault=fault or _kill_at_planned_point, engine=engine)

    service_mod.AnnotationService.__init__ = init

    original_annotate_file = batch_mod.annotate_file

    def annotate_file(annotator, image_path, *args, **kwargs):
        timings = original_annotate_file(annotator, image_path, *args, **kwargs)
        work_log = os.environ.get(WORK_LOG_ENV)
        if work_log:
            fd = os.open(work_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, f"{Path(image_path).stem} {replica}\n".encode())  # one write: atomic append
            finally:
                os.close(fd)
        return timings

    batch_mod.annotate_file = annotate_file


def replica_main(args: list[str], env: dict[str, str], log_path: str, replica: str) -> None:
    """A replica's process: output to its log, hooks in, then the real CLI."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    _install_hooks(replica)
    from sedna_sam.cli import main

    code = main(args)
    os._exit(code or 0)


# ----------------------------------------------------------------------------- the test's side


class ReplicaPool:
    """``n`` replicas ``replica-0..n-1``, each on its own HTTP port, restartable under the
    same id (so a restarted replica frees the samples it held at once)."""

    def __init__(self, n: int, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.args, self.env, self.workdir = args, env, workdir
        self.ids = [f"replica-{i}" for i in range(n)]
        self.ports = [free_port() for _ in range(n)]
        self.procs: list = [None] * n
        self.starts = [0] * n
        self.kills = 0

    def start(self, i: int) -> None:
        args = [
            "cloud", "serve", *self.args,
            "--replica-id", self.ids[i], "--host", "127.0.0.1", "--port", str(self.ports[i]),
        ]  # fmt: skip
        log_path = str(self.workdir / f"{self.ids[i]}.log")
        proc = self.ctx.Process(
            target=replica_main, args=(args, self.env, log_path, self.ids[i]), daemon=True
        )
        proc.start()
        self.procs[i] = proc
        self.starts[i] += 1

    def start_all(self) -> None:
        for i in range(len(self.ids)):
            self.start(i)

    def alive(self, i: int) -> bool:
        return self.procs[i] is not None and self.procs[i].is_alive()

    def kill(self, i: int) -> None:
        """kill -9."""
        proc = self.procs[i]
        if proc is not None and proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
            self.kills += 1

    def restart_dead(self) -> list[int]:
        """Start again every replica that died (killed by the test or by a kill plan)."""
        dead = [i for i in range(len(self.ids)) if not self.alive(i)]
        for i in dead:
            if self.procs[i] is not None:
                self.procs[i].join(5)
            self.start(i)
        return dead

    def live_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.ports[i]}" for i in range(len(self.ids)) if self.alive(i)]

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.is_alive():
                proc.terminate()  # SIGTERM: the CLI stops cleanly
        for proc in self.procs:
            if proc is not None:
                proc.join(20)
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.join(5)

    def logs_tail(self, chars: int = 3000) -> str:
        out = []
        for rid in self.ids:
            path = self.workdir / f"{rid}.log"
            if path.exists():
                out.append(f"--- {rid}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


class Person:
    """Annotates every task the replicas put in Label Studio (one rectangle of road, so it
    does not depend on what the random model predicted), then delivers the webhook to a
    live replica picked at random, as a Kubernetes Service would; a delivery that fails
    (the replica just died) is left to polling, as with Label Studio itself."""

    def __init__(self, rest, queue, pool: ReplicaPool, secret: str, secret_header: str) -> None:
        self.rest, self.queue, self.pool = rest, queue, pool
        self.secret, self.secret_header = secret, secret_header
        self.annotated: dict[int, int] = {}  # task id -> annotation id
        self.delivered = self.undelivered = 0
        self.stop = threading.Event()
        self.errors: list[str] = []

    def annotate(self, task_id: int) -> dict:
        result = [
            {
                "from_name": "label", "to_name": "image", "type": "polygonlabels",
                "original_width": 64, "original_height": 48, "image_rotation": 0,
                # Label Studio's points are percentages: the bottom half of the frame.
                "value": {"points": [[0, 50], [100, 50], [100, 100], [0, 100]], "polygonlabels": ["road"]},
            }
        ]  # fmt: skip
        return self.rest.call("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result})

    def deliver(self, task_id: int, annotation: dict) -> None:
        urls = self.pool.live_urls()
        body = json.dumps({"action": "ANNOTATION_CREATED", "annotation": annotation, "task": {"id": task_id}})
        if urls:
            req = urllib.request.Request(
                random.choice(urls) + "/webhook",
                body.encode(),
                {"Content-Type": "application/json", self.secret_header: self.secret},
            )
            try:
                urllib.request.urlopen(req, timeout=10).close()
                self.delivered += 1
                return
            except OSError:
                pass
        self.undelivered += 1

    def work_once(self) -> int:
        from sedna_sam.cloud import samples as q

        done = 0
        for s in self.queue.in_state(q.IN_LABEL_STUDIO):
            if s.ls_task_id is None or s.ls_task_id in self.annotated:
                continue
            annotation = self.annotate(s.ls_task_id)
            self.annotated[s.ls_task_id] = annotation["id"]
            self.deliver(s.ls_task_id, annotation)
            done += 1
        return done

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.work_once():
                    time.sleep(0.3)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(exc))
                time.sleep(1)
