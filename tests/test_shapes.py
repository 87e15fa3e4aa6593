"""CVAT shape encodings, checked against CVAT's own SDK where it has one."""

from __future__ import annotations

import numpy as np
import pytest
from cvat_sdk.masks import decode_mask, encode_mask
from tracking.shapes import (
    ShapeError,
    decode_rle,
    encode_rle,
    encode_shape,
    mask_to_box,
    mask_to_polygon,
    parse_box,
    rasterize_polygon,
)


def random_masks():
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) < p for p in (0.05, 0.5, 0.95)]
    single = np.zeros((10, 12), bool)
    single[3, 4] = True
    corner = np.zeros((10, 12), bool)
    corner[0, 0] = True
    full = np.ones((8, 9), bool)
    blob = np.zeros((48, 64), bool)
    blob[5:30, 10:50] = True
    blob[12:20, 20:30] = False
    return [*masks, single, corner, full, blob]


@pytest.mark.parametrize("mask", random_masks())
def test_rle_matches_cvat_sdk(mask):
    assert encode_rle(mask) == encode_mask(mask)
    decoded = decode_rle(encode_mask(mask), *mask.shape)
    assert np.array_equal(decoded, mask)
    h, w = mask.shape
    assert np.array_equal(decode_mask(encode_rle(mask), image_width=w, image_height=h), mask)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([1, 2, 3], "run lengths followed by"),
        ([2, 0, 0, 0, 0], "cover 2 pixels"),
        ([1, 0, 0, 12, 0], "outside"),
        ([1, 5, 5, 4, 4], "outside"),
        ([-1, 2, 0, 0, 0, 0], "non-negative integers"),
        ([0.5, 0.5, 0, 0, 0, 0], "non-negative integers"),
        ([1, 0, 0, 0, float("nan")], "finite"),
        ([True, 0, 0, 0, 0], "numbers"),
        (["1", 0, 0, 0, 0], "numbers"),
        ([], "non-empty"),
        ("1,0,0,0,0", "non-empty list"),
    ],
)
def test_malformed_rle_is_refused(points, message):
    with pytest.raises(ShapeError, match=message):
        decode_rle(points, 10, 12)


def test_polygon_rasterises_the_pixels_it_covers():
    mask = rasterize_polygon([10, 10, 20, 10, 20, 20, 10, 20], 30, 30)
    expected = np.zeros((30, 30), bool)
    expected[10:20, 10:20] = True
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize(
    "points",
    [
        [1, 2, 3, 4],
        [1, 2, 3, 4, 5],
        [0, 0, 1e30, 0, 5, 5],
        [0, 0, "a", 1, 2, 2],
        [0.0, 1.0] * 100_001,  # more vertices than any outline needs
    ],
    ids=["two points", "odd", "huge coordinate", "string", "too many points"],
)
def test_malformed_polygons_are_refused(points):
    with pytest.raises(ShapeError):
        rasterize_polygon(points, 30, 30)


def test_polygon_outline_is_faithful_and_keeps_the_largest_part():
    mask = np.zeros((60, 80), bool)
    yy, xx = np.mgrid[:60, :80]
    mask |= (yy - 30) ** 2 + (xx - 30) ** 2 < 20**2  # a disc
    mask[5:8, 70:74] = True  # a small second part, dropped
    points = mask_to_polygon(mask)
    assert points is not None and len(points) % 2 == 0 and len(points) >= 6
    assert len(points) // 2 < 60  # simplified, not one vertex per boundary pixel
    redrawn = rasterize_polygon(points, 60, 80)
    disc = mask.copy()
    disc[5:8, 70:74] = False
    iou = (redrawn & disc).sum() / (redrawn | disc).sum()
    assert iou > 0.95
    assert not redrawn[5:8, 70:74].any()


def test_boxes():
    mask = np.zeros((20, 30), bool)
    mask[4:9, 7:12] = True
    assert mask_to_box(mask) == [7.0, 4.0, 12.0, 9.0]
    assert parse_box([12, 9, 7, 4], 20, 30) == (7, 4, 12, 9)  # corners in any order
    assert parse_box([-5, -5, 100, 100], 20, 30) == (0, 0, 30, 20)  # clipped to the frame
    with pytest.raises(ShapeError, match="smaller than a pixel"):
        parse_box([5, 5, 5.5, 9], 20, 30)
    with pytest.raises(ShapeError, match="smaller than a pixel"):
        parse_box([40, 40, 50, 50], 20, 30)
    with pytest.raises(ShapeError, match=r"\[x1, y1, x2, y2\]"):
        parse_box([1, 2, 3], 20, 30)


@pytest.mark.parametrize("shape_type", ["mask", "polygon", "rectangle"])
def test_empty_masks_are_not_visible(shape_type):
    assert encode_shape(shape_type, np.zeros((10, 10), bool)) is None
