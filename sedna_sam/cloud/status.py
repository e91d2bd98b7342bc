"""The annotation queue at a glance: ``GET /`` of ``sedna-sam cloud serve``.

A small HTML page that refreshes itself: how many samples are in each state, how many
were labelled and ingested in the last hour and day, how long samples have been waiting in
their current state (percentiles: what is stuck), how long a corner case takes from the
edge flagging it to its labels entering the dataset, and the last items with a thumbnail,
their state, their Label Studio task and their last error. Read-only, no secrets (the page
shows what ``sedna-sam cloud status`` prints), behind the same auth as the rest of the
service. The numbers come from :func:`queue_summary` (a test checks the page against it).
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedna_sam.cloud.samples import ALL_STATES, INGESTED, Sample

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return float(ordered[k])


@dataclass
class QueueSummary:
    counts: dict[str, int]
    ingested_last_hour: int
    ingested_last_day: int
    age_percentiles: dict[str, dict[int, float | None]]  # state -> percentile -> seconds in it
    flag_to_label: dict[int, float | None]  # percentile -> seconds from edge flag to ingested
    now: float


def queue_summary(samples: Sequence[Sample], now: float | None = None) -> QueueSummary:
    """Summary of every sample in the queue (pure function of the rows and ``now``)."""
    now = time.time() if now is None else now
    counts = dict.fromkeys(ALL_STATES, 0)
    ages: dict[str, list[float]] = {s: [] for s in ALL_STATES}
    flag_to_label: list[float] = []
    hour = day = 0
    for s in samples:
        counts[s.state] = counts.get(s.state, 0) + 1
        ages.setdefault(s.state, []).append(max(0.0, now - s.updated_at))
        if s.state == INGESTED:
            hour += now - s.updated_at <= 3600
            day += now - s.updated_at <= 86400
            flagged_at = s.meta.get("frame_time") or s.created_at
            try:
                flag_to_label.append(max(0.0, s.updated_at - float(flagged_at)))
            except (TypeError, ValueError):
                pass
    return QueueSummary(
        counts,
        hour,
        day,
        {state: {p: percentile(v, p) for p in PERCENTILES} for state, v in ages.items() if state != INGESTED},
        {p: percentile(flag_to_label, p) for p in PERCENTILES},
        now,
    )


def human_seconds(x: float | None) -> str:
    if x is None:
        return ""
    if x < 120:
        return f"{x:.0f} s"
    if x < 7200:
        return f"{x / 60:.0f} min"
    if x < 172800:
        return f"{x / 3600:.1f} h"
    return f"{x / 86400:.1f} d"


def thumbnail(path: str | Path, width: int = 96) -> str | None:
    """A small JPEG of an image as a data URI (None when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.thumbnail((width, width * 4))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=70)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222} h1{font-size:1.3em} h2{font-size:1.05em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} td,th{border:1px solid #ccc;padding:.2em .5em}
td.err{color:#b00020;max-width:40em;font-size:.85em} .n{text-align:right} img{display:block}
"""


def render_status_page(
    summary: QueueSummary,
    recent: Sequence[Sample],
    label_studio_url: str | None = None,
    project_id: int | None = None,
    refresh_s: int = 10,
) -> str:
    """The page: counts, throughput, waiting times, flag-to-label time, the last items."""
    esc = html.escape
    counts = "".join(
        f'<tr><td>{esc(state)}</td><td class=n data-state="{esc(state)}">{n}</td>'
        + "".join(
            f"<td class=n>{human_seconds(summary.age_percentiles.get(state, {}).get(p))}</td>"
            for p in PERCENTILES
        )
        + "</tr>"
        for state, n in summary.counts.items()
    )
    pct_head = "".join(f"<th>waiting p{p}</th>" for p in PERCENTILES)
    f2l = ", ".join(f"p{p} {human_seconds(v) or 'n/a'}" for p, v in summary.flag_to_label.items())
    rows = []
    for s in recent:
        thumb = thumbnail(s.image_path)
        link = ""
        if s.ls_task_id is not None and label_studio_url and project_id is not None:
            url = f"{label_studio_url.rstrip('/')}/projects/{project_id}/data?task={s.ls_task_id}"
            link = f'<a href="{esc(url)}">task {s.ls_task_id}</a>'
        elif s.ls_task_id is not None:
            link = f"task {s.ls_task_id}"
        rows.append(
            f'<tr data-sample="{esc(s.sample_id)}"><td>{f"<img alt=thumbnail src={thumb!r}>" if thumb else ""}</td>'
            f"<td>{esc(s.sample_id)}</td><td>{esc(s.node)}</td><td data-key=state>{esc(s.state)}</td>"
            f"<td>{link}</td><td class=n>{human_seconds(summary.now - s.updated_at)}</td>"
            f"<td class=err>{esc(s.last_error or '')}</td></tr>"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.now))
    return f"""<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content="{int(refresh_s)}">
<title>sedna-sam annotation queue</title><style>{STYLE}</style></head><body>
<h1>sedna-sam annotation queue</h1>
<p>As of {stamp}; this page refreshes every {int(refresh_s)} s.</p>
<h2>Samples per state</h2>
<table id=counts><tr><th>state</th><th>samples</th>{pct_head}</tr>{counts}</table>
<p id=throughput>Ingested into the dataset: <span data-key=hour>{summary.ingested_last_hour}</span> in the last hour,
<span data-key=day>{summary.ingested_last_day}</span> in the last day.</p>
<p id=flag-to-label>From the edge flagging a frame to its labels in the dataset: {esc(f2l)}.</p>
<h2>Last {len(recent)} samples</h2>
<table id=recent><tr><th></th><th>sample</th><th>node</th><th>state</th><th>Label Studio</th><th>in state for</th>
<th>last error</th></tr>{"".join(rows)}</table>
</body></html>"""


def status_json(summary: QueueSummary) -> dict[str, Any]:
    return {
        "counts": summary.counts,
        "ingested_last_hour": summary.ingested_last_hour,
        "ingested_last_day": summary.ingested_last_day,
        "waiting_seconds": {
            s: {f"p{p}": v for p, v in per.items()} for s, per in summary.age_percentiles.items()
        },
        "flag_to_label_seconds": {f"p{p}": v for p, v in summary.flag_to_label.items()},
        "now": summary.now,
    }
