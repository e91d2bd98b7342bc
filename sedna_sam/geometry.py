"""Masks <-> polygons with one pixel convention in both directions.

Convention: pixel ``(row i, col j)`` is the unit square ``[j, j+1] x [i, i+1]`` in
continuous ``(x, y)`` coordinates, so the image spans ``[0, W] x [0, H]`` and polygon
vertices sit on pixel corners and edges (what Label Studio draws: ``x% = x / W * 100``).

* :func:`polygons_from_mask` traces the outline of each 4-connected component along the
  pixel edges (not through pixel centres, as ``cv2.findContours`` does on the mask itself),
  so a 1 px pole becomes a 1 px wide rectangle rather than a zero-area line.
* :func:`rasterize_polygon` fills the pixels whose *centre* ``(j+0.5, i+0.5)`` is inside
  the polygon (even-odd rule). An exact outline never passes through a centre, so
  ``rasterize_regions(regions_from_class_map(m, tolerance_px=0))`` gives back ``m``
  exactly, holes, poles and all.

Label Studio polygons have no holes. A component's outline is therefore emitted filled;
what lies in its holes is emitted as polygons of its own, and :func:`rasterize_regions`
paints larger polygons first so the inner ones survive on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Region:
    """One polygon of one class. ``points`` is (N, 2) float64 ``(x, y)`` in pixels
    (corner convention, see module doc); ``area`` is the polygon's area in px^2."""

    class_id: int
    points: np.ndarray
    area: float


def polygon_area(points: np.ndarray) -> float:
    """Unsigned shoelace area of an (N, 2) polygon."""
    if len(points) < 3:
        return 0.0
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _closure(mask: np.ndarray) -> np.ndarray:
    """(2H+1, 2W+1) uint8 grid of pixel corners, edge midpoints and centres; a point is 1
    when it belongs to the closed square of a mask pixel. Grid index ``k`` is the
    continuous coordinate ``k / 2``, so contours traced on this grid lie on pixel edges."""
    h, w = mask.shape
    m = mask.astype(bool)
    grid = np.zeros((2 * h + 1, 2 * w + 1), dtype=np.uint8)
    grid[1::2, 1::2] = m  # centres
    p = np.pad(m, 1)
    grid[0::2, 1::2] = p[:-1, 1:-1] | p[1:, 1:-1]  # horizontal edge midpoints
    grid[1::2, 0::2] = p[1:-1, :-1] | p[1:-1, 1:]  # vertical edge midpoints
    grid[0::2, 0::2] = p[:-1, :-1] | p[:-1, 1:] | p[1:, :-1] | p[1:, 1:]  # corners
    return grid


