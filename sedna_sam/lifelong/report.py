"""The round report: did the new model get better where it should, and what did it forget.

``sedna-sam eval`` writes ``report.html`` beside ``metrics.json``: one self-contained file
(figures inline as PNG data URIs, no external assets), so it opens from a file share or as
a CI artifact, plus the same figures as PNG files:

- ``per_class_iou_<domain>.png``: per-class IoU of the baseline and the candidate, grouped
  bars; classes absent from that test set are marked "absent";
- ``confusion_change.png``: how the candidate's row-normalised confusion matrix (new domain,
  else old) differs from the baseline's;
- ``examples.png``: the test images whose mIoU changed most, as image | labels | baseline |
  candidate, in the label set's colours;
- the gate's decision with its reasons and thresholds, and every number in tables.

Plotting is matplotlib (Agg, no display). The data a page shows is the data written to
``metrics.json``/``gate.json``, so a test can check the page against them.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sedna_sam.labels import IGNORE_ID, LabelSet, labels_for_model
from sedna_sam.lifelong.evaluate import EvalMetrics
from sedna_sam.storage import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
BASELINE_COLOUR = "#9e9e9e"
CANDIDATE_COLOUR = "#1f77b4"


@dataclass
class Example:
    """One test image shown in the report: (H, W, 3) image, (H, W) label and predictions."""

    image_path: str
    image: np.ndarray
    label: np.ndarray
    baseline: np.ndarray | None
    candidate: np.ndarray
    baseline_miou: float | None
    candidate_miou: float


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _nan_to_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


# ----------------------------------------------------------------------------- figures


def per_class_iou_png(
    names: Sequence[str], baseline: EvalMetrics | None, candidate: EvalMetrics, title: str
) -> bytes:
    """Grouped bars, baseline vs candidate, one group per class; a class with no pixel in
    the test set's labels is marked "absent" (its IoU only measures false positives)."""
    plt = _pyplot()
    n = len(names)
    x = np.arange(n)
    cand = candidate.iou
    base = baseline.iou if baseline is not None else None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n + 1.5), 3.6))
    width = 0.4 if base is not None else 0.7
    if base is not None:
        ax.bar(x - width / 2, np.nan_to_num(base), width, color=BASELINE_COLOUR, label="baseline")
    ax.bar(
        x + (width / 2 if base is not None else 0),
        np.nan_to_num(cand),
        width,
        color=CANDIDATE_COLOUR,
        label="candidate",
    )
    for i in absent_classes(candidate):
        ax.text(i, 0.02, "absent", rotation=90, ha="center", va="bottom", fontsize=7, color="#b00020")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def absent_classes(m: EvalMetrics) -> list[int]:
    """Class ids with no pixel in the test set's labels."""
    return [int(i) for i in np.flatnonzero(m.confusion.sum(1) == 0)]


def confusion_change_png(
    names: Sequence[str], baseline: EvalMetrics, candidate: EvalMetrics, title: str
) -> bytes:
    """Candidate minus baseline, each confusion matrix normalised per ground-truth row:
    blue on the diagonal = more pixels right, red off it = a new confusion."""
    plt = _pyplot()

    def normalised(cm: np.ndarray) -> np.ndarray:
        rows = cm.sum(1, keepdims=True).astype(np.float64)
        return np.divide(cm, rows, out=np.zeros_like(cm, dtype=np.float64), where=rows > 0)

    diff = normalised(candidate.confusion) - normalised(baseline.confusion)
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * n + 2), max(4.0, 0.35 * n + 1.5)))
    lim = max(0.05, float(np.abs(diff).max()))
    im = ax.imshow(diff, cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="change in share of the row")
    return _png(fig)


def examples_png(examples: Sequence[Example], labels: LabelSet) -> bytes:
    """Rows of image | labels | baseline | candidate, each titled with its mIoU."""
    plt = _pyplot()
    colours = labels.colour_table()
    colours[IGNORE_ID] = (0, 0, 0)
    cols = 4
    fig, axes = plt.subplots(
        len(examples), cols, figsize=(cols * 2.6, len(examples) * 1.6 + 0.4), squeeze=False
    )
    for row, ex in zip(axes, examples):
        cells = [
            (ex.image, Path(ex.image_path).name),
            (colours[np.clip(ex.label, 0, 255)], "labels"),
            (
                None if ex.baseline is None else colours[ex.baseline],
                f"baseline mIoU {_fmt(ex.baseline_miou, 3)}",
            ),
            (colours[ex.candidate], f"candidate mIoU {_fmt(ex.candidate_miou, 3)}"),
        ]
        for ax, (img, title) in zip(row, cells):
            ax.axis("off")
            if img is not None:
                ax.imshow(img)
            ax.set_title(title, fontsize=7)
    return _png(fig)


