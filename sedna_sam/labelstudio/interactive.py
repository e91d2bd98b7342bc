"""Interactive SAM: clicks and boxes from Label Studio's editor -> a SAM prompt -> polygons.

Label Studio sends the regions drawn with the smart tools (keypoints, rectangles) in
percent of the image; :func:`prompt_from_context` turns them into a SAM prompt in pixels,
:class:`InteractiveSam` answers it with a mask, and :func:`mask_polygon_results` makes the mask
editable ``polygonlabels`` regions. The SAM image embedding (the expensive part: seconds on
a CPU) is computed once per image and kept in a bounded LRU cache, so every further click
on that image costs only the mask decoder (milliseconds). The HTTP side is
:mod:`sedna_sam.labelstudio.backend`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.formats.labelstudio import polygon_result
from sedna_sam.geometry import polygon_area, polygons_from_mask
from sedna_sam.labelstudio.label_config import Controls

log = logging.getLogger(__name__)

PROMPT_TYPES = ("keypointlabels", "rectanglelabels")


@dataclass
class Prompt:
    """SAM prompt in image pixels: ``points`` (N, 2) float (x, y), ``point_labels`` (N,)
    int (1 positive, 0 negative), ``box`` (4,) float (x0, y0, x1, y1) or None; ``label`` the
    class the user picked with the tool (None if the tool had none selected)."""

    points: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None
    label: str | None


def prompt_from_context(
    results: list[dict], width: int, height: int, image_to: str | None = None
) -> Prompt | None:
    """Turn Label Studio context regions (percent coordinates) into a SAM prompt for an
    image of ``width`` x ``height`` pixels. Returns None if there is no keypoint or box.

    Keypoints: ``value.x, value.y`` percent; ``is_positive`` false means a negative click.
    Rectangles: ``value.x, y, width, height`` percent (the last box wins).
    """
    points, point_labels, box, label = [], [], None, None
    if not isinstance(results, list):
        raise InputError("params.context.result must be a list of regions")
    for item in results:
        if not isinstance(item, dict):
            raise InputError("params.context.result holds something that is not a region object")
        kind = item.get("type")
        if kind not in PROMPT_TYPES or (image_to and item.get("to_name", image_to) != image_to):
            continue
        value = item.get("value") or {}
        if not isinstance(value, dict):
            raise InputError(f"context region {item.get('id', '?')}: 'value' is not an object")
        x, y = _percent(value, "x", item) * width / 100.0, _percent(value, "y", item) * height / 100.0
        names = value.get(kind) or []
        if isinstance(names, list) and names and label is None:
            label = str(names[0])[:200]
        if kind == "keypointlabels":
            points.append((x, y))
            point_labels.append(0 if item.get("is_positive") is False else 1)
        else:
            w = _percent(value, "width", item, default=0.0) * width / 100.0
            h = _percent(value, "height", item, default=0.0) * height / 100.0
            box = np.array([x, y, x + w, y + h], dtype=np.float64)
    if not points and box is None:
        return None
    return Prompt(
        np.array(points, dtype=np.float64).reshape(-1, 2), np.array(point_labels, dtype=np.int64), box, label
    )


def _percent(value: dict, key: str, item: dict, default: float | None = None) -> float:
    """A finite percent coordinate of a context region (``x``, ``y``, ``width``, ``height``)."""
    raw = value.get(key, default)
    try:
        number = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or abs(number) > 1000:
        raise InputError(f"context region {str(item.get('id', '?'))[:40]} has no usable numeric {key}")
    return number


def mask_polygon_results(
    mask: np.ndarray,
    label: str,
    controls: Controls,
    tolerance_px: float = 1.0,
    min_area_px: int = 25,
) -> list[dict]:
    """Label Studio ``polygonlabels`` regions for a (H, W) bool mask, points in percent of
    width/height, largest part first (a Label Studio polygon has no holes; each connected
    part becomes one region)."""
    h, w = mask.shape
    polygons = polygons_from_mask(mask, tolerance_px=tolerance_px, min_area_px=min_area_px)
    return [
        polygon_result(
            poly,
            label,
            w,
            h,
            region_id=uuid.uuid4().hex[:10],  # unique across clicks on one task
            from_name=controls.polygon_from,
            to_name=controls.image_to,
        )  # fmt: skip
        for poly in sorted(polygons, key=polygon_area, reverse=True)
    ]


@dataclass
class _Embedding:
    features: object  # (1, 256, 64, 64) tensor on the model's device
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class InteractiveSam:
    """SAM's predictor with a bounded LRU cache of image embeddings.

    ``encoder_calls`` counts image-encoder runs (cache misses). One lock serializes the
    predictor, which holds one image at a time.
    """

    def __init__(self, sam, cache_size: int = 8) -> None:
        from segment_anything import SamPredictor

        if cache_size < 1:
            raise SednaSamError("embedding cache size must be at least 1")
        self.predictor = SamPredictor(sam)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, _Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self.encoder_calls = 0

    def cached(self, key: str) -> bool:
        return key in self._cache

    def clear(self) -> None:
        """Forget every cached embedding (the next click on any image re-embeds it)."""
        with self._lock:
            self._cache.clear()

    def _use(self, key: str, load_image: Callable[[], np.ndarray]) -> bool:
        """Make ``key``'s embedding the predictor's current one; True if it was cached."""
        emb = self._cache.get(key)
        if emb is not None:
            self._cache.move_to_end(key)
            p = self.predictor
            p.features, p.original_size, p.input_size, p.is_image_set = (
                emb.features,
                emb.original_size,
                emb.input_size,
                True,
            )
            return True
        image = load_image()
        t0 = time.perf_counter()
        self.predictor.set_image(image, image_format="RGB")
        self.encoder_calls += 1
        p = self.predictor
        self._cache[key] = _Embedding(p.features, tuple(p.original_size), tuple(p.input_size))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        log.info(
            "embedded %s (%dx%d) in %.2fs", key, image.shape[1], image.shape[0], time.perf_counter() - t0
        )
        return False

    def image_size(self, key: str) -> tuple[int, int] | None:
        """(width, height) of a cached image, or None."""
        emb = self._cache.get(key)
        return None if emb is None else (emb.original_size[1], emb.original_size[0])

    def segment(
        self, key: str, load_image: Callable[[], np.ndarray], prompt: Prompt, multimask: str = "auto"
    ) -> tuple[np.ndarray, float, bool]:
        """Mask for a prompt on image ``key`` -> ((H, W) bool mask, predicted IoU, cache hit).

        ``multimask``: "auto" asks SAM for 3 candidates when the prompt is one click (an
        ambiguous prompt) and 1 otherwise; "always"/"never" force it. The candidate with the
        highest predicted IoU wins.
        """
        multi = {"auto": len(prompt.points) == 1 and prompt.box is None, "always": True, "never": False}[
            multimask
        ]
        with self._lock:
            hit = self._use(key, load_image)
            masks, scores, _ = self.predictor.predict(
                point_coords=prompt.points if len(prompt.points) else None,
                point_labels=prompt.point_labels if len(prompt.points) else None,
                box=prompt.box,
                multimask_output=multi,
            )
        best = int(np.argmax(scores))
        return masks[best].astype(bool), float(scores[best]), hit
