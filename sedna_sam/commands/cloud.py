"""``sedna-sam cloud serve|status|retry``: the cloud annotation service and its queue."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sedna_sam.cloud.queue_store import DEFAULT_LEASE_S  # light: no database driver is imported
from sedna_sam.commands import add_config_path, add_dataset_dir
from sedna_sam.sedna_compat import get_param

if TYPE_CHECKING:
    from sedna_sam.cloud.config import PreAnnotationOptions, ServiceConfig

SERVE_DESCRIPTION = """\
Run the cloud annotation service: pick up samples the edge shipped to the store
(<store>/flagged/<node>/<id>.json + image), check and copy each image into the dataset's
raw_data/, pre-annotate it (SAM + semantic voting), push it to Label Studio as a task with
predictions, wait for a person to submit or correct the annotation (webhook POST /webhook,
polling as a fallback), convert it to a 16-bit TrainIds PNG and append
"<image> <label>" to the Sedna Dataset's txt index. Sedna's local controller counts those
lines and starts training when the LifelongLearningJob trigger is passed.

Every step is recorded in a queue (SQLite by default); a killed service resumes where it
stopped, without a second Label Studio task or a second index line.

Replicas: with --queue postgresql://user@host:5432/db any number of `cloud serve`
processes (a Deployment's pods) share one queue. Each pass claims samples with a lease
(--lease seconds) under the replica's id (--replica-id: default the pod's host name), so
every sample is pre-annotated once, pushed to Label Studio once and ingested once,
whichever replica gets the webhook; a replica that dies mid-sample holds it until the
lease ends. All replicas must mount the dataset at the same path. Put the URL (or just
the password, as PGPASSWORD) in a Secret; it is never logged with its password.

HTTP: GET /healthz, GET /metrics (Prometheus), POST /webhook (Label Studio).
The webhook needs the shared secret: header X-Sedna-Sam-Secret (or ?secret=) equal to
$SEDNA_SAM_WEBHOOK_SECRET. With --webhook-url the service registers that webhook in
Label Studio itself (the secret travels as a webhook header, never in logs).

