"""Label Studio tasks (what we import) and exports (what we read back), in one place.

A task we write::

    {"data": {"image": URL},
     "predictions": [{"model_version": ..., "score": ..., "result": [polygon result, ...]}],
     "meta": {"sedna_sam": {...options it was made with...}}}

A polygon result (docs/architecture.md section 4), points in percent of the image size, vertices on
pixel corners (:mod:`sedna_sam.geometry`)::

    {"id", "from_name": "label", "to_name": "image", "type": "polygonlabels",
     "original_width": W, "original_height": H, "image_rotation": 0,
     "value": {"points": [[x%, y%], ...], "polygonlabels": [name], "closed": true}}

Exports come in two shapes, both read by :func:`read_export` into :class:`ExportedTask`:

* full JSON: ``[{"id", "data": {"image"}, "annotations": [{"id", "result", "updated_at",
  "was_cancelled", ...}], ...}]`` -- the latest non-cancelled annotation is used;
* JSON-MIN: ``[{"image", "id", "<from_name>": [{"points", "polygonlabels",
  "original_width", "original_height", ...}], "annotation_id", "updated_at", ...}]`` --
  one record per annotation; the latest per task is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

import numpy as np

from sedna_sam.errors import InputError
from sedna_sam.geometry import Region, polygon_area, regions_from_class_map
from sedna_sam.labels import IGNORE_ID, LabelSet
from sedna_sam.storage import image_stem

log = logging.getLogger(__name__)

LOCAL_FILES_PREFIX = "/data/local-files/?d="
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
# Label Studio stores uploads as /data/upload/<project id>/<8 hex>-<original name>.
_UPLOAD_RE = re.compile(r"/data/upload/\d+/[0-9a-fA-F]{8}-(?P<name>[^/]+)$")
POLYGON_TYPE = "polygonlabels"


# ---------------------------------------------------------------- image references


def document_root() -> Path:
    """Label Studio's local-files document root ($LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT;
    Label Studio itself defaults to the file-system root)."""
    return Path(os.environ.get(DOCUMENT_ROOT_ENV) or os.path.abspath(os.sep)).resolve()


def image_url(path: str | Path, image_root: str | None = None) -> str:
    """URL Label Studio loads an image from.

    ``image_root=None``: ``/data/local-files/?d=<path relative to the document root>``
    (URL-encoded; the image must lie under the root). Otherwise ``image_root`` is a plain
    prefix (``http://host/images/``, ``s3://bucket/raw/``) followed by the file name.
    """
    path = Path(path)
    if image_root is None:
        root = document_root()
        absolute = path.resolve()
        try:
            relative = absolute.relative_to(root)
        except ValueError:
            raise InputError(
                f"{path}: image is outside the Label Studio document root {root} "
                f"(set {DOCUMENT_ROOT_ENV} to a folder that contains it, or pass --image-root)"
            ) from None
        return LOCAL_FILES_PREFIX + quote(relative.as_posix(), safe="/")
    name = quote(path.name) if image_root.startswith(("http://", "https://", "/")) else path.name
    sep = "" if image_root.endswith(("/", "=")) else "/"
    return image_root + sep + name


def image_ref_to_path(ref: str) -> str:
    """The file path an image reference in a task points at.

    Decodes ``/data/local-files/?d=<url-encoded path>`` (relative to the document root,
    optionally behind ``http://host``), ``/data/upload/<project>/<8 hex>-<name>`` (gives
    ``<name>``; other upload names are kept whole), ``s3://``/``http(s)://`` URLs and plain
    paths.
    """
    ref = ref.strip()
    parsed = urlparse(ref)
    if parsed.path.endswith("/data/local-files/") or parsed.path.endswith("/data/local-files"):
        values = parse_qs(parsed.query, keep_blank_values=True).get("d")
        if not values or not values[0]:
            raise InputError(f"image reference {ref!r} has no ?d=<path>")
        return str(document_root() / values[0].lstrip("/"))
    if "/data/upload/" in parsed.path:
        path = unquote(parsed.path)
        match = _UPLOAD_RE.search(path)
        return match.group("name") if match else path.rsplit("/", 1)[-1]
    if parsed.scheme in ("http", "https", "s3", "gs", "azure-blob", "file") and parsed.netloc:
        return unquote(parsed.path)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return ref


def stem_of_ref(ref: str) -> str:
    """Dataset stem (file name without image extension) of an image reference."""
    return image_stem(Path(image_ref_to_path(ref)).name)


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

# Limits on what one task of an export may ask of us, so that one hostile or broken task
# fails alone instead of taking the memory of the converter (or the cloud service) down.
MAX_POLYGON_VERTICES = 100_000  # an exact 2048x1024 outline of a busy scene has ~12k in all
MAX_TASK_VERTICES = 1_000_000
MAX_STEM_BYTES = 200  # train_ids/<stem>_TrainIds_color.png must stay a legal file name


def _kind(value: Any) -> str:
    """How messages name a JSON value's type."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else f"a {type(value).__name__}"
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _optional_int(value: Any, what: str) -> int | None:
    """``value`` as an id: an integer or null (a list or a string is refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} is {_kind(value)} ({_short(value)}), expected an integer")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InputError(f"{what} is {_kind(value)} ({_short(value)}), expected a date string")


def _image_ref(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} is {_kind(value)} ({_short(value)}), expected an image URL or path")
    if "\x00" in value:
        raise InputError(f"{what} contains a NUL character")
    return value


def _pixels(value: Any, what: str) -> int:
    """A positive whole number of pixels (``2048`` or ``2048.0``; not 0.5, inf or "2048")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} is {_kind(value)} ({_short(value)}), expected a positive integer")
    if isinstance(value, float) and not (np.isfinite(value) and value.is_integer()):
        raise InputError(f"{what} is {value!r}, expected a positive integer")
    if value <= 0:
        raise InputError(f"{what} is {value!r}, expected a positive integer")
    return int(value)


