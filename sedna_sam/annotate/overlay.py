"""The ``--save-img`` picture: the image under the final class map, with class names.

Each class present is drawn in its labels-config colour at ``alpha``; SAM mask outlines
are thin white lines (so a person sees where masks split a class); each class's name is
written once, at the interior point of its largest connected region.
"""

from __future__ import annotations

import numpy as np

from sedna_sam.labels import IGNORE_ID, LabelSet


def render_overlay(
    image: np.ndarray,
    class_map: np.ndarray,
    labels: LabelSet,
    owner: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB overlay of ``class_map`` (H, W) on ``image`` (H, W, 3).

    ``owner`` (H, W) int (index of the mask covering each pixel, -1 none) adds mask
    outlines. Pixels with class 255 are left as the image.
    """
    import cv2

    cmap = np.asarray(class_map)
    colours = labels.colour_table()[np.minimum(cmap, 255).astype(np.intp)]
    known = cmap != IGNORE_ID
    out = image.astype(np.float32)
    out[known] = (1 - alpha) * out[known] + alpha * colours[known]
    out = out.round().astype(np.uint8)
    if owner is not None:
        edge = np.zeros(owner.shape, dtype=bool)
        edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
        edge[1:, :] |= owner[1:, :] != owner[:-1, :]
        out[edge] = 255
    scale = max(0.35, min(image.shape[:2]) / 900)
    thickness = max(1, int(round(scale * 2)))
    for class_id in np.unique(cmap[known]):
        name = labels.id2label.get(int(class_id), str(int(class_id)))
        region = (cmap == class_id).astype(np.uint8)
        n, comp, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=4)
        if n <= 1:
            continue
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        # The point deepest inside the region, so the text sits on the class it names.
        dist = cv2.distanceTransform((comp == biggest).astype(np.uint8), cv2.DIST_L2, 3)
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        (tw, th), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        org = (
            int(max(0, min(x - tw // 2, out.shape[1] - tw))),
            int(max(th, min(y + th // 2, out.shape[0] - 1))),
        )
        cv2.putText(out, name, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(out, name, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out
