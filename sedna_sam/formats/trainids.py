"""TrainIds label maps: ``train_ids/<stem>_TrainIds.png``, single-channel uint16, pixel =
train id, 255 = ignore (no class). Plus a colour preview for people.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sedna_sam.errors import InputError
from sedna_sam.formats.labelstudio import regions_from_export
from sedna_sam.formats.ls_export import ExportedTask
from sedna_sam.geometry import rasterize_regions
from sedna_sam.images import read_label_png, write_png
from sedna_sam.labels import IGNORE_ID, LabelSet


def write_trainids(path: str | Path, train_ids: np.ndarray) -> Path:
    """Atomically write a (H, W) train-id map as a 16-bit PNG."""
    if train_ids.ndim != 2:
        raise ValueError(f"train-id map must be (H, W), got shape {train_ids.shape}")
    return write_png(path, train_ids.astype(np.uint16))


def read_trainids(path: str | Path) -> np.ndarray:
    """(H, W) uint16 train-id map from a TrainIds PNG (8-bit files are widened)."""
    return read_label_png(path).astype(np.uint16)


def colorize(train_ids: np.ndarray, labels: LabelSet) -> np.ndarray:
    """(H, W, 3) uint8 RGB preview: class colours, ignore (255) and unknown ids black."""
    table = labels.colour_table()
    return table[np.clip(train_ids, 0, 255).astype(np.uint8)]


def write_preview(path: str | Path, train_ids: np.ndarray, labels: LabelSet) -> Path:
    """Atomically write the colour preview PNG of a train-id map."""
    return write_png(path, colorize(train_ids, labels))


def trainids_from_export(
    task: ExportedTask,
    labels: LabelSet,
    size: tuple[int, int] | None = None,
    *,
    ignore_unknown_labels: bool = False,
    notes: dict[str, int] | None = None,
) -> np.ndarray:
    """(H, W) uint16 train-id map of one exported task's polygons, larger polygons painted
    first; pixels no polygon covers are 255.

    The size comes from the results' ``original_width/height``; ``size`` (width, height),
    e.g. read from the image, is used when they are missing. Raises :class:`InputError`
    when neither is known or a label is unknown (see :func:`regions_from_export`).
    """
    wh = task.size or size
    if wh is None:
        raise InputError(
            f"{task.source}: {task.name}: results have no original_width/height and the image was not found"
        )
    if task.size and size and tuple(size) != tuple(task.size):
        raise InputError(
            f"{task.source}: {task.name}: annotation is for a {task.size[0]}x{task.size[1]} image, "
            f"the image file is {size[0]}x{size[1]}"
        )
    width, height = int(wh[0]), int(wh[1])
    regions = regions_from_export(
        task, labels, width, height, ignore_unknown_labels=ignore_unknown_labels, notes=notes
    )
    return rasterize_regions(regions, height, width, fill=IGNORE_ID, dtype=np.uint16)