env (flags win): SEDNA_SAM_STORE, SEDNA_SAM_DATASET_DIR, SEDNA_SAM_INDEX,
SEDNA_SAM_QUEUE_URL (secret when it holds a password), PGPASSWORD (secret),
SEDNA_SAM_REPLICA_ID, LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY (secret),
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, SEDNA_SAM_LS_PROJECT, SEDNA_SAM_WEBHOOK_SECRET
(secret), SEDNA_SAM_WEBHOOK_URL, S3_ENDPOINT_URL / ACCESS_KEY_ID / SECRET_ACCESS_KEY
(s3:// store), LOG_LEVEL.

example (one machine, tiny random models, a local Label Studio):
  sedna-sam cloud serve --store /data/store --dataset-dir /data/dataset \\
      --tiny-random-models --port 8000
"""

STATUS_DESCRIPTION = """\
Print the annotation queue: how many samples are in each state
(received, pre_annotated, in_label_studio, labelled, ingested, failed) and the last errors.
Reads only the queue database; the service may be running.
"""


def add_queue_options(parser: argparse.ArgumentParser) -> None:
    add_dataset_dir(parser, required=False)
    parser.set_defaults(dataset_dir=get_param("SEDNA_SAM_DATASET_DIR"))
    parser.add_argument(
        "--queue",
        "--queue-url",
        dest="queue_url",
        default=get_param("SEDNA_SAM_QUEUE_URL"),
        help="queue database URL (default $SEDNA_SAM_QUEUE_URL, else "
        "sqlite:///<dataset-dir>/cloud-queue.sqlite, for one replica); "
        "postgresql://user@host:5432/db for any number of replicas (password from the URL or $PGPASSWORD)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    cloud = subparsers.add_parser("cloud", help="cloud annotation service: serve, status, retry")
    sub = cloud.add_subparsers(dest="cloud_command", metavar="ACTION")

    serve = sub.add_parser(
        "serve",
        help="run the annotation service (store -> SAM -> Label Studio -> TrainIds -> Sedna index)",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_queue_options(serve)
    serve.add_argument(
        "--store",
        default=get_param("SEDNA_SAM_STORE"),
        help="store directory or s3:// URL the edge ships to (default $SEDNA_SAM_STORE)",
    )
    serve.add_argument(
        "--index",
        default=get_param("SEDNA_SAM_INDEX"),
        help="the Sedna Dataset's txt index to append to (default $SEDNA_SAM_INDEX, else <dataset-dir>/index.txt)",
    )
    add_config_path(serve)
    serve.add_argument("--host", default="0.0.0.0", help="HTTP address (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0 = any free port)")
    serve.add_argument(
        "--ls-url",
        default=get_param("LABEL_STUDIO_URL"),
        help="Label Studio URL (default $LABEL_STUDIO_URL)",
    )
    serve.add_argument(
        "--project",
        default=get_param("SEDNA_SAM_LS_PROJECT", "sedna-sam corner cases"),
        help="Label Studio project id or title; made if missing (default $SEDNA_SAM_LS_PROJECT or 'sedna-sam corner cases')",
    )
    serve.add_argument(
        "--job-output-dir",
        default=get_param("SEDNA_SAM_JOB_OUTPUT_DIR"),
        help="the LifelongLearningJob's outputDir (a local directory): each round's mIoU, backward transfer "
        "and gate decision are exposed in /metrics (default $SEDNA_SAM_JOB_OUTPUT_DIR)",
    )
    serve.add_argument(
        "--webhook-url",
        default=get_param("SEDNA_SAM_WEBHOOK_URL"),
        help="URL Label Studio should POST annotation events to, e.g. "
        "http://sedna-sam-annotation:8000/webhook; registered at start (default $SEDNA_SAM_WEBHOOK_URL; "
        "unset: polling only)",
    )
    serve.add_argument(
        "--poll-interval", type=float, default=30.0, help="seconds between Label Studio polls (default 30)"
    )
    serve.add_argument("--interval", type=float, default=5.0, help="seconds between store scans (default 5)")
    serve.add_argument("--batch", type=int, default=8, help="samples per stage per pass (default 8)")
    serve.add_argument(
        "--max-attempts", type=int, default=5, help="tries per stage before a sample is failed (default 5)"
    )
    serve.add_argument("--once", action="store_true", help="do the work there is, without HTTP, then exit")
    serve.add_argument(
        "--replica-id",
        default=get_param("SEDNA_SAM_REPLICA_ID"),
        help="this replica's name in the queue's leases (default $SEDNA_SAM_REPLICA_ID, else the host "
        "name: a pod's name); a replica restarted under the same id frees what it held at once",
    )
    serve.add_argument(
        "--lease",
        type=float,
        default=DEFAULT_LEASE_S,
        help=f"seconds a claimed sample stays this replica's; another replica takes it after that if this "
        f"one died (default {DEFAULT_LEASE_S:.0f}; longer than one sample takes in any stage)",
    )
    serve.add_argument(
        "--push-settle",
        type=float,
        default=120.0,
        help="seconds a Label Studio import cut short (replica killed, request timed out) may still land; "
        "the sample's next push waits that long, then looks for the task before creating one (default 120)",
    )
    engine = serve.add_argument_group("pre-annotation")
    engine.add_argument(
        "--pre-annotation",
        choices=("sam", "semantic"),
        default=get_param("SEDNA_SAM_PRE_ANNOTATION", "sam"),
        help="sam (default): SAM masks labelled by semantic voting; semantic: the semantic model's class "
        "map alone, no SAM (coarser polygons, a fraction of the cost: backlogs, CPU-only runs, benches)",
    )
    engine.add_argument(
        "--sam-checkpoint", default=None, help="SAM checkpoint file (default: the models directory's vit_h)"
    )
    engine.add_argument(
        "--sam-model", default=None, help="SAM model type: vit_h, vit_l, vit_b (default: from the checkpoint)"
    )
    engine.add_argument(
        "--semantic-model", default=None, help="Segformer directory or hub id for the semantic branch"
    )
    engine.add_argument(
        "--models-dir",
        default=get_param("SEDNA_SAM_MODELS_DIR", "."),
        help="where `sedna-sam models download` put the SAM checkpoints (default $SEDNA_SAM_MODELS_DIR or .)",
    )
    engine.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    engine.add_argument(
        "--tiny-random-models",
        action="store_true",
        help="use tiny random-weight SAM and Segformer (offline demos and tests; the labels are noise)",
    )
    serve.set_defaults(func=run_serve)

    status = sub.add_parser(
        "status", help="queue states and counts, last errors", description=STATUS_DESCRIPTION
    )
    add_queue_options(status)
    status.add_argument("--errors", type=int, default=10, help="how many recent errors to list (default 10)")
    status.set_defaults(func=run_status)

    retry = sub.add_parser("retry", help="put failed samples back where they failed")
    add_queue_options(retry)
    retry.add_argument("sample_id", nargs="?", default=None, help="one sample (default: every failed sample)")
    retry.set_defaults(func=run_retry)

    cloud.set_defaults(func=lambda args: (cloud.print_help(), 2)[1])


def queue_url(args: argparse.Namespace) -> str:
    from sedna_sam.errors import SednaSamError

    if args.queue_url:
        return args.queue_url
    if not args.dataset_dir:
        raise SednaSamError("say where the queue is: --queue-url, --dataset-dir or $SEDNA_SAM_DATASET_DIR")
    return f"sqlite:///{Path(args.dataset_dir).resolve() / 'cloud-queue.sqlite'}"


def pre_annotation_options(args: argparse.Namespace) -> PreAnnotationOptions:
    """The "pre-annotation" flags: each is named after its field (``--sam-checkpoint`` is
    ``sam_checkpoint``), except ``--pre-annotation``, the ``kind``."""
    from dataclasses import fields

    from sedna_sam.cloud.config import PreAnnotationOptions

    given = {f.name: getattr(args, f.name) for f in fields(PreAnnotationOptions) if hasattr(args, f.name)}
    return PreAnnotationOptions(**given, kind=args.pre_annotation)


def build_config(args: argparse.Namespace) -> ServiceConfig:
    from sedna_sam.cloud.config import ServiceConfig
    from sedna_sam.errors import SednaSamError
    from sedna_sam.labels import load_labels

    missing = [f for f, v in (("--store", args.store), ("--dataset-dir", args.dataset_dir)) if not v]
    if missing:
        raise SednaSamError(
            f"cloud serve needs {' and '.join(missing)} (or $SEDNA_SAM_STORE / $SEDNA_SAM_DATASET_DIR)"
        )
    dataset_dir = Path(args.dataset_dir).resolve()
    return ServiceConfig(
        store=args.store,
        dataset_dir=dataset_dir,
        index_path=Path(args.index).resolve() if args.index else dataset_dir / "index.txt",
        queue_url=queue_url(args),
        labels=load_labels(args.config_path),
        ls_url=(args.ls_url or "").rstrip("/"),
        ls_token=get_param("LABEL_STUDIO_API_KEY", ""),
        project=args.project,
        webhook_secret=get_param("SEDNA_SAM_WEBHOOK_SECRET", ""),
        webhook_url=args.webhook_url or "",
        job_output_dir=args.job_output_dir or "",
        pre_annotation=pre_annotation_options(args),
        batch=args.batch,
        poll_interval_s=args.poll_interval,
        max_attempts=args.max_attempts,
        replica_id=args.replica_id or "",
        lease_s=args.lease,
        push_settle_s=args.push_settle,
    )


def run_serve(args: argparse.Namespace) -> int:
    import logging

    from sedna_sam.cloud.server import serve
    from sedna_sam.cloud.service import AnnotationService

    log = logging.getLogger("sedna_sam.cloud")
    config = build_config(args)
    if not config.webhook_secret:
        log.warning(
            "SEDNA_SAM_WEBHOOK_SECRET is not set: every webhook request will be refused; polling only"
        )
    service = AnnotationService(config)
    log.info("queue %s, replica %s", service.queue.display_url, service.replica_id)
    service.engine  # noqa: B018 - load the models now: a missing checkpoint stops here, not per sample
    if args.once:
        service.run_until_idle(poll=True)
        print(format_status(service.queue))
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(service, args.host, args.port, interval_s=args.interval, stop=stop)
    return 0


def format_status(queue, errors: int = 10) -> str:
    from sedna_sam.cloud.samples import ALL_STATES

    counts = queue.counts()
    lines = [f"{'state':<16} {'samples':>8}"]
    lines += [f"{state:<16} {counts[state]:>8}" for state in ALL_STATES]
    lines.append(f"{'total':<16} {sum(counts.values()):>8}")
    held = queue.leases()
    if held:
        lines.append("")
        lines.append(
            "being worked on: " + ", ".join(f"{n} by {owner or '(unnamed)'}" for owner, n in held.items())
        )
    recent = queue.last_errors(errors)
    if recent:
        lines.append("")
        lines.append("last errors:")
        for s in recent:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.updated_at))
            where = s.failed_from or s.state
            lines.append(
                f"  {when} {s.sample_id} [{s.state}, at {where}, attempt {s.attempts}]: {s.last_error}"
            )
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    from sedna_sam.cloud.queue import open_queue
    from sedna_sam.cloud.queue_sqlite import sqlite_path
    from sedna_sam.errors import SednaSamError

    url = queue_url(args)
    if url.startswith("sqlite") and not sqlite_path(url).exists():
        raise SednaSamError(
            f"no queue at {sqlite_path(url)} (has `sedna-sam cloud serve` run with this dataset?)"
        )
    print(format_status(open_queue(url), args.errors))
    return 0


def run_retry(args: argparse.Namespace) -> int:
    from sedna_sam.cloud.queue import open_queue

    n = open_queue(queue_url(args)).retry(args.sample_id)
    print(f"{n} failed sample(s) put back in the queue")
    return 0
