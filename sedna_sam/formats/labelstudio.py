"""Label Studio polygon results: the writer (tasks we import) and the reader (regions of
an exported task), next to each other so the round trip stays exact.

A task we write::

    {"data": {"image": URL},
     "predictions": [{"model_version": ..., "score": ..., "result": [polygon result, ...]}],
     "meta": {"sedna_sam": {...options it was made with...}}}

A polygon result (docs/architecture.md section 4), points in percent of the image size, vertices on
pixel corners (:mod:`sedna_sam.geometry`)::

    {"id", "from_name": "label", "to_name": "image", "type": "polygonlabels",
     "original_width": W, "original_height": H, "image_rotation": 0,
     "value": {"points": [[x%, y%], ...], "polygonlabels": [name], "closed": true}}

Image references are :mod:`sedna_sam.formats.ls_images`; reading export files (JSON and
JSON-MIN) is :mod:`sedna_sam.formats.ls_export`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from sedna_sam.errors import InputError
from sedna_sam.formats.ls_export import ExportedTask, kind_of, parse_export, read_export, short_repr
from sedna_sam.formats.ls_images import image_ref_to_path
from sedna_sam.geometry import Region, polygon_area, regions_from_class_map
from sedna_sam.labels import IGNORE_ID, LabelSet

# docs/convert.md documents the Python API of the Label Studio formats under this module: the
# readers of export files and of image references are re-exported from their own modules.
__all__ = [
    "POLYGON_TYPE",
    "ExportedTask",
    "image_ref_to_path",
    "parse_export",
    "polygon_result",
    "polygon_results",
    "read_export",
    "regions_from_export",
    "task_from_class_map",
    "task_from_regions",
]

log = logging.getLogger(__name__)

POLYGON_TYPE = "polygonlabels"
# What one exported task may ask of the polygon reader (see formats/ls_export.py for why).
MAX_POLYGON_VERTICES = 100_000  # an exact 2048x1024 outline of a busy scene has ~12k in all
MAX_TASK_VERTICES = 1_000_000


# ---------------------------------------------------------------- tasks we write


def polygon_results(
    regions: list[Region],
    labels: LabelSet,
    width: int,
    height: int,
    from_name: str = "label",
    to_name: str = "image",
) -> list[dict[str, Any]]:
    """Label Studio polygon results for pixel-space regions (largest first, so the
    Regions panel lists road before cars)."""
    return [
        polygon_result(
            region.points,
            labels.id2label[region.class_id],
            width,
            height,
            region_id=f"r{i:04d}",
            from_name=from_name,
            to_name=to_name,
        )  # fmt: skip
        for i, region in enumerate(regions)
    ]


def polygon_result(
    points_px: np.ndarray,
    label: str,
    width: int,
    height: int,
    *,
    region_id: str,
    from_name: str = "label",
    to_name: str = "image",
) -> dict[str, Any]:
    """One Label Studio ``polygonlabels`` result: (N, 2) x, y pixel-corner coordinates
    (geometry's convention) as percentages of the image size, kept inside 0-100, rounded to
    5 decimals (1e-5 % of 100000 px is 0.01 px: the round trip stays exact). The one writer of
    a polygon result: converters and the interactive backend use it."""
    pts = np.asarray(points_px, dtype=np.float64)
    percent = np.stack([pts[:, 0] * (100.0 / width), pts[:, 1] * (100.0 / height)], axis=1)
    return {
        "id": region_id,
        "from_name": from_name,
        "to_name": to_name,
        "type": POLYGON_TYPE,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {
            "points": np.round(np.clip(percent, 0.0, 100.0), 5).tolist(),
            "polygonlabels": [label],
            "closed": True,
        },
    }


def task_from_regions(
    results: list[dict[str, Any]],
    image_ref: str,
    *,
    kind: str = "predictions",
    model_version: str = "sedna-sam",
    score: float | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One task: ``{"data": {"image"}, kind: [...]}`` with kind ``predictions`` (editable
    suggestions) or ``annotations`` (imported as finished labels)."""
    if kind not in ("predictions", "annotations"):
        raise ValueError(f"kind must be 'predictions' or 'annotations', not {kind!r}")
    entry: dict[str, Any] = {"result": results}
    if kind == "predictions":
        entry["model_version"] = model_version
        if score is not None:
            entry["score"] = float(score)
    task: dict[str, Any] = {"data": {"image": image_ref}, kind: [entry]}
    if meta:
        task["meta"] = meta
    return task


def task_from_class_map(
    class_map: np.ndarray,
    labels: LabelSet,
    image_url: str,
    *,
    kind: str = "predictions",
    model_version: str = "sedna-sam",
    tolerance_px: float = 1.0,
    min_area_px: float = 0.0,
    from_name: str = "label",
    to_name: str = "image",
    score: float | None = None,
    stats: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A Label Studio task with one polygon per connected component of each class of a
    (H, W) train-id map (255 = no class, gets no polygon).

    Raises :class:`InputError` if the map holds an id ``labels`` lacks. If ``stats`` is
    given it receives ``regions``, ``vertices`` and ``dropped`` (components smaller than
    ``min_area_px``).
    """
    present = {int(v) for v in np.unique(class_map)} - {IGNORE_ID}
    unknown = sorted(present - set(labels.id2label))
    if unknown:
        raise InputError(f"{image_url}: class ids {unknown} are not in the labels config {labels.source}")
    regions, dropped = regions_from_class_map(class_map, tolerance_px, min_area_px)
    h, w = class_map.shape
    results = polygon_results(regions, labels, w, h, from_name, to_name)
    if stats is not None:
        stats.update(regions=len(regions), vertices=sum(len(r.points) for r in regions), dropped=dropped)
    return task_from_regions(results, image_url, kind=kind, model_version=model_version, score=score)


# ---------------------------------------------------------------- exports we read


def regions_from_export(
    task: ExportedTask,
    labels: LabelSet,
    width: int,
    height: int,
    *,
    ignore_unknown_labels: bool = False,
    notes: dict[str, int] | None = None,
) -> list[Region]:
    """Pixel-space regions of an exported task's polygon results.

    Points outside 0..100 % are clipped (warning, counted as ``points clipped``); a label
    the config lacks raises :class:`InputError` naming label and task, or with
    ``ignore_unknown_labels`` is skipped (``unknown labels skipped``); non-polygon results
    are counted as ``non-polygon results ignored``. A malformed polygon (a ``value`` that
    is not an object, points that are not ``[[x, y], ...]``, more than
    :data:`MAX_POLYGON_VERTICES` vertices) raises :class:`InputError` naming the task.
    """
    notes = notes if notes is not None else {}
    label2id = labels.label2id
    regions: list[Region] = []
    clipped = 0
    vertices = 0
    for i, result in enumerate(task.results):
        where = f"{task.source}: {task.name}: result {i}"
        kind = str(result.get("type") or "").lower()
        value = result.get("value")
        if kind == POLYGON_TYPE and not isinstance(value, dict):
            raise InputError(f"{where}: 'value' is {kind_of(value)}, expected an object with points")
        if kind != POLYGON_TYPE or "points" not in value:
            notes["non-polygon results ignored"] = notes.get("non-polygon results ignored", 0) + 1
            continue
        names = value.get("polygonlabels") or []
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names:
            raise InputError(f"{where}: the polygon has no label")
        name = names[0]
        if not isinstance(name, str):
            raise InputError(f"{where}: the polygon's label is {kind_of(name)}, expected a string")
        if name not in label2id:
            if ignore_unknown_labels:
                notes["unknown labels skipped"] = notes.get("unknown labels skipped", 0) + 1
                continue
            raise InputError(
                f"{task.source}: {task.name}: label {short_repr(name)} is not in the labels config "
                f"{labels.source} (pass --ignore-unknown-labels to skip such regions)"
            )
        points = value["points"]
        if not isinstance(points, list):
            raise InputError(f"{where}: polygon points are {kind_of(points)}, expected [[x, y], ...]")
        if len(points) > MAX_POLYGON_VERTICES:
            raise InputError(
                f"{where}: a polygon of {len(points)} vertices (at most {MAX_POLYGON_VERTICES} are "
                "accepted; simplify it)"
            )
        vertices += len(points)
        if vertices > MAX_TASK_VERTICES:
            raise InputError(
                f"{task.source}: {task.name}: polygons of more than {MAX_TASK_VERTICES} vertices in all"
            )
        try:
            pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{where}: polygon points are not [[x, y], ...]") from None
        if not np.isfinite(pts).all():
            raise InputError(f"{where}: polygon points are not finite numbers")
        outside = (pts < 0) | (pts > 100)
        if outside.any():
            clipped += int(outside.any(axis=1).sum())
            pts = np.clip(pts, 0.0, 100.0)
        px = np.stack([pts[:, 0] * (width / 100.0), pts[:, 1] * (height / 100.0)], axis=1)
        regions.append(Region(label2id[name], px, polygon_area(px)))
    if clipped:
        log.warning("%s: %s: %d points outside 0..100%% clipped", task.source, task.name, clipped)
        notes["points clipped"] = notes.get("points clipped", 0) + clipped
    return regions