def simplify_polygon(points: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Douglas-Peucker simplification of a closed (N, 2) polygon; never returns fewer
    than 3 vertices (thin shapes keep their exact outline instead of collapsing)."""
    import cv2

    if tolerance_px <= 0 or len(points) <= 4:
        return points
    approx = cv2.approxPolyDP(points.astype(np.float32).reshape(-1, 1, 2), float(tolerance_px), True)
    approx = approx.reshape(-1, 2).astype(np.float64)
    if len(approx) < 3 or polygon_area(approx) <= 0.0:
        return points
    return approx


def polygons_from_mask(
    mask: np.ndarray, tolerance_px: float = 1.0, min_area_px: float = 0.0
) -> list[np.ndarray]:
    """Outer outlines of every 4-connected component of a (H, W) bool mask.

    Returns a list of (N, 2) float64 ``(x, y)`` arrays in pixels (corner convention),
    one per component including islands inside another component's holes, each
    simplified with Douglas-Peucker at ``tolerance_px``. Components of fewer than
    ``min_area_px`` pixels are left out (:func:`regions_from_class_map` counts them).
    """
    polygons, _ = _polygons_and_dropped(mask, tolerance_px, min_area_px)
    return polygons


def _polygons_and_dropped(
    mask: np.ndarray, tolerance_px: float, min_area_px: float
) -> tuple[list[np.ndarray], int]:
    import cv2

    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if not mask.any():
        return [], 0
    # 4-connected components: a 4-path cannot slip through a diagonal pinch, so whatever
    # an outline encloses is a whole component of its own, with a smaller outline, that
    # larger-first painting puts back on top (module doc).
    count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    polygons: list[np.ndarray] = []
    dropped = 0
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area_px:
            dropped += 1
            continue
        grid = _closure(comp[y : y + h, x : x + w] == k)
        contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = max(contours, key=len)
        pts = contour.reshape(-1, 2).astype(np.float64) / 2.0 + np.array([x, y], dtype=np.float64)
        polygons.append(simplify_polygon(pts, tolerance_px))
    return polygons, dropped


def regions_from_class_map(
    class_map: np.ndarray,
    tolerance_px: float = 1.0,
    min_area_px: float = 0.0,
    ignore_ids: tuple[int, ...] = (255,),
) -> tuple[list[Region], int]:
    """Every connected component of every class of a (H, W) integer map as a polygon.

    Returns ``(regions, dropped)``: regions sorted by area, largest first (the paint
    order of :func:`rasterize_regions`), and how many components were dropped as smaller
    than ``min_area_px``. Ids in ``ignore_ids`` (255 = no class) get no polygons.
    """
    regions: list[Region] = []
    dropped = 0
    for class_id in np.unique(class_map):
        if int(class_id) in ignore_ids:
            continue
        polys, n = _polygons_and_dropped(class_map == class_id, tolerance_px, min_area_px)
        dropped += n
        regions += [Region(int(class_id), p, polygon_area(p)) for p in polys]
    regions.sort(key=lambda r: -r.area)
    return regions, dropped


# Crossings (and label-map cells) handled per numpy pass of :func:`rasterize_polygon`: its
# working memory stays around 100 MB whatever the polygon's vertex count or the image size.
RASTER_CHUNK = 1 << 20


def rasterize_polygon(points: np.ndarray, height: int, width: int) -> tuple[slice, slice, np.ndarray]:
    """Pixels of a (H, W) image whose centres lie inside an (N, 2) ``(x, y)`` polygon.

    Even-odd rule, half-open in y, so shared edges between neighbouring polygons give each
    pixel to exactly one side. Returns ``(rows, cols, inside)``: the bounding-box slices
    and a bool array of that box, to keep memory small for small regions.

    Memory is bounded whatever the vertex count: the box is filled in bands of rows, and
    each band's scanline crossings are computed :data:`RASTER_CHUNK` at a time (a zigzag
    of 200k vertices across a tall image needs no more than a square does).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    empty = (slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool))
    if len(pts) < 3:
        return empty
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    r0 = max(0, int(np.floor(pts[:, 1].min())))
    r1 = min(height, int(np.ceil(pts[:, 1].max())))
    c0 = max(0, int(np.floor(pts[:, 0].min())))
    c1 = min(width, int(np.ceil(pts[:, 0].max())))
    if r0 >= r1 or c0 >= c1:
        return empty
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    # rows i with ylo <= i + 0.5 < yhi
    first = np.maximum(np.ceil(ylo - 0.5), r0).astype(np.int64)
    last = np.minimum(np.ceil(yhi - 0.5), r1).astype(np.int64)  # exclusive
    keep = last > first
    if not keep.any():
        return empty
    first, last = first[keep], last[keep]
    ex0, ey0, ex1, ey1 = x0[keep], y0[keep], x1[keep], y1[keep]
    bw = c1 - c0 + 1
    inside = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    band_rows = max(1, RASTER_CHUNK // bw)
    for b0 in range(r0, r1, band_rows):
        b1 = min(r1, b0 + band_rows)
        lo, hi = np.maximum(first, b0), np.minimum(last, b1)
        edges = np.nonzero(hi > lo)[0]
        if not len(edges):
            continue
        counts = hi[edges] - lo[edges]  # crossings of each edge in this band (<= band_rows)
        cum = np.cumsum(counts)
        toggles = np.zeros((b1 - b0) * bw, dtype=np.int64)
        start = 0
        while start < len(edges):
            done = int(cum[start - 1]) if start else 0
            end = max(start + 1, int(np.searchsorted(cum, done + RASTER_CHUNK, side="right")))
            e, n = edges[start:end], counts[start:end]
            edge = np.repeat(np.arange(len(e)), n)
            row = lo[e][edge] + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
            yc = row + 0.5
            xc = ex0[e][edge] + (yc - ey0[e][edge]) * (ex1[e][edge] - ex0[e][edge]) / (
                ey1[e][edge] - ey0[e][edge]
            )
            # a crossing at x toggles inside-ness from the first pixel whose centre is >= x
            col = np.clip(np.ceil(xc - 0.5), c0, c1).astype(np.int64) - c0
            toggles += np.bincount((row - b0) * bw + col, minlength=len(toggles))
            start = end
        band = np.cumsum(toggles.reshape(b1 - b0, bw), axis=1)
        inside[b0 - r0 : b1 - r0] = (band & 1).astype(bool)[:, : c1 - c0]
    return slice(r0, r1), slice(c0, c1), inside


def rasterize_regions(
    regions: list[Region], height: int, width: int, fill: int = 255, dtype=np.uint16
) -> np.ndarray:
    """(H, W) map painted with each region's class id, largest area first, so regions
    inside others (cars on road, what shows through a fence) end up on top. Pixels no
    region covers get ``fill``."""
    out = np.full((height, width), fill, dtype=dtype)
    for region in sorted(regions, key=lambda r: -r.area):
        rows, cols, inside = rasterize_polygon(region.points, height, width)
        if inside.size:
            out[rows, cols][inside] = region.class_id
    return out


def pixel_accuracy(pred: np.ndarray, truth: np.ndarray, ignore_id: int = 255) -> float:
    """Fraction of pixels (truth != ignore) where ``pred == truth``."""
    valid = truth != ignore_id
    return float((pred[valid] == truth[valid]).mean()) if valid.any() else 1.0


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """(C,) float IoU from a (C, C) confusion matrix (rows = truth); NaN where the class is
    in neither map. The one IoU definition: evaluation and the converters' checks use it."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_of_ious(iou: np.ndarray) -> float:
    """Mean of the IoUs that exist; NaN when no class has any pixel (nothing to score)."""
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def mean_iou(pred: np.ndarray, truth: np.ndarray, ignore_id: int = 255) -> float:
    """Mean IoU of two label maps over the classes present in ``truth`` or ``pred``
    (pixels where ``truth`` is ``ignore_id`` excluded); NaN when no pixel is left."""
    valid = truth != ignore_id
    p, t = pred[valid].astype(np.int64), truth[valid].astype(np.int64)
    ids, codes = np.unique(np.concatenate([t, p]), return_inverse=True)
    n = len(ids)
    cm = np.bincount(codes[: t.size] * n + codes[t.size :], minlength=n * n).reshape(n, n)
    return mean_of_ious(iou_per_class(cm)[ids != ignore_id])  # "ignore" predicted is no class
