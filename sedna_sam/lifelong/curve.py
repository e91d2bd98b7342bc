"""The lifelong curve: every round of a LifelongLearningJob on one page (``lifelong.html``).

``sedna-sam report --output-dir <job outputDir>`` reads what the rounds left in the job's
output directory (Sedna's layout: ``train/<n>/``, ``eval/<n>/``, ``data/{train,eval}/<n>/``)
and draws, per round: the candidate's mIoU on the new and the old domain (and the model it
was compared with), backward transfer (old-domain mIoU change, what was forgotten), forward
transfer (new-domain mIoU of the model in use before the round: what old knowledge gave the
new data for free), samples added, time spent, and whether the gate accepted (deployed) the
round's model. A round that is still training, failed, or was never evaluated is shown as
such: the page works on a partial or interrupted job.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sedna_sam.storage import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

PAGE_NAME = "lifelong.html"


@dataclass
class Round:
    """What one round left behind (None: not there)."""

    number: int
    status: str  # "deployed", "rejected", "evaluated", "trained", "training"
    train_samples: int | None = None  # lines of data/train/<n>/data.txt (this round's new samples)
    eval_samples: int | None = None  # distinct lines of data/eval/<n>/data.txt
    replay_samples: int | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    new_miou: float | None = None  # candidate, new domain
    old_miou: float | None = None  # candidate, old domain
    baseline_new_miou: float | None = None  # the model in use before the round (forward transfer)
    baseline_old_miou: float | None = None
    backward_transfer: float | None = None
    new_gain: float | None = None
    reasons: list[str] = field(default_factory=list)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        log.warning("%s: not valid JSON (%s); left out", path, exc)
        return None


def _lines(path: Path, distinct: bool = False) -> int | None:
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        return None
    return len(set(lines)) if distinct else len(lines)


def _numbers(root: Path) -> list[int]:
    found = set()
    for part in ("train", "eval", "data/train", "data/eval"):
        d = root / part
        if d.is_dir():
            found |= {int(p.name) for p in d.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)}
    return sorted(found)


def _miou(per_domain: dict | None, domain: str) -> float | None:
    if not per_domain or domain not in per_domain:
        return None
    value = per_domain[domain].get("mIoU")
    return None if value is None else float(value)


def read_round(root: Path, n: int) -> Round:
    """Round ``n`` of the job whose outputDir is ``root``."""
    train = root / "train" / str(n)
    evaluation = root / "eval" / str(n)
    r = Round(n, "training")
    r.train_samples = _lines(root / "data" / "train" / str(n) / "data.txt")
    r.eval_samples = _lines(root / "data" / "eval" / str(n) / "data.txt", distinct=True)
    report = _json(train / "train_report.json")
    if report is not None:
        r.status = "trained"
        r.replay_samples = report.get("replay_samples")
        r.train_seconds = report.get("seconds")
    metrics = _json(evaluation / "metrics.json")
    gate = _json(evaluation / "gate.json")
    if metrics is not None:
        r.status = "evaluated"
        models = metrics.get("models") or {}
        baseline = (gate or {}).get("baseline") or metrics.get("baseline")
        candidate = (gate or {}).get("candidate") or next((m for m in models if m != baseline), None)
        r.new_miou = _miou(models.get(candidate), "new")
        r.old_miou = _miou(models.get(candidate), "old")
        r.baseline_new_miou = _miou(models.get(baseline), "new")
        r.baseline_old_miou = _miou(models.get(baseline), "old")
        r.eval_seconds = sum(d.get("seconds", 0.0) for per in models.values() for d in per.values()) or None
    if gate is not None:
        r.status = "deployed" if gate.get("accept") else "rejected"
        r.backward_transfer = gate.get("backward_transfer")
        r.new_gain = gate.get("new_gain")
        r.reasons = list(gate.get("reasons") or [])
    return r


def read_job(output_dir: str | Path) -> list[Round]:
    root = Path(output_dir)
    if not root.is_dir():
        from sedna_sam.errors import SednaSamError

        raise SednaSamError(f"{root}: no such directory (pass the LifelongLearningJob's outputDir)")
    return [read_round(root, n) for n in _numbers(root)]


def _fmt(x: float | None, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def curve_png(rounds: list[Round]) -> bytes:
    """mIoU per round (candidate: solid; the model it was compared with: dashed), backward
    transfer bars, samples added bars."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    xs = [r.number for r in rounds]
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)

    def line(ax, values, **kw):
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", **kw)

    line(a1, [r.new_miou for r in rounds], color="#1f77b4", label="new domain (candidate)")
    line(a1, [r.old_miou for r in rounds], color="#d62728", label="old domain (candidate)")
    line(
        a1,
        [r.baseline_new_miou for r in rounds],
        color="#1f77b4",
        linestyle="--",
        label="new domain (before)",
    )
    line(
        a1,
        [r.baseline_old_miou for r in rounds],
        color="#d62728",
        linestyle="--",
        label="old domain (before)",
    )
    for r in rounds:
        if r.status in ("deployed", "rejected") and r.new_miou is not None:
            a1.annotate(
                "deployed" if r.status == "deployed" else "rejected",
                (r.number, r.new_miou),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=7,
                color="#0a7d32" if r.status == "deployed" else "#b00020",
            )
    a1.set_ylabel("mIoU")
    a1.set_ylim(0, 1)
    a1.legend(fontsize=7, loc="lower right")
    a1.grid(alpha=0.3)
    bwt = [r.backward_transfer if r.backward_transfer is not None else 0.0 for r in rounds]
    a2.bar(xs, bwt, color=["#0a7d32" if v >= 0 else "#b00020" for v in bwt])
    a2.axhline(0, color="#444", linewidth=0.8)
    a2.set_ylabel("backward transfer")
    a2.grid(axis="y", alpha=0.3)
    a3.bar(xs, [r.train_samples or 0 for r in rounds], color="#7f7f7f")
    a3.set_ylabel("samples added")
    a3.set_xlabel("round")
    a3.set_xticks(xs)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px;color:#222} h1{font-size:1.4em}