# ----------------------------------------------------------------------------- choosing examples


def most_changed(baseline: EvalMetrics | None, candidate: EvalMetrics, k: int = 4) -> list[str]:
    """The ``k`` images whose mIoU changed most (candidate minus baseline, either way);
    without a baseline, the candidate's worst images."""
    if baseline is None:
        scored = [(v, p) for p, v in candidate.per_image.items() if not math.isnan(v)]
        return [p for _, p in sorted(scored)[:k]]
    changes = []
    for path, cand in candidate.per_image.items():
        base = baseline.per_image.get(path)
        if base is None or math.isnan(base) or math.isnan(cand):
            continue
        changes.append((abs(cand - base), path))
    return [p for _, p in sorted(changes, reverse=True)[:k]]


def render_examples(
    paths: Sequence[str],
    samples,
    baseline_seg,
    candidate_seg,
    baseline: EvalMetrics | None,
    candidate: EvalMetrics,
) -> list[Example]:
    """Predict the chosen images with both models (``samples``: path -> LabelledSample)."""
    from sedna_sam.lifelong.data import load_sample

    out = []
    for path in paths:
        image, label = load_sample(samples[path])
        out.append(
            Example(
                path,
                image,
                label,
                baseline_seg.predict_ids(image).astype(np.uint8) if baseline_seg is not None else None,
                candidate_seg.predict_ids(image).astype(np.uint8),
                baseline.per_image.get(path) if baseline is not None else None,
                candidate.per_image[path],
            )
        )
    return out


# ----------------------------------------------------------------------------- the page


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode()
    return (
        f'<img alt="{html.escape(name)}" data-file="{html.escape(name)}" src="data:image/png;base64,{data}">'
    )


def _miou_table(per_model: Mapping[str, Mapping[str, EvalMetrics]], roles: Mapping[str, str]) -> str:
    domains = sorted({d for per in per_model.values() for d in per})
    head = "".join(f"<th>{html.escape(d)} mIoU</th><th>{html.escape(d)} images</th>" for d in domains)
    rows = []
    for model, per in per_model.items():
        cells = "".join(
            f'<td data-model="{html.escape(roles.get(model, model))}" data-domain="{d}" data-metric="mIoU">'
            f"{_fmt(per[d].miou) if d in per else ''}</td><td>{per[d].samples if d in per else ''}</td>"
            for d in domains
        )
        rows.append(
            f"<tr><th>{html.escape(roles.get(model, ''))}</th><td class=path>{html.escape(model)}</td>{cells}</tr>"
        )
    return f"<table id=miou><tr><th>role</th><th>model</th>{head}</tr>{''.join(rows)}</table>"


