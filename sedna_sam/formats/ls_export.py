"""Label Studio exports (what we read back): full JSON and JSON-MIN into :class:`ExportedTask`.

Two shapes, both read by :func:`read_export`:

* full JSON: ``[{"id", "data": {"image"}, "annotations": [{"id", "result", "updated_at",
  "was_cancelled", ...}], ...}]`` -- the latest submitted annotation is used;
* JSON-MIN: ``[{"image", "id", "<from_name>": [{"points", "polygonlabels",
  "original_width", "original_height", ...}], "annotation_id", "updated_at", ...}]`` --
  one record per annotation; the latest per task is used.

An export is input from outside (people edit tasks, scripts write them): every item is
checked on its own, and one hostile or broken task fails alone, named, instead of the file.
The polygons of an exported task become pixel regions in
:func:`sedna_sam.formats.labelstudio.regions_from_export`, beside their writer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam.errors import InputError
from sedna_sam.formats.ls_images import stem_of_ref

# Limits on what one task of an export may ask of us, so that one hostile or broken task
# fails alone instead of taking the memory of the converter (or the cloud service) down;
# the vertex limits are with the polygon reader (formats/labelstudio.py).
MAX_STEM_BYTES = 200  # train_ids/<stem>_TrainIds_color.png must stay a legal file name


def kind_of(value: Any) -> str:
    """How messages name a JSON value's type."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else f"a {type(value).__name__}"
    )


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _optional_int(value: Any, what: str) -> int | None:
    """``value`` as an id: an integer or null (a list or a string is refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} is {kind_of(value)} ({short_repr(value)}), expected an integer")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InputError(f"{what} is {kind_of(value)} ({short_repr(value)}), expected a date string")


def _image_ref(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} is {kind_of(value)} ({short_repr(value)}), expected an image URL or path")
    if "\x00" in value:
        raise InputError(f"{what} contains a NUL character")
    return value


def _pixels(value: Any, what: str) -> int:
    """A positive whole number of pixels (``2048`` or ``2048.0``; not 0.5, inf or "2048")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} is {kind_of(value)} ({short_repr(value)}), expected a positive integer")
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
            raise InputError(f"{self.source}: {self.name}: image {short_repr(self.image)} names no file")
        if len(stem.encode("utf-8")) > MAX_STEM_BYTES:
            raise InputError(
                f"{self.source}: {self.name}: image name is {len(stem.encode('utf-8'))} bytes long; "
                f"TrainIds file names need it under {MAX_STEM_BYTES} (rename the image)"
            )
        return stem

    @property
    def name(self) -> str:
        """How messages refer to this task."""
        image = short_repr(self.image, 120) if len(self.image) > 120 else self.image
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
        raise InputError(f"'data' is {kind_of(data)}, expected an object with {image_key!r}")
    image = _image_ref(data.get(image_key), f"data.{image_key}")
    raw = task.get("annotations") or task.get("completions") or []
    if not isinstance(raw, list):
        raise InputError(f"'annotations' is {kind_of(raw)}, expected a list")
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
        raise InputError(f"annotation {latest.get('id')}: 'result' is {kind_of(result)}, expected a list")
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
            kind = next(k for k in item if k.endswith("labels"))  # _is_region saw one
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
        raise InputError(f"{source}: expected a list of tasks, got {kind_of(data)}")
    tasks: list[ExportedTask] = []
    for i, item in enumerate(data):
        try:
            if isinstance(item, _Unreadable):
                raise InputError(item.message)
            if not isinstance(item, dict):
                raise InputError(f"is {kind_of(item)}, not a task object")
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
