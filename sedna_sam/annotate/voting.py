"""SSA's semantic voting, vectorised and memory-bounded.

The rule (Semantic-Segment-Anything's closed-set pipeline): SAM masks are sorted largest
first; each mask takes the most frequent semantic class among the pixels it covers
(counted on the semantic model's *original* per-pixel map; ties go to the smallest class
id, as ``argmax`` does); then, in that order, the class overwrites the map inside the
mask, so where masks overlap the smaller one wins.

Here no mask is decoded to a full image: each COCO RLE is turned into the flat indices of
its foreground pixels (vectorised run parsing, cost = the mask's area), its class histogram
is one ``np.bincount`` over those pixels, and the "who covers this pixel last" owner map is
one indexed assignment; the final map is then one gather (``mask_classes[owner]``).
Memory is a few (H, W) arrays whatever the number of masks. Python loops run over masks,
never over pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Pixels decoded at once by :meth:`MaskSet.decode_all`.
MAX_CHUNK_PIXELS = 64 * 1024 * 1024


def rle_runs(counts: str | bytes) -> np.ndarray:
    """Run lengths (int64) of a compressed COCO RLE ``counts`` string, parsed vectorised.

    COCO's format: each number is little-endian 5-bit groups, one character per group
    (char - 48); bit 0x20 says another group follows, bit 0x10 of the last group is the
    sign; from the fourth number on, each is stored as the difference to the number two
    places before it. Runs alternate background, foreground, starting with background,
    over the pixels in column-major order.
    """
    raw = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else bytes(counts), np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    c = raw.astype(np.int64) - 48
    last = (c & 0x20) == 0  # this char ends a number
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    pos = np.arange(len(c)) - starts[group]  # index of the 5-bit group within its number
    value = np.add.reduceat((c & 0x1F) << (5 * pos), starts)
    negative = (c[ends] & 0x10) != 0
    value[negative] -= np.int64(1) << (5 * (pos[ends[negative]] + 1))
    # Undo the delta coding: x[m] = d[m] + x[m - 2] for m > 2.
    out = value.copy()
    out[3::2] = np.cumsum(value[1::2])[1:]
    if len(value) > 4:
        out[4::2] = value[2] + np.cumsum(value[4::2])
    return out


def rle_indices(rle: dict[str, Any]) -> np.ndarray:
    """Column-major flat indices (int64, ascending) of a COCO RLE's foreground pixels."""
    counts = rle["counts"]
    runs = np.asarray(counts, dtype=np.int64) if isinstance(counts, list) else rle_runs(counts)
    bounds = np.concatenate(([0], np.cumsum(runs)))
    fg_start, fg_len = bounds[1:-1:2], runs[1::2]
    total = int(fg_len.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Concatenated aranges: each run contributes start, start+1, ..., start+len-1.
    offsets = np.repeat(fg_start - (np.cumsum(fg_len) - fg_len), fg_len)
    return offsets + np.arange(total, dtype=np.int64)


@dataclass
class MaskSet:
    """SAM masks of one image, largest first, held as COCO RLEs (or a dense stack).

    Build with :meth:`from_rles` (SAM records' ``segmentation``) or :meth:`from_dense`
    ((N, H, W) bool). ``shape`` is (H, W). Pixel indices are column-major (COCO's order).
    """

    shape: tuple[int, int]
    rles: list[dict[str, Any]] | None = None
    dense: np.ndarray | None = None  # (N, H, W) bool
    _owner: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_rles(cls, rles: Sequence[dict[str, Any]], shape: tuple[int, int]) -> MaskSet:
        return cls((int(shape[0]), int(shape[1])), rles=list(rles))

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> MaskSet:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got {masks.shape}")
        return cls((masks.shape[1], masks.shape[2]), dense=masks)

    def __len__(self) -> int:
        return len(self.rles) if self.rles is not None else len(self.dense)  # type: ignore[arg-type]

    def indices(self, i: int) -> np.ndarray:
        """Column-major flat pixel indices of mask ``i`` (cost: its area, not H*W, for RLEs)."""
        if self.dense is not None:
            return np.flatnonzero(self.dense[i].T)
        return rle_indices(self.rles[i])  # type: ignore[index]

    def decode_all(self) -> np.ndarray:
        """(N, H, W) bool; memory N*H*W bytes (for labelers that need every mask at once)."""
        if self.dense is not None:
            return self.dense
        from pycocotools import mask as mask_utils

        out = np.zeros((len(self), *self.shape), dtype=bool)
        step = max(1, MAX_CHUNK_PIXELS // max(1, self.shape[0] * self.shape[1]))
        for start in range(0, len(self), step):
            objs = [_coco_obj(r) for r in self.rles[start : start + step]]  # type: ignore[index]
            out[start : start + len(objs)] = mask_utils.decode(objs).view(bool).transpose(2, 0, 1)
        return out


def _coco_obj(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    h, w = (int(v) for v in rle["size"])
    if isinstance(counts, list):
        from pycocotools import mask as mask_utils

        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def class_counts_and_owner(
    class_ids: np.ndarray, masks: MaskSet, num_classes: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the masks.

    ``class_ids`` (H, W) int in [0, num_classes) -> (counts (N, num_classes) int64: pixels
    of each class inside each mask; owner (H, W) int32: index of the last mask covering each
    pixel, -1 where none does). The owner map is cached on ``masks``.

    Each mask is read as the pixel indices of its RLE runs, so its cost is its area, not
    the image area (a plain loop decodes every mask to a full H x W array).
    """
    h, w = masks.shape
    if class_ids.shape != (h, w):
        raise ValueError(f"semantic map {class_ids.shape} and masks {masks.shape} differ in size")
    ids = np.asarray(class_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ValueError(f"semantic class ids must be in [0, {num_classes})")
    ids_cm = np.ascontiguousarray(ids.T).ravel()  # column-major, like the RLE indices
    counts = np.zeros((len(masks), num_classes), dtype=np.int64)
    owner_cm = np.full(h * w, -1, dtype=np.int32)
    for i in range(len(masks)):
        idx = masks.indices(i)
        if idx.size == 0:
            continue  # empty mask: no votes, owns nothing
        if idx[-1] >= h * w:
            raise ValueError(f"mask {i} covers more pixels than its {h}x{w} image")
        counts[i] = np.bincount(ids_cm[idx], minlength=num_classes)
        # Largest first: a later (smaller) mask overwrites where masks overlap.
        owner_cm[idx] = i
    owner = owner_cm.reshape(w, h).T
    masks._owner = owner
    return counts, owner


def top_class(counts: np.ndarray) -> np.ndarray:
    """(N, K) histograms -> (N,) int64 most frequent class (ties: smallest id); -1 for empty masks."""
    top = counts.argmax(axis=1).astype(np.int64)
    top[counts.sum(axis=1) == 0] = -1
    return top


def paint(class_ids: np.ndarray, owner: np.ndarray, mask_classes: np.ndarray) -> np.ndarray:
    """Final map: each pixel takes the class of the last mask covering it, else keeps its
    semantic class. ``owner`` from :func:`class_counts_and_owner`; ``mask_classes`` (N,)
    int, -1 only for empty masks (they own no pixel)."""
    final = np.asarray(class_ids).copy()
    covered = owner >= 0
    painted = np.asarray(mask_classes)[owner[covered]]
    if painted.size and painted.min() < 0:
        raise ValueError("a non-empty mask has no class (-1); labelers must label every non-empty mask")
    final[covered] = painted
    return final


def ssa_vote(class_ids: np.ndarray, masks: MaskSet, num_classes: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """SSA's rule in full: (mask classes (N,) int64, final map (H, W) like ``class_ids``)."""
    counts, owner = class_counts_and_owner(class_ids, masks, num_classes)
    mask_classes = top_class(counts)
    return mask_classes, paint(class_ids, owner, mask_classes)