@dataclass
class ExportedTask:
    """One task of a Label Studio export, whichever export format it came from.

    ``results`` are the chosen annotation's results as ``{"type", "value", "original_width",
    "original_height"}`` dicts (``value`` holds ``points`` and ``polygonlabels``);
    ``annotated`` is False when the task has no usable (non-cancelled) annotation.
    ``error`` says why the task cannot be converted at all (a malformed item of the export:
    a list where an id belongs, no image, ...); converters fail such a task by its name and
    go on with the others.
    """

    task_id: int | None
    image: str
    results: list[dict[str, Any]] = field(default_factory=list)
    annotation_id: int | None = None
    updated_at: str | None = None
    annotated: bool = True
    source: str = "<memory>"
    export_format: str = "json"
    error: str | None = None

    @property
    def stem(self) -> str:
        """Dataset stem of the image; :class:`InputError` naming the task when it cannot
        be a file name (empty, or too long)."""
        stem = stem_of_ref(self.image)
        if not stem or stem in (".", ".."):
            raise InputError(f"{self.source}: {self.name}: image {_short(self.image)} names no file")
        if len(stem.encode("utf-8")) > MAX_STEM_BYTES:
            raise InputError(
                f"{self.source}: {self.name}: image name is {len(stem.encode('utf-8'))} bytes long; "
                f"TrainIds file names need it under {MAX_STEM_BYTES} (rename the image)"
            )
        return stem

    @property
    def name(self) -> str:
        """How messages refer to this task."""
        image = _short(self.image, 120) if len(self.image) > 120 else self.image
        return f"task {self.task_id} ({image})" if self.task_id is not None else image

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) from the results' original_width/height; None if absent.
        Raises :class:`InputError` if a size is not a positive integer, is over the pixel
        cap, or the results disagree."""
        from sedna_sam.images import check_pixels

        sizes = set()
        for i, r in enumerate(self.results):
            w, h = r.get("original_width"), r.get("original_height")
            if w is None and h is None:
                continue
            where = f"{self.source}: {self.name}: result {i}"
            if w is None or h is None:
                raise InputError(f"{where} has only one of original_width/original_height")
            size = (_pixels(w, f"{where}: original_width"), _pixels(h, f"{where}: original_height"))
            check_pixels(*size, f"{where}: original_width x original_height")
            sizes.add(size)
        if len(sizes) > 1:
            raise InputError(
                f"{self.source}: {self.name}: results disagree on the image size: {sorted(sizes)}"
            )
        return sizes.pop() if sizes else None


def _sort_key(ann: dict[str, Any]) -> tuple[str, int]:
    return (str(ann.get("updated_at") or ann.get("created_at") or ""), int(ann.get("id") or 0))


def is_submitted(annotation: Any) -> bool:
    """An annotation a person submitted: cancelled and skipped ones do not count."""
    return (
        isinstance(annotation, dict) and not annotation.get("was_cancelled") and not annotation.get("skipped")
    )


def latest_annotation(annotations: Any) -> dict[str, Any] | None:
    """The newest submitted annotation of a task (by ``updated_at``, else ``created_at``,
    then id), or None: the one rule for exports, ``ls pull`` and the cloud service."""
    submitted = [a for a in annotations or [] if is_submitted(a)] if isinstance(annotations, list) else []
    return max(submitted, key=_sort_key) if submitted else None


def _from_full_task(task: dict[str, Any], source: str, image_key: str) -> ExportedTask:
    task_id = _optional_int(task.get("id"), "'id'")
    data = task.get("data")
    if not isinstance(data, dict):
        raise InputError(f"'data' is {_kind(data)}, expected an object with {image_key!r}")
    image = _image_ref(data.get(image_key), f"data.{image_key}")
    raw = task.get("annotations") or task.get("completions") or []
    if not isinstance(raw, list):
        raise InputError(f"'annotations' is {_kind(raw)}, expected a list")
    for j, a in enumerate(raw):
        if is_submitted(a):  # checked before they are compared
            _optional_int(a.get("id"), f"annotation {j}: 'id'")
            _optional_str(a.get("updated_at"), f"annotation {j}: 'updated_at'")
            _optional_str(a.get("created_at"), f"annotation {j}: 'created_at'")
    latest = latest_annotation(raw)
    if latest is None:
        return ExportedTask(task_id, image, annotated=False, source=source, export_format="json")
    result = latest.get("result")
    if result is None:
        result = []
    if not isinstance(result, list):
        raise InputError(f"annotation {latest.get('id')}: 'result' is {_kind(result)}, expected a list")
    results = [r for r in result if isinstance(r, dict)]
    return ExportedTask(
        task_id,
        image,
        results,
        latest.get("id"),
        latest.get("updated_at") or latest.get("created_at"),
        True,
        source,
        "json",
    )


def _is_region(value: Any) -> bool:
    return isinstance(value, dict) and "points" in value and any(k.endswith("labels") for k in value)


def _from_min_record(record: dict[str, Any], source: str, image_key: str) -> ExportedTask:
    task_id = _optional_int(record.get("id"), "'id'")
    image = _image_ref(record.get(image_key), repr(image_key))
    annotation_id = _optional_int(record.get("annotation_id"), "'annotation_id'")
    updated_at = _optional_str(record.get("updated_at"), "'updated_at'") or _optional_str(
        record.get("created_at"), "'created_at'"
    )
    results = []
    for key, value in record.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not _is_region(item):
                continue
            kind = next((k for k in item if k.endswith("labels")), POLYGON_TYPE)
            results.append(
                {
                    "from_name": key,
                    "type": kind,
                    "original_width": item.get("original_width"),
                    "original_height": item.get("original_height"),
                    "value": item,
                }
            )
    annotated = annotation_id is not None or bool(results)
    return ExportedTask(task_id, image, results, annotation_id, updated_at, annotated, source, "json-min")


class _Unreadable:
    """A top-level item of an export that could not even be parsed (see :func:`loads_export`)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _failed_item(item: Any, index: int, source: str, message: str) -> ExportedTask:
    """A task that cannot be converted, named as well as its broken item allows."""
    task_id = item.get("id") if isinstance(item, dict) else None
    task_id = task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None
    image = None
    if isinstance(item, dict):
        data = item.get("data")
        image = data.get("image") if isinstance(data, dict) else item.get("image")
    label = image if isinstance(image, str) and image else f"item {index}"
    return ExportedTask(
        task_id, label, annotated=True, source=source, error=f"{source}: item {index}: {message}"
    )


