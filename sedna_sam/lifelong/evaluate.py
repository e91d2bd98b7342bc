"""Per-class IoU and mIoU from a confusion matrix accumulated over whole label maps.

The confusion matrix is built with one ``bincount`` per image (no Python loop over
pixels); IoU per class is ``TP / (TP + FP + FN)`` = ``diag / (row + col - diag)``; a
class that appears neither in the ground truth nor in the prediction has no IoU (NaN)
and is left out of the mean, as in the Cityscapes benchmark. Pixels labelled 255 are
ignored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sedna_sam.errors import BatchReport, InputError
from sedna_sam.geometry import iou_per_class, mean_of_ious
from sedna_sam.labels import IGNORE_ID
from sedna_sam.lifelong.data import LabelledSample, load_sample

log = logging.getLogger(__name__)


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = ground truth, columns = prediction, for (H, W) id maps.

    Target pixels equal to 255 or outside [0, C) are ignored. Predictions must be in
    [0, C) (an argmax over C logits always is).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and label {target.shape} differ in shape")
    t = target.astype(np.int64, copy=False).ravel()
    p = pred.astype(np.int64, copy=False).ravel()
    valid = (t >= 0) & (t < num_classes) & (t != IGNORE_ID)
    t, p = t[valid], p[valid]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"prediction ids outside [0, {num_classes})")
    cm = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def mean_iou(cm: np.ndarray) -> float:
    """Mean of the per-class IoUs of a confusion matrix that exist (NaN when no class has
    any pixel); :func:`sedna_sam.geometry.iou_per_class` is the definition."""
    return mean_of_ious(iou_per_class(cm))


@dataclass
class EvalMetrics:
    """Evaluation of one model on one set of samples."""

    confusion: np.ndarray  # (C, C) int64, rows = ground truth
    names: Sequence[str]
    samples: int
    failed: int = 0
    per_image: dict[str, float] = field(default_factory=dict)  # image path -> that image's mIoU
    seconds: float = 0.0

    @property
    def iou(self) -> np.ndarray:
        return iou_per_class(self.confusion)

    @property
    def miou(self) -> float:
        return mean_iou(self.confusion)

    @property
    def pixel_accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")

    def to_json(self) -> dict:
        """JSON-safe: NaN becomes null; classes without pixels are listed as null."""
        return {
            "mIoU": _num(self.miou),
            "pixel_accuracy": _num(self.pixel_accuracy),
            "samples": self.samples,
            "failed": self.failed,
            "per_class_iou": {n: _num(v) for n, v in zip(self.names, self.iou)},
            "confusion": self.confusion.tolist(),
            "per_image_mIoU": {k: _num(v) for k, v in self.per_image.items()},
            "seconds": round(self.seconds, 3),
        }


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


def evaluate_segformer(
    seg, samples: Sequence[LabelledSample], progress: bool = True, report: BatchReport | None = None
) -> EvalMetrics:
    """EvalMetrics of a loaded :class:`sedna_sam.segformer.Segformer` on labelled samples.

    Predictions are made at each image's own size (logits upsampled before the argmax,
    as at inference). An unreadable sample is reported in ``report`` and skipped.
    """
    import time

    from tqdm import tqdm

    t0 = time.perf_counter()
    names = [seg.id2label.get(i, str(i)) for i in range(seg.num_labels)]
    c = seg.num_labels
    cm = np.zeros((c, c), np.int64)
    per_image: dict[str, float] = {}
    failed = 0
    for s in tqdm(samples, desc="eval", unit="img", disable=not progress):
        try:
            image, label = load_sample(s, c)
        except InputError as exc:
            failed += 1
            if report is not None:
                report.fail(str(s.image), str(exc))
            else:
                log.error("%s", exc)
            continue
        one = confusion_matrix(seg.predict_ids(image), label, c)
        cm += one
        per_image[str(s.image)] = mean_iou(one)
        if report is not None:
            report.ok()
    return EvalMetrics(cm, names, len(samples) - failed, failed, per_image, time.perf_counter() - t0)


def evaluate_model(
    model: str | Path,
    domains: Mapping[str, Sequence[LabelledSample]],
    device: str | None = None,
    progress: bool = True,
) -> dict[str, EvalMetrics]:
    """Load a model once and evaluate it on each named domain's samples."""
    from sedna_sam.segformer import load_segformer

    seg = load_segformer(model, device)
    return {name: evaluate_segformer(seg, samples, progress) for name, samples in domains.items() if samples}
