"""The cloud service's ``/metrics``: Prometheus text format through ``prometheus_client``.

Each service has a registry of its own (tests run several services in one process). The
stage counters, webhook counters and the seconds-per-stage histogram live in memory (they
restart at zero with the process, which is what Prometheus expects of counters); what
the queue and the LifelongLearningJob's outputDir say (queue depth per state, edge-flag
to dataset seconds, each round's mIoU and gate decision) is read when Prometheus scrapes,
so it is right after a restart too. The names, types, labels and help texts are what
``manifests/components/monitoring``'s dashboard queries (``tests/test_monitoring.py``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sedna_sam.deps import need

log = logging.getLogger(__name__)

# generate_latest writes the text format 0.0.4 whatever the library's newest format is.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds per stage: from tens of milliseconds (push to Label Studio) to minutes (SAM on CPU).
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

PROCESSED = "sedna_sam_samples_processed"  # counters: exposed with "_total"
FAILED = "sedna_sam_samples_failed"
WEBHOOKS = "sedna_sam_webhook_requests"
STAGE_SECONDS = "sedna_sam_stage_seconds"
DUPLICATE_TASKS = "sedna_sam_duplicate_tasks"


@dataclass
class Scrape:
    """What one scrape reads from outside the process: queue depth per state, the
    percentiles (50, 90, 99) of seconds from an edge flag to labels in the dataset, the
    job's rounds (:class:`sedna_sam.lifelong.curve.Round`) and when the service started."""

    queue_counts: dict[str, int]
    flag_to_label: dict[int, float | None] = field(default_factory=dict)
    rounds: list[Any] = field(default_factory=list)
    up_since: float | None = None


def job_rounds(job_output_dir: str) -> list[Any]:
    """The rounds of the LifelongLearningJob whose outputDir is ``job_output_dir`` (none
    when unset, remote or unreadable: metrics never fail on a job directory)."""
    if not job_output_dir or "://" in job_output_dir:
        return []
    from sedna_sam.lifelong.curve import read_job

    try:
        return read_job(job_output_dir)
    except Exception as exc:  # noqa: BLE001 - logged; the scrape goes on without rounds
        log.warning("job output dir %s not readable for /metrics: %s", job_output_dir, exc)
        return []


class ServiceMetrics:
    """The service's counters and histogram in a registry of its own, plus the families
    :class:`Scrape` gives (``scrape`` is called once per scrape; None: counters only)."""

    def __init__(self, scrape: Callable[[], Scrape] | None = None) -> None:
        prometheus = need("prometheus_client", "cloud", "the service's /metrics")
        self.registry = prometheus.CollectorRegistry()
        r = self.registry
        self._processed = prometheus.Counter(
            PROCESSED, "Samples a stage finished, per stage.", ["stage"], registry=r
        )
        self._failed = prometheus.Counter(
            FAILED, "Failed attempts of a stage, per stage.", ["stage"], registry=r
        )
        self._webhooks = prometheus.Counter(
            WEBHOOKS,
            "Label Studio webhook requests, per outcome (accepted, ignored, refused, bad_request).",
            ["outcome"],
            registry=r,
        )
        self._duplicates = prometheus.Counter(
            DUPLICATE_TASKS,
            "Second Label Studio tasks of one sample found by the poll, per action "
            "(deleted, adopted, conflict: both annotated, left for a person).",
            ["action"],
            registry=r,
        )
        self._seconds = prometheus.Histogram(
            STAGE_SECONDS,
            "Seconds one sample spent in a stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        if scrape is not None:
            r.register(_ScrapeCollector(scrape))

    def observe(self, stage: str, seconds: float, ok: bool) -> None:
        (self._processed if ok else self._failed).labels(stage).inc()
        self._seconds.labels(stage).observe(seconds)

    def webhook(self, outcome: str) -> None:
        self._webhooks.labels(outcome).inc()

    def duplicate_task(self, action: str) -> None:
        self._duplicates.labels(action).inc()

    # -- reading the numbers back (logs, benches, tests) ------------------------------

    @property
    def processed(self) -> Tally:
        """Samples each stage finished so far (0 for a stage that finished none)."""
        return self._totals(self._processed, "stage")

    @property
    def failed(self) -> Tally:
        """Failed attempts per stage so far."""
        return self._totals(self._failed, "stage")

    @property
    def webhooks(self) -> Tally:
        """Webhook requests per outcome so far."""
        return self._totals(self._webhooks, "outcome")

    @property
    def duplicate_tasks(self) -> Tally:
        """Second tasks settled per action so far (:mod:`sedna_sam.cloud.strays`)."""
        return self._totals(self._duplicates, "action")

    def mean_seconds(self) -> dict[str, float]:
        """Mean seconds per stage so far (for logs and benches)."""
        sums = self._totals(self._seconds, "stage", "_sum")
        counts = self._totals(self._seconds, "stage", "_count")
        return {stage: sums[stage] / n for stage, n in counts.items() if n}

    @staticmethod
    def _totals(metric, label: str, suffix: str = "_total") -> Tally:
        out: Tally = Tally()
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith(suffix):
                    value = sample.value
                    out[sample.labels[label]] = int(value) if suffix == "_total" else value
        return out

    def exposition(self) -> bytes:
        """The scrape body (text format 0.0.4, :data:`CONTENT_TYPE`)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))  # "0.5", as Prometheus client libraries spell label numbers


class _ScrapeCollector:
    """The families read at scrape time (a collector of the service's registry)."""

    def __init__(self, scrape: Callable[[], Scrape]) -> None:
        self.scrape = scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        now = self.scrape()
        depth = GaugeMetricFamily(
            "sedna_sam_queue_samples", "Samples in the annotation queue, per state.", labels=["state"]
        )
        for state, n in now.queue_counts.items():
            depth.add_metric([state], n)
        yield depth
        if now.flag_to_label:
            flag = GaugeMetricFamily(
                "sedna_sam_flag_to_label_seconds",
                "Seconds from the edge flagging a frame to its labels entering the dataset, per percentile.",
                labels=["quantile"],
            )
            for p, v in sorted(now.flag_to_label.items()):
                if v is not None:
                    flag.add_metric([_number(p / 100)], v)
            yield flag
        if now.rounds:
            yield from _round_families(now.rounds)
        if now.up_since is not None:
            yield GaugeMetricFamily(
                "sedna_sam_start_time_seconds", "Unix time the service started.", value=now.up_since
            )


def _round_families(rounds: list[Any]) -> Iterator[Any]:
    """mIoU per domain, backward transfer and the gate's decision of each round."""
    from prometheus_client.core import GaugeMetricFamily

    miou = GaugeMetricFamily(
        "sedna_sam_round_miou",
        "mIoU of each round's model, per test domain (new, old).",
        labels=["round", "domain"],
    )
    transfer = GaugeMetricFamily(
        "sedna_sam_round_backward_transfer", "Old-domain mIoU change of each round's model.", labels=["round"]
    )
    deployed = GaugeMetricFamily(
        "sedna_sam_round_deployed",
        "1 when the gate accepted (deployed) the round's model, else 0.",
        labels=["round"],
    )
    for r in rounds:
        for domain, value in (("new", r.new_miou), ("old", r.old_miou)):
            if value is not None:
                miou.add_metric([str(r.number), domain], value)
        if r.backward_transfer is not None:
            transfer.add_metric([str(r.number)], r.backward_transfer)
        if r.status in ("deployed", "rejected"):
            deployed.add_metric([str(r.number)], int(r.status == "deployed"))
    yield from (miou, transfer, deployed)
