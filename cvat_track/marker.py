"""The mark that tells the tool's own output from people's shapes, carried in the points.

CVAT's importer ("CVAT 1.1", CVAT 2.73 ``formats/cvat.py`` ``load_anno``) resets what
would mark our output: every imported shape and track gets ``source="file"``, and a mask
track (the form CVAT for video 1.1 exports mask shapes in) comes back as a shape of group
0. Attributes would need a label attribute people did not ask for. What the importer
keeps exactly is the points: mask run lengths as written, polygon and box coordinates to
the two decimals CVAT's exporter writes. So the mark lives there, invisible:

* a mask: two empty runs (``..., 0, 0``) after its run lengths. Zero-length runs change no
  pixel; CVAT's own encoder (``mask2Rle`` in cvat-core, used by every drawing and editing
  tool) never writes them, so a mask a person draws or edits is never marked;
* a polygon or rectangle: the hundredths digit of every coordinate is a digit (1-9) of a
  SHA-256 of the coordinates rounded down to tenths. The shape moves by less than 0.1 px
  (and stays inside the frame).
  Moving any vertex changes the digest, so an edited shape loses the mark; a shape drawn
  by hand carries it by chance with probability 9^-n for n coordinates (1 in 6561 for a
  rectangle).

A copy of a marked shape (copy and paste in CVAT) is marked too: it counts as output.
"""

from __future__ import annotations

import hashlib
import math

MASK_MARK = (0, 0)


def _tenths(value: float) -> int:
    """A coordinate in tenths of a pixel, rounded down, as the two-decimal text CVAT
    exports reads back."""
    return math.floor(round(value * 100) / 10)


def _digits(tenths: list[int]) -> list[int]:
    """One digit 1-9 per coordinate, from a digest of all of them."""
    digest = hashlib.sha256(",".join(map(str, tenths)).encode()).digest()
    while len(digest) < len(tenths):
        digest += hashlib.sha256(digest).digest()
    return [1 + byte % 9 for byte in digest[: len(tenths)]]


def mark(
    shape_type: str, points: list[float], frame_size: tuple[int, int] | None = None
) -> list[float]:
    """The points of one of the tool's shapes, marked. Mask: run lengths then
    ``[left, top, right, bottom]``; polygon ``[x1, y1, ...]``; rectangle ``[x1, y1, x2,
    y2]``, in pixels. A coordinate moves up by 0.01-0.09 px, or down by as much where it
    lies on the frame's right or bottom edge (``frame_size`` (height, width)), so that
    it stays inside the frame."""
    if shape_type == "mask":
        if is_marked(shape_type, points):
            return list(points)
        return [*points[:-4], *MASK_MARK, *points[-4:]]
    height, width = frame_size or (math.inf, math.inf)
    limits = [width if i % 2 == 0 else height for i in range(len(points))]
    tenths = [
        _tenths(v) - 1 if v > limit - 0.1 else _tenths(v)
        for v, limit in zip(points, limits, strict=True)
    ]
    return [(t * 10 + d) / 100 for t, d in zip(tenths, _digits(tenths), strict=True)]


def is_marked(shape_type: str, points: list[float]) -> bool:
    """Whether these points are the tool's output (as written, or read back from CVAT)."""
    if shape_type == "mask":
        return len(points) >= 7 and tuple(points[-6:-4]) == MASK_MARK
    if not points:
        return False
    hundredths = [round(v * 100) for v in points]
    tenths = [h // 10 for h in hundredths]
    return [h % 10 for h in hundredths] == _digits(tenths)
