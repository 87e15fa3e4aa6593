"""Which shapes in a CVAT job are one object, and what the tool writes back.

The rule (README, "Tracking from keyframes"):

* Shapes and tracks marked ``source="auto"`` are tool output; everything else
  (``manual``, ``semi-auto`` for AI-assisted or edited auto shapes, ``file``, ...) was
  made by people and is never changed, except that it gets a group id.
* Each person's track (rectangles, polygons) is one object; its visible keyframe shapes
  are the object's keyframes.
* Person's shapes (CVAT keeps masks as shapes, one per frame) with the same label and
  the same non-zero group id are one object; a track with that group id joins them.
* A person's shape in no group (group 0) that overlaps an earlier auto shape of the
  same label on its frame (IoU >= 0.5) is a correction of that object: it joins its
  group. Otherwise it starts a new object. Editing an auto mask in CVAT turns it into a
  ``semi-auto`` shape of the same group: a new keyframe of the same object.
* Objects without a group get a new one (written to their shapes and tracks), so their
  output and later corrections can be found again.
* On a re-run, the auto output in an object's group is replaced; auto shapes and tracks
  of other groups (another tool's) are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tracking.shapes import ShapeError, decode_rle, rasterize_polygon

AUTO = "auto"
SHAPE_TYPES = ("mask", "polygon", "rectangle")
OVERLAP_IOU = 0.5


@dataclass
class Shape:
    """A CVAT shape (standalone, or one element of a track) in CVAT's API encoding:
    rectangle ``[x1, y1, x2, y2]``, polygon ``[x1, y1, ...]``, mask run lengths followed
    by the inclusive box ``[left, top, right, bottom]``."""

    type: str
    frame: int
    points: list[float]
    label: str = ""
    group: int = 0
    source: str = "manual"
    outside: bool = False
    keyframe: bool = True
    ref: object = None  # where it came from (an XML element, an API id), for writing back


@dataclass
class Track:
    label: str
    shapes: list[Shape]
    group: int = 0
    source: str = "manual"
    ref: object = None


@dataclass
class TrackedObject:
    """One object to track: its label and group, the shape type answered, and the
    people's shapes that are its keyframes (at most one per frame)."""

    label: str
    group: int
    shape_type: str
    keyframes: list[Shape]
    tracks: list[Track] = field(default_factory=list)  # people's tracks of the object
    shapes: list[Shape] = field(default_factory=list)  # people's standalone shapes


@dataclass
class Plan:
    """What a run tracks and what it replaces."""

    objects: list[TrackedObject]
    replaced_shapes: list[Shape]  # earlier auto output of these objects
    replaced_tracks: list[Track]
    regrouped: list[Shape | Track]  # people's shapes and tracks given a new group id


def shape_mask(shape: Shape, height: int, width: int) -> np.ndarray:
    """The shape's pixels, (height, width) bool."""
    if shape.type == "mask":
        return decode_rle(shape.points, height, width)
    if shape.type == "polygon":
        return rasterize_polygon(shape.points, height, width)
    x1, y1, x2, y2 = shape.points
    mask = np.zeros((height, width), bool)
    mask[max(0, round(y1)) : max(0, round(y2)), max(0, round(x1)) : max(0, round(x2))] = True
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def plan_objects(
    shapes: list[Shape],
    tracks: list[Track],
    frame_size: tuple[int, int],
    labels: set[str] | None = None,
    groups: set[int] | None = None,
) -> Plan:
    """Objects (in a stable order: tracks, then shape groups by first frame) and the
    earlier output they replace. ``labels`` and ``groups`` limit the run to those."""
    height, width = frame_size
    wanted = (lambda label: label in labels) if labels else (lambda label: True)
    used_groups = {s.group for s in shapes} | {t.group for t in tracks}
    next_group = max(used_groups | {0}) + 1
    regrouped: list[Shape | Track] = []

    def new_group(item: Shape | Track) -> int:
        nonlocal next_group
        item.group, next_group = next_group, next_group + 1
        regrouped.append(item)
        return item.group

    auto_shapes = [s for s in shapes if s.source == AUTO]
    person_shapes = [s for s in shapes if s.source != AUTO and wanted(s.label)]
    person_tracks = [t for t in tracks if t.source != AUTO and wanted(t.label)]

    # A group-0 correction drawn over an earlier auto output joins that output's object.
    for shape in person_shapes:
        if shape.group:
            continue
        candidates = [
            s for s in auto_shapes if s.frame == shape.frame and s.label == shape.label and s.group
        ]
        if candidates:
            drawn = shape_mask(shape, height, width)
            best = max(candidates, key=lambda s: _iou(drawn, shape_mask(s, height, width)))
            if _iou(drawn, shape_mask(best, height, width)) >= OVERLAP_IOU:
                shape.group = best.group
                regrouped.append(shape)

    objects: dict[tuple[str, int], TrackedObject] = {}
    for track in person_tracks:
        group = track.group or new_group(track)
        visible = [s for s in track.shapes if s.keyframe and not s.outside]
        if not visible:
            continue
        key = (track.label, group)
        obj = objects.setdefault(key, TrackedObject(track.label, group, visible[0].type, []))
        obj.tracks.append(track)
        obj.keyframes.extend(visible)
    for shape in sorted(person_shapes, key=lambda s: s.frame):
        group = shape.group or new_group(shape)
        key = (shape.label, group)
        obj = objects.setdefault(key, TrackedObject(shape.label, group, shape.type, []))
        obj.shapes.append(shape)
        obj.keyframes.append(shape)
    for obj in objects.values():
        # One keyframe per frame: a standalone shape (a later correction) wins over a
        # track's shape on the same frame.
        by_frame: dict[int, Shape] = {}
        for shape in obj.keyframes:
            by_frame[shape.frame] = shape
        obj.keyframes = [by_frame[f] for f in sorted(by_frame)]
        for shape in obj.keyframes:
            if shape.type not in SHAPE_TYPES:
                raise ShapeError(f"{shape.type} shapes cannot be tracked (frame {shape.frame})")

    groups = {(o.label, o.group) for o in objects.values()}
    return Plan(
        objects=list(objects.values()),
        replaced_shapes=[s for s in auto_shapes if (s.label, s.group) in groups],
        replaced_tracks=[t for t in tracks if t.source == AUTO and (t.label, t.group) in groups],
        regrouped=regrouped,
    )
