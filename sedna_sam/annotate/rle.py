"""Masks kept as their bounding-box crop, and their COCO RLE without a full-size array.

SAM's generator upsamples every candidate to full size and run-length encodes it at once.
Here a surviving mask is kept as a :class:`BoxMask`: the (h, w) bool pixels of its box and
where that box sits in the image. Its uncompressed RLE (column-major runs, first run of
zeros, exactly segment-anything's ``mask_to_rle_pytorch`` output) is computed from the
box alone (:func:`box_mask_rles`), many masks in one pass on the masks' device (CUDA or
CPU), with one transfer of the change positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class BoxMask:
    """``pixels`` (h, w) bool (any device) at ``top``, ``left`` of a ``size`` (H, W) image."""

    pixels: Tensor
    top: int
    left: int
    size: tuple[int, int]

    def full(self) -> np.ndarray:
        """(H, W) bool numpy mask."""
        out = np.zeros(self.size, dtype=bool)
        h, w = self.pixels.shape
        out[self.top : self.top + h, self.left : self.left + w] = self.pixels.cpu().numpy()
        return out

    def box(self) -> list[int]:
        """XYXY box of the pixels in image coordinates, inclusive, [0, 0, 0, 0] when empty
        (as ``batched_mask_to_box`` on the full mask)."""
        rows = self.pixels.any(1).nonzero()
        cols = self.pixels.any(0).nonzero()
        if len(rows) == 0:
            return [0, 0, 0, 0]
        return [
            self.left + int(cols[0]),
            self.top + int(rows[0]),
            self.left + int(cols[-1]),
            self.top + int(rows[-1]),
        ]


def crop_to_boxes(masks: Tensor, boxes: Tensor, top: int, left: int, size: tuple[int, int]) -> list[BoxMask]:
    """:class:`BoxMask` per mask of ``masks`` (n, h, w) bool with XYXY ``boxes`` (n, 4) in the
    masks' frame, which sits at (``top``, ``left``) in the ``size`` image. Copies: the big
    ``masks`` tensor can be freed afterwards."""
    out = []
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
        out.append(BoxMask(mask[y0 : y1 + 1, x0 : x1 + 1].clone(), top + y0, left + x0, size))
    return out


def box_mask_rles(masks: list[BoxMask]) -> list[dict[str, Any]]:
    """Uncompressed COCO RLEs ``{"size": [H, W], "counts": [...]}`` of ``masks``, counts
    column-major starting with a run of zeros (0 when the first pixel is set), no trailing
    empty run: the same lists as segment-anything's ``mask_to_rle_pytorch``."""
    if not masks:
        return []
    # Each box transposed to column-major and padded with a False row above and below, so
    # every run starts and ends inside its own column's segment of the flat array.
    flats = [F.pad(m.pixels.t().contiguous(), (1, 1)).reshape(-1) for m in masks]
    flat = torch.cat(flats)
    change = ((flat[1:] != flat[:-1]).nonzero()[:, 0] + 1).cpu().numpy()
    bounds = np.cumsum([0] + [len(f) for f in flats])
    splits = np.searchsorted(change, bounds)
    out = []
    for i, m in enumerate(masks):
        height, width = m.size
        local = change[splits[i] : splits[i + 1]] - bounds[i]
        col, row = np.divmod(local, m.pixels.shape[0] + 2)
        pos = (m.left + col) * height + (m.top + row - 1)
        out.append({"size": [height, width], "counts": runs_to_counts(pos[0::2], pos[1::2], height * width)})
    return out


def runs_to_counts(starts: np.ndarray, ends: np.ndarray, total: int) -> list[int]:
    """COCO counts from runs of ones [starts[i], ends[i]) in a flat array of ``total``; runs
    that touch (a run ending at a column's bottom, the next starting at the next column's
    top) are merged."""
    if len(starts) == 0:
        return [total]
    touching = ends[:-1] == starts[1:]
    if touching.any():
        starts = np.concatenate([starts[:1], starts[1:][~touching]])
        ends = np.concatenate([ends[:-1][~touching], ends[-1:]])
    edges = np.empty(2 * len(starts) + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, total
    edges[1:-1:2], edges[2:-1:2] = starts, ends
    counts = np.diff(edges).tolist()
    if counts[-1] == 0:
        counts.pop()
    return counts
