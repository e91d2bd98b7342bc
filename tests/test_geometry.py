"""Masks <-> polygons: one pixel convention both ways, holes, poles, paint order."""

from __future__ import annotations

import numpy as np
import pytest

from sedna_sam.geometry import (
    Region,
    mean_iou,
    pixel_accuracy,
    polygon_area,
    polygons_from_mask,
    rasterize_polygon,
    rasterize_regions,
    regions_from_class_map,
)
from sedna_sam.synthetic import make_street_scene


def round_trip(class_map: np.ndarray, tolerance_px: float = 0.0, min_area_px: float = 0.0) -> np.ndarray:
    regions, _ = regions_from_class_map(class_map, tolerance_px, min_area_px)
    return rasterize_regions(regions, *class_map.shape)


def test_exact_round_trip_on_random_maps_including_diagonal_pinches():
    # Random noise has every hard case at once: 1 px specks, diagonal-only contacts,
    # holes within holes. With tolerance 0 the round trip must be exact.
    rng = np.random.default_rng(0)
    for trial in range(60):
        n_classes = 2 + trial % 4
        class_map = rng.integers(0, n_classes, size=(15, 21)).astype(np.uint16)
        assert np.array_equal(round_trip(class_map), class_map), trial


def test_checkerboard_keeps_every_pixel():
    class_map = (np.indices((8, 8)).sum(axis=0) % 2).astype(np.uint16)
    regions, _ = regions_from_class_map(class_map, 0.0)
    assert len(regions) == 64  # 4-connected components: each pixel is its own region
    assert np.array_equal(rasterize_regions(regions, 8, 8), class_map)


@pytest.mark.parametrize("width_px", [1, 2, 3])
def test_thin_pole_outline_lies_on_pixel_edges(width_px):
    mask = np.zeros((60, 20), dtype=bool)
    mask[5:55, 7 : 7 + width_px] = True
    (poly,) = polygons_from_mask(mask, tolerance_px=1.0)
    # an outline on pixel edges, not through pixel centres: the rectangle [7, 7+w] x [5, 55]
    assert polygon_area(poly) == pytest.approx(50 * width_px)
    assert poly[:, 0].min() == 7 and poly[:, 0].max() == 7 + width_px
    assert poly[:, 1].min() == 5 and poly[:, 1].max() == 55
    rows, cols, inside = rasterize_polygon(poly, 60, 20)
    out = np.zeros_like(mask)
    out[rows, cols] = inside
    assert np.array_equal(out, mask)


def test_single_pixel_is_a_unit_square():
    mask = np.zeros((4, 4), dtype=bool)
    mask[2, 1] = True
    (poly,) = polygons_from_mask(mask)
    assert sorted(map(tuple, poly.tolist())) == [(1, 2), (1, 3), (2, 2), (2, 3)]


def test_rasterize_uses_pixel_centres_without_half_pixel_shift():
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], dtype=float)
    rows, cols, inside = rasterize_polygon(square, 4, 4)
    out = np.zeros((4, 4), dtype=bool)
    out[rows, cols] = inside
    assert out.sum() == 4 and out[:2, :2].all()
    # a sliver that misses every centre covers nothing; one covering a centre covers it
    assert not rasterize_polygon(np.array([[0.6, 0], [1.4, 0], [1.4, 4], [0.6, 4]]), 4, 4)[2].any()
    rows, cols, inside = rasterize_polygon(np.array([[0.4, 0], [0.6, 0], [0.6, 1], [0.4, 1]]), 4, 4)
    assert inside.sum() == 1 and (rows.start, cols.start) == (0, 0)


def test_polygons_outside_the_image_are_clipped():
    rows, cols, inside = rasterize_polygon(np.array([[-5, -5], [3, -5], [3, 3], [-5, 3]], float), 4, 4)
    assert (rows, cols) == (slice(0, 3), slice(0, 3)) and inside.all()


def test_holes_are_filled_by_inner_regions_painted_after_larger_ones():
    # road (0) with a car (13) on it, the car has a window of road showing through,
    # and in that window a 1 px sign (7): three levels of nesting.
    class_map = np.zeros((40, 60), dtype=np.uint16)
    class_map[10:30, 10:50] = 13
    class_map[15:25, 20:40] = 0
    class_map[20, 30] = 7
    regions, _ = regions_from_class_map(class_map, tolerance_px=1.0)
    assert [r.class_id for r in regions] == [0, 13, 0, 7]  # largest first
    assert regions[0].area == 40 * 60  # the outer road polygon has no hole
    assert np.array_equal(rasterize_regions(regions, 40, 60), class_map)
    # painting in the wrong order (smallest first) would lose the inner regions
    wrong = np.full((40, 60), 255, dtype=np.uint16)
    for region in reversed(regions):
        rows, cols, inside = rasterize_polygon(region.points, 40, 60)
        wrong[rows, cols][inside] = region.class_id
    assert (wrong == 0).all()


def test_paint_order_is_by_area_whatever_the_input_order():
    big = Region(1, np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float), 100.0)
    small = Region(2, np.array([[2, 2], [4, 2], [4, 4], [2, 4]], float), 4.0)
    out = rasterize_regions([small, big], 10, 10, fill=255)
    assert out[3, 3] == 2 and out[0, 0] == 1


def test_min_area_drops_and_counts_small_regions():
    class_map = np.full((20, 20), 255, dtype=np.uint16)
    class_map[2:12, 2:12] = 1
    class_map[15, 15] = 1
    class_map[17:19, 17] = 2
    regions, dropped = regions_from_class_map(class_map, 1.0, min_area_px=3)
    assert dropped == 2 and [r.class_id for r in regions] == [1]
    assert (rasterize_regions(regions, 20, 20) == 255).sum() == 400 - 100  # 255 gets no polygon


@pytest.mark.parametrize("size", [(512, 1024), (1024, 2048)])
def test_street_scenes_simplified_round_trip(size):
    class_map = make_street_scene(*size, seed=11).astype(np.uint16)
    exact, dropped = regions_from_class_map(class_map, 0.0)
    simple, _ = regions_from_class_map(class_map, 1.0)
    assert dropped == 0 and len(exact) == len(simple) > 50  # many instances
    assert sum(len(r.points) for r in simple) < 0.3 * sum(len(r.points) for r in exact)
    assert np.array_equal(rasterize_regions(exact, *size), class_map)
    out = rasterize_regions(simple, *size)
    assert pixel_accuracy(out, class_map) >= 0.995
    assert mean_iou(out, class_map) >= 0.97
    poles = class_map == 5
    assert (out[poles] == 5).mean() >= 0.95  # 1-3 px poles survive simplification


def test_metrics():
    truth = np.array([[0, 0], [1, 255]])
    assert pixel_accuracy(np.array([[0, 1], [1, 0]]), truth) == pytest.approx(2 / 3)
    assert mean_iou(truth, truth) == 1.0


def test_unlabelled_hole_is_filled_by_its_region():
    # documented limit: a Label Studio polygon cannot have an empty hole, so 255 pixels
    # enclosed by one class come back as that class (SSA maps have no 255 pixels).
    class_map = np.full((10, 10), 255, dtype=np.uint16)
    class_map[1:9, 1:9] = 3
    class_map[4:6, 4:6] = 255
    out = round_trip(class_map)
    assert (out[1:9, 1:9] == 3).all() and (out[0] == 255).all()