def parse_export(data: Any, source: str = "<memory>", image_key: str = "image") -> list[ExportedTask]:
    """Parse a loaded export (full JSON or JSON-MIN list, or one task dict) into
    :class:`ExportedTask` records, one per task (the latest annotation wins).

    Each item is checked on its own: a malformed one (not an object, an id that is a list,
    no image, ``annotations`` that is not a list, ...) becomes a task whose ``error`` names
    the item and the problem; the others are parsed as usual. Only an export that is not a
    list at all raises :class:`InputError`."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InputError(f"{source}: expected a list of tasks, got {_kind(data)}")
    tasks: list[ExportedTask] = []
    for i, item in enumerate(data):
        try:
            if isinstance(item, _Unreadable):
                raise InputError(item.message)
            if not isinstance(item, dict):
                raise InputError(f"is {_kind(item)}, not a task object")
            if "data" in item or "annotations" in item or "completions" in item:
                tasks.append(_from_full_task(item, source, image_key))
            else:
                tasks.append(_from_min_record(item, source, image_key))
        except InputError as exc:
            tasks.append(_failed_item(item, i, source, str(exc)))
    # JSON-MIN lists every annotation of a task; keep the latest per task id.
    latest: dict[Any, ExportedTask] = {}
    order: list[Any] = []
    for i, t in enumerate(tasks):
        if t.error:
            key: Any = ("failed", i)
        else:
            key = t.task_id if t.task_id is not None else ("image", t.image)
        if key not in latest:
            order.append(key)
            latest[key] = t
        elif (t.annotated, t.updated_at or "", t.annotation_id or 0) > (
            latest[key].annotated,
            latest[key].updated_at or "",
            latest[key].annotation_id or 0,
        ):
            latest[key] = t
    return [latest[k] for k in order]


_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(r'["\[\]{}]')


def _skip_value(text: str, start: int) -> int:
    """Index just past the JSON array/object starting at ``start`` (brackets counted
    outside strings, no recursion): how an item too deep to parse is stepped over."""
    depth, pos = 0, start
    while True:
        match = _BRACKETS.search(text, pos)
        if match is None:
            raise ValueError("unterminated array or object")
        char = match.group()
        if char == '"':
            string = _STRING.match(text, match.start())
            if string is None:
                raise ValueError("unterminated string")
            pos = string.end()
            continue
        depth += 1 if char in "[{" else -1
        pos = match.end()
        if depth == 0:
            return pos


def loads_export(text: str, source: str) -> Any:
    """``json.loads`` for an export, except that a top-level item nested deeper than the
    parser can follow becomes one unreadable item (reported by :func:`parse_export` as a
    failed task) instead of failing the whole file. Raises :class:`InputError` naming the
    file when it is not JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        pass
    except ValueError as exc:
        raise InputError(f"{source}: malformed JSON ({exc})") from None
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end()
    if text[pos : pos + 1] != "[":
        raise InputError(f"{source}: malformed JSON (nested too deeply to read)")
    items: list[Any] = []
    pos = _WS.match(text, pos + 1).end()
    if text[pos : pos + 1] == "]":
        return items
    try:
        while True:
            try:
                item, pos = decoder.raw_decode(text, pos)
            except RecursionError:
                end = _skip_value(text, pos)
                item = _Unreadable(
                    f"nested deeper than the JSON reader follows ({end - pos} characters skipped)"
                )
                pos = end
            items.append(item)
            pos = _WS.match(text, pos).end()
            sep = text[pos : pos + 1]
            if sep == "]":
                return items
            if sep != ",":
                raise ValueError(f"expected ',' or ']' at character {pos}")
            pos = _WS.match(text, pos + 1).end()
    except ValueError as exc:
        raise InputError(f"{source}: malformed JSON ({exc})") from None


def read_export(path: str | Path, image_key: str = "image") -> list[ExportedTask]:
    """Read a Label Studio export file (JSON-MIN or full JSON); errors name the file, and
    a malformed task fails alone (see :func:`parse_export`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: export file not found") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: malformed JSON ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the export ({exc.strerror})") from None
    return parse_export(loads_export(text, str(path)), str(path), image_key)


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
            raise InputError(f"{where}: 'value' is {_kind(value)}, expected an object with points")
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
            raise InputError(f"{where}: the polygon's label is {_kind(name)}, expected a string")
        if name not in label2id:
            if ignore_unknown_labels:
                notes["unknown labels skipped"] = notes.get("unknown labels skipped", 0) + 1
                continue
            raise InputError(
                f"{task.source}: {task.name}: label {_short(name)} is not in the labels config "
                f"{labels.source} (pass --ignore-unknown-labels to skip such regions)"
            )
        points = value["points"]
        if not isinstance(points, list):
            raise InputError(f"{where}: polygon points are {_kind(points)}, expected [[x, y], ...]")
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
