"""Generated street-like scenes with exact labels, for tests, benches and offline demos.

A scene is a (H, W) uint8 map of Cityscapes train ids with what makes conversion hard:
many instances per class, objects inside other objects (cars on road, a sign on a wall),
a fence with holes, 1-3 px poles, small blobs. :func:`render_scene` paints an RGB image
for it (class colour + texture + per-instance shading, optional fog / colour shift).
"""

from __future__ import annotations

import numpy as np

from sedna_sam.labels import CITYSCAPES_CLASSES, LabelSet, cityscapes

C = {name: i for i, (name, _) in enumerate(CITYSCAPES_CLASSES)}


def _ellipse(lab: np.ndarray, cy: float, cx: float, ry: float, rx: float, value: int) -> None:
    h, w = lab.shape
    y0, y1 = max(0, int(cy - ry)), min(h, int(cy + ry) + 1)
    x0, x1 = max(0, int(cx - rx)), min(w, int(cx + rx) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0
    lab[y0:y1, x0:x1][inside] = value


def _rect(lab: np.ndarray, y0: int, y1: int, x0: int, x1: int, value: int) -> None:
    h, w = lab.shape
    lab[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)] = value


def make_street_scene(
    height: int = 512, width: int = 1024, seed: int = 0, layout: str = "street"
) -> np.ndarray:
    """A (height, width) uint8 train-id map of a street scene.

    ``layout="street"`` is a road between sidewalks and buildings; ``layout="park"``
    (a layout the street scenes never have) is terrain and vegetation around a path, for
    domain-shift experiments.
    """
    rng = np.random.default_rng(seed)
    h, w = height, width
    s = h / 512.0
    lab = np.full((h, w), C["sky"], dtype=np.uint8)
    horizon = int(h * rng.uniform(0.38, 0.5))
    if layout == "park":
        lab[horizon:] = C["terrain"]
        for _ in range(rng.integers(6, 12)):
            _ellipse(
                lab,
                rng.uniform(0.2, 0.6) * h,
                rng.uniform(0, w),
                rng.uniform(30, 90) * s,
                rng.uniform(40, 120) * s,
                C["vegetation"],
            )
        pts = np.array([[w * 0.45, horizon], [w * 0.55, horizon], [w * 0.8, h], [w * 0.2, h]], np.int32)
        import cv2

        cv2.fillPoly(lab, [pts], C["sidewalk"])
    else:
        # buildings along the horizon, each with windows-as-wall and sometimes a sign
        x = 0
        while x < w:
            bw = int(rng.uniform(80, 220) * s)
            top = int(horizon - rng.uniform(60, 200) * s)
            _rect(lab, top, horizon, x, x + bw, C["building"])
            for _ in range(rng.integers(0, 4)):
                wy, wx = rng.integers(max(top, 0), horizon), rng.integers(x, x + bw)
                _rect(lab, wy, wy + int(12 * s), wx, wx + int(16 * s), C["wall"])
            if rng.random() < 0.5:
                sy, sx = rng.integers(max(top, 0), horizon), rng.integers(x, x + bw)
                _rect(lab, sy, sy + int(10 * s), sx, sx + int(24 * s), C["traffic sign"])
            x += bw + int(rng.uniform(0, 30) * s)
        lab[horizon:] = C["sidewalk"]
        import cv2

        pts = np.array([[w * 0.4, horizon], [w * 0.6, horizon], [w * 1.1, h], [-w * 0.1, h]], np.int32)
        cv2.fillPoly(lab, [pts], C["road"])
        for _ in range(rng.integers(2, 5)):  # vegetation strips and terrain patches
            _ellipse(
                lab,
                horizon - rng.uniform(0, 40) * s,
                rng.uniform(0, w),
                rng.uniform(15, 50) * s,
                rng.uniform(20, 70) * s,
                C["vegetation"],
            )
        _rect(lab, horizon + int(5 * s), horizon + int(20 * s), 0, int(w * 0.15), C["terrain"])
    # a fence with a mesh of holes showing what is behind it
    fy0 = horizon - int(rng.uniform(10, 30) * s)
    fx0 = int(rng.uniform(0, w * 0.6))
    fx1 = fx0 + int(rng.uniform(80, 200) * s)
    fy1 = horizon + int(8 * s)
    step = max(6, int(10 * s))
    holes = np.zeros(lab.shape, dtype=bool)
    for yy in range(fy0, fy1, step):
        for xx in range(fx0, fx1, step):
            holes[yy + 2 : yy + step - 1, xx + 2 : xx + step - 1] = True
    fence = np.zeros(lab.shape, dtype=bool)
    fence[max(fy0, 0) : fy1, fx0:fx1] = True
    lab[fence & ~holes] = C["fence"]
    # cars on the road, many instances, some overlapping
    road_top = horizon if layout == "street" else int(h * 0.6)
    for _ in range(rng.integers(3, 8)):
        cy = rng.uniform(road_top + 20 * s, h - 20 * s)
        depth = (cy - road_top) / max(h - road_top, 1)
        cw, ch = (40 + 160 * depth) * s, (20 + 70 * depth) * s
        cx = rng.uniform(0.1 * w, 0.9 * w)
        cls = C["car"] if rng.random() < 0.8 else C["truck"]
        _rect(lab, int(cy - ch), int(cy), int(cx - cw / 2), int(cx + cw / 2), cls)
        _ellipse(lab, cy - ch, cx, ch * 0.4, cw * 0.3, cls)
    # people and riders on the sidewalks
    for _ in range(rng.integers(2, 7)):
        py = rng.uniform(horizon + 10 * s, h - 10 * s)
        px = rng.uniform(0, w)
        ph = (15 + 60 * (py - horizon) / max(h - horizon, 1)) * s
        _ellipse(lab, py - ph / 2, px, ph / 2, ph / 6, C["person"])
        if rng.random() < 0.3:
            _ellipse(lab, py, px, ph / 6, ph / 3, C["bicycle"])
    # poles 1-3 px wide with traffic signs / lights on top
    for _ in range(rng.integers(3, 7)):
        px = int(rng.uniform(0, w - 3))
        pw = int(rng.integers(1, 4))
        top = int(horizon - rng.uniform(40, 160) * s)
        bottom = int(horizon + rng.uniform(10, 80) * s)
        _rect(lab, top, bottom, px, px + pw, C["pole"])
        kind = C["traffic light"] if rng.random() < 0.5 else C["traffic sign"]
        _rect(lab, top - int(12 * s), top, px - int(5 * s), px + pw + int(5 * s), kind)
    return lab


