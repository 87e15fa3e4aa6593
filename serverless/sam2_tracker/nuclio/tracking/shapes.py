"""CVAT shape encodings <-> binary masks.

* mask: CVAT's run-length encoding, ``runs + [left, top, right, bottom]`` with an
  inclusive box, runs alternating from a (possibly empty) run of zeros, scanning the
  box row by row (``cvat_sdk.masks.encode_mask`` / ``decode_mask``).
* polygon: ``[x1, y1, ..., xn, yn]``, one closed contour. A tracked mask becomes the
  outline of its largest connected part (holes and smaller parts are dropped),
  simplified with Douglas-Peucker to within ``POLYGON_TOLERANCE_PX`` of the pixel
  outline. Use masks to keep every part and hole.
* rectangle: ``[x1, y1, x2, y2]``. A tracked mask becomes its tight box in pixel-edge
  coordinates: ``x1`` is the left edge of the leftmost mask pixel and ``x2`` the
  right edge of the rightmost one (``max column + 1``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

POLYGON_TOLERANCE_PX = 1.0
MAX_POLYGON_POINTS = 100_000
COORDINATE_LIMIT = 1 << 20  # far beyond any frame; keeps arithmetic exact


class ShapeError(ValueError):
    """A shape's points are malformed or degenerate (message names the problem)."""


def _numbers(points: object, what: str) -> list[float]:
    if not isinstance(points, list | tuple) or not points:
        raise ShapeError(f"{what} points must be a non-empty list of numbers")
    values = []
    for value in points:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ShapeError(f"{what} points must be numbers, got {value!r}")
        if not math.isfinite(value):
            raise ShapeError(f"{what} points must be finite numbers")
        values.append(value)
    return values


def decode_rle(points: object, height: int, width: int) -> np.ndarray:
    """CVAT mask RLE -> (height, width) bool mask."""
    values = _numbers(points, "mask")
    if len(values) < 5:
        raise ShapeError("mask points need run lengths followed by [left, top, right, bottom]")
    if any(v != int(v) or v < 0 for v in values):
        raise ShapeError("mask points must be non-negative integers")
    *runs, left, top, right, bottom = (int(v) for v in values)
    if not (0 <= left <= right < width and 0 <= top <= bottom < height):
        raise ShapeError(
            f"mask box [{left}, {top}, {right}, {bottom}] is outside the {width}x{height} frame"
        )
    box_h, box_w = bottom - top + 1, right - left + 1
    if sum(runs) != box_h * box_w:
        raise ShapeError(
            f"mask run lengths cover {sum(runs)} pixels but the box has {box_h * box_w}"
        )
    values_per_run = (np.arange(len(runs)) % 2).astype(bool)
    mask = np.zeros((height, width), dtype=bool)
    mask[top : bottom + 1, left : right + 1] = np.repeat(values_per_run, runs).reshape(box_h, box_w)
    return mask


def encode_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask with at least one pixel set -> CVAT mask RLE (tight box)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    flat = mask[top : bottom + 1, left : right + 1].ravel()
    # Run boundaries are where the value changes; the first run counts zeros.
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return [*runs, left, top, right, bottom]


def rasterize_polygon(points: object, height: int, width: int) -> np.ndarray:
    """CVAT polygon -> (height, width) bool mask: the pixels whose centre lies inside the
    outline (even-odd rule), so a polygon along pixel edges covers exactly its pixels."""
    values = _numbers(points, "polygon")
    if len(values) < 6 or len(values) % 2:
        raise ShapeError("polygon points must be an even list of at least 3 (x, y) pairs")
    xy = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    if np.abs(xy).max() > COORDINATE_LIMIT:
        raise ShapeError("polygon coordinates are out of range")
    if len(xy) > MAX_POLYGON_POINTS:
        raise ShapeError(f"polygon has {len(xy)} points, more than {MAX_POLYGON_POINTS}")
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    mask = np.zeros((height, width), dtype=bool)
    first_row = max(0, int(np.floor(y0.min())))
    last_row = min(height, int(np.ceil(y0.max())))
    # Rows in chunks so (rows x edges) intermediates stay small for long outlines.
    chunk = max(1, (1 << 22) // len(xy))
    for chunk_start in range(first_row, last_row, chunk):
        rows = np.arange(chunk_start, min(last_row, chunk_start + chunk))
        centres_y = rows[:, None] + 0.5  # (rows, 1)
        crosses = (y0 <= centres_y) != (y1 <= centres_y)  # (rows, edges)
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing_x = x0 + (centres_y - y0) / (y1 - y0) * (x1 - x0)
        for row, row_crosses, row_x in zip(rows, crosses, crossing_x):
            xs = np.sort(row_x[row_crosses])
            # Pixel column c has its centre at c + 0.5: inside when xa <= c + 0.5 < xb.
            starts = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(int)
            stops = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(int)
            for start, stop in zip(starts, stops):
                mask[row, start:stop] = True
    return mask


def mask_to_polygon(mask: np.ndarray) -> list[float] | None:
    """Outline of the largest part of a mask as CVAT polygon points, or None if too small."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)
    simplified = cv2.approxPolyDP(largest, POLYGON_TOLERANCE_PX, closed=True).reshape(-1, 2)
    if len(simplified) < 3:
        return None
    # Contour points are pixel centres; CVAT draws polygons in pixel-edge coordinates.
    return (simplified.astype(np.float64) + 0.5).ravel().tolist()


def parse_box(points: object, height: int, width: int) -> tuple[float, float, float, float]:
    """CVAT rectangle -> (x1, y1, x2, y2) clipped to the frame; refuses empty boxes."""
    values = _numbers(points, "rectangle")
    if len(values) != 4:
        raise ShapeError("rectangle points must be [x1, y1, x2, y2]")
    x1, x2 = sorted((values[0], values[2]))
    y1, y2 = sorted((values[1], values[3]))
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise ShapeError(
            f"rectangle {values} is smaller than a pixel inside the {width}x{height} frame"
        )
    return x1, y1, x2, y2


def mask_to_box(mask: np.ndarray) -> list[float]:
    """Tight box of a non-empty mask in pixel-edge coordinates [x1, y1, x2, y2]."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def encode_shape(shape_type: str, mask: np.ndarray) -> list[float] | list[int] | None:
    """A tracked mask as points of ``shape_type``; None when the object is not visible."""
    if not mask.any():
        return None
    if shape_type == "mask":
        return encode_rle(mask)
    if shape_type == "polygon":
        return mask_to_polygon(mask)
    return mask_to_box(mask)
