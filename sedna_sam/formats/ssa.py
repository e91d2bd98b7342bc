"""Semantic Segment Anything (SSA) output: ``<stem>_semantic.json``.

Format (fudan-zvg/Semantic-Segment-Anything)::

    {"annotations": [SAM record + "class_name" + "class_proposals", ...],   # area descending
     "semantic_mask": {"<class id>": {"size": [H, W], "counts": "<COCO RLE string>"}, ...}}

A SAM record (``SamAutomaticMaskGenerator(output_mode="coco_rle")``) has ``segmentation``
(COCO RLE), ``area``, ``bbox`` [x, y, w, h], ``predicted_iou``, ``point_coords``,
``stability_score``, ``crop_box``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam.errors import InputError
from sedna_sam.labels import IGNORE_ID
from sedna_sam.storage import atomic_write_json


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a (H, W) boolean mask, ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """(H, W) bool mask from a COCO RLE with compressed (str/bytes) or list counts."""
    from pycocotools import mask as mask_utils

    size = [int(v) for v in rle["size"]]
    counts = rle["counts"]
    if isinstance(counts, list):
        obj = mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    else:
        obj = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(obj).astype(bool)


def semantic_mask_to_rles(class_map: np.ndarray) -> dict[str, dict[str, Any]]:
    """``semantic_mask`` entry: one RLE per class id present (ignore id excluded)."""
    out: dict[str, dict[str, Any]] = {}
    for class_id in np.unique(class_map):
        if int(class_id) == IGNORE_ID or class_id < 0:
            continue
        out[str(int(class_id))] = encode_rle(class_map == class_id)
    return out


def rles_to_semantic_mask(rles: dict[str, dict[str, Any]], source: str = "<memory>") -> np.ndarray:
    """(H, W) uint16 class map from a ``semantic_mask`` dict; pixels no class covers are 255."""
    if not rles:
        raise InputError(f"{source}: 'semantic_mask' is empty")
    from sedna_sam.images import check_pixels

    if not isinstance(rles, dict):
        raise InputError(f"{source}: 'semantic_mask' is a {type(rles).__name__}, expected an object")
    class_map: np.ndarray | None = None
    for key, rle in rles.items():
        try:
            class_id = int(key)
            height, width = (int(v) for v in rle["size"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"{source}: bad RLE for class {key!r} ({exc})") from None
        # the size is checked before decoding: a 1 KB file may declare 100000 x 100000
        check_pixels(width, height, f"{source}: class {key} mask")
        try:
            mask = decode_rle(rle)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: bad RLE for class {key!r} ({exc})") from None
        if class_map is None:
            class_map = np.full(mask.shape, IGNORE_ID, dtype=np.uint16)
        elif mask.shape != class_map.shape:
            raise InputError(f"{source}: class {key} mask is {mask.shape}, others are {class_map.shape}")
        class_map[mask] = class_id
    assert class_map is not None
    return class_map


@dataclass
class SSAResult:
    """A parsed SSA file: the final semantic map plus the SAM records."""

    class_map: np.ndarray  # (H, W) uint16 train ids, 255 where no class
    annotations: list[dict[str, Any]]

    @property
    def height(self) -> int:
        return int(self.class_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.class_map.shape[1])


def read_ssa(path: str | Path) -> SSAResult:
    """Parse ``<stem>_semantic.json``; errors name the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: malformed JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: malformed JSON (nested too deeply)") from None
    if not isinstance(doc, dict) or "semantic_mask" not in doc:
        raise InputError(f"{path}: not an SSA file (no 'semantic_mask' key)")
    return SSAResult(
        rles_to_semantic_mask(doc["semantic_mask"], str(path)), list(doc.get("annotations") or [])
    )


def ssa_document(
    class_map: np.ndarray, annotations: list[dict[str, Any]], metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The SSA JSON object for a final class map and labelled SAM records; ``metadata``
    (how the file was made, e.g. SAM's mode) goes under an extra ``metadata`` key that
    SSA readers ignore."""
    doc = {"annotations": annotations, "semantic_mask": semantic_mask_to_rles(class_map)}
    if metadata is not None:
        doc["metadata"] = metadata
    return doc


def write_ssa(path: str | Path, class_map: np.ndarray, annotations: list[dict[str, Any]]) -> Path:
    """Atomically write an SSA file."""
    return atomic_write_json(path, ssa_document(class_map, annotations))