table{border-collapse:collapse;font-size:.9em;margin:.8em 0} td,th{border:1px solid #ccc;padding:.25em .5em}
.deployed{color:#0a7d32} .rejected{color:#b00020} img{max-width:100%}
"""

COLUMNS = [
    ("number", "round", 0),
    ("status", "status", None),
    ("train_samples", "samples added", 0),
    ("replay_samples", "replayed", 0),
    ("eval_samples", "eval images", 0),
    ("new_miou", "new mIoU", 4),
    ("old_miou", "old mIoU", 4),
    ("baseline_new_miou", "forward transfer (new mIoU before)", 4),
    ("new_gain", "new gain", 4),
    ("backward_transfer", "backward transfer", 4),
    ("train_seconds", "train s", 1),
    ("eval_seconds", "eval s", 1),
]


def write_lifelong_page(output_dir: str | Path, page: str | Path | None = None) -> Path:
    """Write the job's lifelong page (default ``<output_dir>/lifelong.html``) with its
    figure beside it (``lifelong.png``) and the numbers as ``lifelong.json``."""
    import base64

    rounds = read_job(output_dir)
    page = Path(page) if page else Path(output_dir) / PAGE_NAME
    atomic_write_text(page.with_suffix(".json"), json.dumps([asdict(r) for r in rounds], indent=2))
    rows = []
    for r in rounds:
        cells = []
        for key, _, digits in COLUMNS:
            value = getattr(r, key)
            text = (
                str(value)
                if digits is None or value is None
                else (str(value) if digits == 0 else _fmt(float(value), digits))
            )
            cells.append(f'<td data-key="{key}">{html.escape("" if value is None else text)}</td>')
        reasons = html.escape("; ".join(r.reasons))
        rows.append(f'<tr class="{r.status}" data-round="{r.number}" title="{reasons}">{"".join(cells)}</tr>')
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in COLUMNS)
    figure = ""
    if rounds:
        png = curve_png(rounds)
        atomic_write_bytes(page.with_suffix(".png"), png)
        figure = f'<img alt="lifelong curve" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    deployed = [r.number for r in rounds if r.status == "deployed"]
    text = f"""<!doctype html><html><head><meta charset=utf-8><title>sedna-sam lifelong curve</title>
<style>{STYLE}</style></head><body>
<h1>sedna-sam lifelong curve: {html.escape(str(output_dir))}</h1>
<p id=summary>{len(rounds)} round(s); deployed: {", ".join(map(str, deployed)) or "none"}.</p>
{figure}
<table id=rounds><tr>{head}</tr>{"".join(rows)}</table>
<p>Backward transfer: old-domain mIoU of the round's model minus that of the model in use before it
(negative = forgotten). Forward transfer: new-domain mIoU of the model in use before the round, on the
round's new test data. Hover a row for the gate's reasons.</p>
</body></html>"""
    atomic_write_text(page, text)
    log.info("lifelong page for %d round(s) written to %s", len(rounds), page)
    return page