def render_scene(
    label_map: np.ndarray,
    labels: LabelSet | None = None,
    seed: int = 0,
    fog: float = 0.0,
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """(H, W, 3) uint8 RGB image for a train-id map: class colour, texture, shading.

    ``fog`` in [0, 1] blends towards grey with depth (more at the top); ``tint`` scales
    the RGB channels (a colour shift between domains).
    """
    labels = labels or cityscapes()
    rng = np.random.default_rng(seed + 7919)
    table = labels.colour_table().astype(np.float32)
    img = table[label_map]
    # per-class brightness offset so classes are not separable by exact colour alone
    offsets = rng.uniform(-25, 25, size=(256, 1)).astype(np.float32)
    img += offsets[label_map]
    img += rng.normal(0, 12, size=img.shape).astype(np.float32)
    img *= np.asarray(tint, np.float32)
    if fog > 0:
        h = label_map.shape[0]
        depth = np.linspace(1.0, 0.3, h, dtype=np.float32)[:, None, None]
        alpha = np.clip(fog * depth, 0, 1)
        img = img * (1 - alpha) + 200.0 * alpha
    return np.clip(img, 0, 255).astype(np.uint8)


def add_unknown_objects(image: np.ndarray, seed: int = 0, count: int = 3) -> np.ndarray:
    """Paste objects with colours and textures no training scene has (checkerboards,
    saturated stripes): the 'unknown' frames of corner-case benchmarks."""
    rng = np.random.default_rng(seed + 104729)
    out = image.copy()
    h, w = out.shape[:2]
    for _ in range(count):
        oh, ow = int(rng.uniform(0.15, 0.35) * h), int(rng.uniform(0.1, 0.3) * w)
        y0, x0 = int(rng.uniform(0, h - oh)), int(rng.uniform(0, w - ow))
        yy, xx = np.mgrid[0:oh, 0:ow]
        period = int(rng.integers(4, 12))
        pattern = ((yy // period + xx // period) % 2).astype(np.float32)
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        patch = pattern[..., None] * c1 + (1 - pattern[..., None]) * c2
        out[y0 : y0 + oh, x0 : x0 + ow] = patch.astype(np.uint8)
    return out