def _class_table(
    domain: str, names: Sequence[str], baseline: EvalMetrics | None, candidate: EvalMetrics
) -> str:
    rows = []
    absent = set(absent_classes(candidate))
    for i, name in enumerate(names):
        shown = f"{name} (absent from the test set)" if i in absent else name
        b = _nan_to_none(baseline.iou[i]) if baseline is not None else None
        c = _nan_to_none(candidate.iou[i])
        delta = "" if b is None or c is None else f"{c - b:+.4f}"
        rows.append(
            f"<tr><td>{html.escape(shown)}</td>"
            f'<td data-domain="{domain}" data-role="baseline" data-class="{html.escape(name)}">{_fmt(b)}</td>'
            f'<td data-domain="{domain}" data-role="candidate" data-class="{html.escape(name)}">{_fmt(c)}</td>'
            f"<td>{delta}</td></tr>"
        )
    return (
        f'<table class=classes id="classes-{domain}"><tr><th>class</th><th>baseline IoU</th>'
        f"<th>candidate IoU</th><th>change</th></tr>{''.join(rows)}</table>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em} img{max-width:100%}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .5em}
td.path{font-family:monospace;font-size:.8em} .accept{color:#0a7d32} .reject{color:#b00020}
.decision{font-size:1.2em;font-weight:bold}
"""


def write_round_report(
    out_dir: str | Path,
    metrics: Mapping[str, Mapping[str, EvalMetrics]],
    candidate: str,
    baseline: str | None,
    decision=None,
    examples: Sequence[Example] = (),
    labels: LabelSet | None = None,
) -> Path:
    """Write report.html and its PNGs into ``out_dir`` (atomically each); returns the page."""
    from sedna_sam.labels import cityscapes

    out_dir = Path(out_dir)
    labels = labels or cityscapes()
    cand = metrics[candidate]
    base = metrics.get(baseline) if baseline else None
    names = list(next(iter(cand.values())).names) if cand else []
    figures: list[tuple[str, str, bytes]] = []  # (file, caption, png)
    for domain in ("new", "old"):
        if domain not in cand:
            continue
        title = f"per-class IoU, {domain} domain ({cand[domain].samples} images)"
        png = per_class_iou_png(names, base.get(domain) if base else None, cand[domain], title)
        figures.append((f"per_class_iou_{domain}.png", title, png))
    if base:
        domain = (
            "new" if "new" in cand and "new" in base else ("old" if "old" in cand and "old" in base else None)
        )
        if domain:
            title = f"confusion change, {domain} domain (candidate minus baseline)"
            figures.append(
                (
                    "confusion_change.png",
                    title,
                    confusion_change_png(names, base[domain], cand[domain], title),
                )
            )
    if examples:
        title = "images whose mIoU changed most" if base else "the candidate's worst images"
        figures.append(("examples.png", title, examples_png(examples, labels)))
    for name, _, png in figures:
        atomic_write_bytes(out_dir / name, png)

    roles = {candidate: "candidate", **({baseline: "baseline"} if baseline else {})}
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>sedna-sam round report</title><style>{STYLE}</style></head><body>"
    ]
    parts.append("<h1>sedna-sam round report</h1>")
    if decision is not None:
        verdict = "accept" if decision.accept else "reject"
        policy = decision.policy
        parts.append(
            f'<p class="decision {verdict}" id=decision data-accept="{str(decision.accept).lower()}">'
            f"Gate: {verdict.upper()}</p><ul id=reasons>"
            + "".join(f"<li>{html.escape(r)}</li>" for r in decision.reasons)
            + "</ul>"
            f"<p id=thresholds>Thresholds: new-domain mIoU must rise by more than {policy.min_new_gain:+.4f}; "
            f"old-domain mIoU may fall by at most {policy.max_old_drop:.4f}"
            f"{'' if policy.require_old else ' (old domain not required)'}.</p>"
        )
    parts.append("<h2>mIoU</h2>" + _miou_table(metrics, roles))
    for domain in ("new", "old"):
        if domain in cand:
            parts.append(f"<h2>Per-class IoU, {domain} domain</h2>")
            parts.append(_class_table(domain, names, base.get(domain) if base else None, cand[domain]))
    for name, caption, png in figures:
        parts.append(f"<h2>{html.escape(caption)}</h2>{_img(name, png)}")
    parts.append("</body></html>")
    page = out_dir / REPORT_NAME
    atomic_write_text(page, "\n".join(parts))
    log.info("round report written to %s", page)
    return page


def report_for_evaluation(
    out_dir: str | Path,
    metrics: Mapping[str, Mapping[str, EvalMetrics]],
    specs: Mapping[str, str],
    domains: Mapping[str, Sequence],
    candidate: str,
    baseline: str | None,
    decision=None,
    device: str | None = None,
    k: int = 4,
) -> Path | None:
    """The round report of an evaluation (models loaded again to draw the examples).
    ``specs``: model name -> where to load it from. A report that cannot be drawn is
    logged, never fatal: the evaluation's results are what matters."""
    from sedna_sam.segformer import load_segformer

    try:
        cand_m = metrics[candidate]
        base_m = metrics.get(baseline) if baseline else None
        domain = "new" if "new" in cand_m else "old"
        samples = {str(s.image): s for s in domains.get(domain, [])}
        chosen = (
            most_changed(base_m.get(domain) if base_m else None, cand_m[domain], k)
            if domain in cand_m
            else []
        )
        examples: list[Example] = []
        if chosen:
            cand_seg = load_segformer(specs.get(candidate, candidate), device)
            base_seg = load_segformer(specs.get(baseline, baseline), device) if baseline else None
            examples = render_examples(
                chosen, samples, base_seg, cand_seg, base_m.get(domain) if base_m else None, cand_m[domain]
            )
            labels = labels_for_model(cand_seg.id2label)
        else:
            labels = None
        return write_round_report(out_dir, metrics, candidate, baseline, decision, examples, labels)
    except Exception:  # noqa: BLE001 -- a report must never fail the evaluation
        log.exception("could not write the round report in %s (the evaluation itself is complete)", out_dir)
        return None
