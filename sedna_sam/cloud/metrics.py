"""Service metrics in the Prometheus text exposition format (version 0.0.4).

Counters and histograms live in memory (they restart at zero with the process, which is
what Prometheus expects of counters); queue depth per state is read from the queue at
scrape time, so it is right after a restart too. No client library needed.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds per stage: from tens of milliseconds (push to Label Studio) to minutes (SAM on CPU).
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))  # "1.0", as Prometheus client libraries spell bucket bounds


class ServiceMetrics:
    """Thread-safe counters (processed/failed per stage, webhook outcomes) and a
    seconds-per-stage histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.processed: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.webhooks: dict[str, int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)

    def observe(self, stage: str, seconds: float, ok: bool) -> None:
        with self._lock:
            (self.processed if ok else self.failed)[stage] += 1
            buckets = self._buckets.setdefault(stage, [0] * len(STAGE_BUCKETS))
            for i, bound in enumerate(STAGE_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self._sum[stage] += seconds
            self._count[stage] += 1

    def webhook(self, outcome: str) -> None:
        with self._lock:
            self.webhooks[outcome] += 1

    def mean_seconds(self) -> dict[str, float]:
        """Mean seconds per stage so far (for logs and benches)."""
        with self._lock:
            return {s: self._sum[s] / self._count[s] for s in self._count if self._count[s]}

    def render(
        self,
        queue_counts: dict[str, int],
        up_since: float | None = None,
        flag_to_label: dict[int, float | None] | None = None,
        rounds: list | None = None,
    ) -> str:
        """The exposition text: queue depth per state, counters, the stage histogram and,
        when given, percentiles (50, 90, 99) of the seconds from an edge flag to labels in
        the dataset (over the samples ingested so far), and the LifelongLearningJob's rounds
        (:class:`sedna_sam.lifelong.curve.Round`: mIoU per domain, backward transfer, and
        whether the gate deployed the round's model)."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("sedna_sam_queue_samples", "gauge", "Samples in the annotation queue, per state.")
        for state, n in queue_counts.items():
            out.append(f"sedna_sam_queue_samples{_labels(state=state)} {n}")
        with self._lock:
            family("sedna_sam_samples_processed_total", "counter", "Samples a stage finished, per stage.")
            for stage, n in sorted(self.processed.items()):
                out.append(f"sedna_sam_samples_processed_total{_labels(stage=stage)} {n}")
            family("sedna_sam_samples_failed_total", "counter", "Failed attempts of a stage, per stage.")
            for stage, n in sorted(self.failed.items()):
                out.append(f"sedna_sam_samples_failed_total{_labels(stage=stage)} {n}")
            family(
                "sedna_sam_webhook_requests_total",
                "counter",
                "Label Studio webhook requests, per outcome (accepted, ignored, refused, bad_request).",
            )
            for outcome, n in sorted(self.webhooks.items()):
                out.append(f"sedna_sam_webhook_requests_total{_labels(outcome=outcome)} {n}")
            family("sedna_sam_stage_seconds", "histogram", "Seconds one sample spent in a stage.")
            for stage in sorted(self._buckets):
                for bound, n in zip(STAGE_BUCKETS, self._buckets[stage]):
                    out.append(f"sedna_sam_stage_seconds_bucket{_labels(stage=stage, le=_number(bound))} {n}")
                inf = _labels(stage=stage, le="+Inf")
                out.append(f"sedna_sam_stage_seconds_bucket{inf} {self._count[stage]}")
                out.append(f"sedna_sam_stage_seconds_sum{_labels(stage=stage)} {self._sum[stage]!r}")
                out.append(f"sedna_sam_stage_seconds_count{_labels(stage=stage)} {self._count[stage]}")
        if flag_to_label:
            family(
                "sedna_sam_flag_to_label_seconds",
                "gauge",
                "Seconds from the edge flagging a frame to its labels entering the dataset, per percentile.",
            )
            for p, v in sorted(flag_to_label.items()):
                if v is not None:
                    out.append(f"sedna_sam_flag_to_label_seconds{_labels(quantile=_number(p / 100))} {v!r}")
        if rounds:
            family("sedna_sam_round_miou", "gauge", "mIoU of each round's model, per test domain (new, old).")
            for r in rounds:
                for domain, value in (("new", r.new_miou), ("old", r.old_miou)):
                    if value is not None:
                        out.append(
                            f"sedna_sam_round_miou{_labels(round=str(r.number), domain=domain)} {value!r}"
                        )
            family(
                "sedna_sam_round_backward_transfer", "gauge", "Old-domain mIoU change of each round's model."
            )
            for r in rounds:
                if r.backward_transfer is not None:
                    out.append(
                        f"sedna_sam_round_backward_transfer{_labels(round=str(r.number))} {r.backward_transfer!r}"
                    )
            family(
                "sedna_sam_round_deployed",
                "gauge",
                "1 when the gate accepted (deployed) the round's model, else 0.",
            )
            for r in rounds:
                if r.status in ("deployed", "rejected"):
                    out.append(
                        f"sedna_sam_round_deployed{_labels(round=str(r.number))} {int(r.status == 'deployed')}"
                    )
        if up_since is not None:
            family("sedna_sam_start_time_seconds", "gauge", "Unix time the service started.")
            out.append(f"sedna_sam_start_time_seconds {up_since!r}")
        return "\n".join(out) + "\n"
