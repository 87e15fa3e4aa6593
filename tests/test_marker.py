"""The mark of the tool's output in the points (cvat_track/marker.py): it survives the
two-decimal text CVAT's exporter writes, an edit removes it, people's shapes rarely
carry it by chance, and marked shapes stay where they were (within 0.1 px, inside the
frame)."""

from __future__ import annotations

import numpy as np
import pytest
from cvat_sdk.masks import decode_mask, encode_mask
from tracking.shapes import mask_to_box, mask_to_polygon

from cvat_track.marker import is_marked, mark

FRAME = (120, 160)  # (height, width)


def as_exported(points: list[float]) -> list[float]:
    """What CVAT's exporter writes ("{:.2f}") and its importer reads back."""
    return [float(f"{v:.2f}") for v in points]


def square_mask() -> np.ndarray:
    mask = np.zeros(FRAME, bool)
    mask[30:70, 40:100] = True
    mask[50:55, 60:65] = False
    return mask


@pytest.mark.parametrize("kind", ["polygon", "rectangle"])
def test_a_marked_shape_reads_back_marked_and_edits_remove_the_mark(kind):
    base = mask_to_polygon(square_mask()) if kind == "polygon" else mask_to_box(square_mask())
    assert not is_marked(kind, base)
    marked = mark(kind, base, FRAME)
    assert is_marked(kind, marked) and is_marked(kind, as_exported(marked))
    assert max(abs(a - b) for a, b in zip(marked, base)) < 0.1
    assert mark(kind, marked, FRAME) == marked  # marking again changes nothing
    for index in range(len(marked)):  # moving one coordinate, even a little
        edited = list(marked)
        edited[index] += 0.37
        assert not is_marked(kind, edited), index
    moved = [v + 3.0 for v in marked]  # the whole shape dragged
    assert not is_marked(kind, moved)


def test_a_box_on_the_frame_edge_stays_inside_the_frame():
    height, width = FRAME
    marked = mark("rectangle", [0.0, 0.0, float(width), float(height)], FRAME)
    assert is_marked("rectangle", as_exported(marked))
    x1, y1, x2, y2 = marked
    assert 0 < x1 < 0.1 and 0 < y1 < 0.1
    assert width - 0.1 < x2 < width and height - 0.1 < y2 < height


def test_peoples_shapes_rarely_carry_the_mark_by_chance():
    """Boxes and 5-point polygons with coordinates as CVAT's canvas gives them (any
    value, two decimals exported): about 9^-4 of the boxes are marked by chance."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 160, (20000, 4)).round(2)
    polygons = rng.uniform(0, 160, (20000, 10)).round(2)
    assert sum(is_marked("rectangle", list(b)) for b in boxes) <= 12  # expected ~3
    assert sum(is_marked("polygon", list(p)) for p in polygons) == 0
    # Shapes drawn on whole or half pixels never are: the hundredths digit is 0.
    assert not any(is_marked("rectangle", list(b.round(0))) for b in boxes[:1000])


def test_a_marked_mask_keeps_its_pixels_and_an_encoded_mask_is_never_marked():
    mask = square_mask()
    points = [int(v) for v in encode_mask(mask)]
    assert not is_marked("mask", points)  # as CVAT and cvat-sdk encode masks
    marked = mark("mask", points)
    assert marked[-6:-4] == [0, 0] and is_marked("mask", marked)
    assert mark("mask", marked) == marked
    height, width = FRAME
    decoded = decode_mask(marked, image_width=width, image_height=height)
    assert np.array_equal(decoded, mask)
