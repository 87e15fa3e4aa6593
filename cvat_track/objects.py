"""Which shapes in a CVAT job are one object, which are the tool's own output, and what
a run replaces.

The rule (README, "Which shapes are one object"):

* The tool's output is what carries its mark in the points (``cvat_track.marker``; it
  survives CVAT's importer, which resets ``source`` and mask groups), or ``source="auto"``
  in a track or shape without marks (output of versions before the mark). Everything
  else was made by people (drawn, edited, imported) and is never changed, except that
  it gets a group id.
* Each track holding people's shapes (rectangles, polygons) is one object; its visible
  people's keyframes are the object's keyframes. The output for that object goes into
  that track, as keyframes beside the person's, so CVAT shows one shape per frame.
* People's shapes (CVAT keeps masks as shapes, one per frame) with the same label and
  the same non-zero group id are one object; a track with that group id joins them.
* A person's shape in no group (group 0) that overlaps an earlier output shape of the
  same label on its frame (IoU >= 0.5) is a correction of that object: it joins its
  group. Otherwise it starts a new object. Editing an output shape in CVAT rewrites its
  points, so it loses the mark and becomes a person's keyframe of the same object (an
  edited mask keeps its group; an edited track frame stays in its track).
* Objects without a group get a new one (written to their shapes and tracks), so their
  output and later corrections can be found again.
* On a re-run, the output of an object's group is replaced: output shapes and
  output-only tracks are deleted, output keyframes inside tracks that also hold people's
  shapes are removed from them. Output of other groups (another run's, another tool's)
  is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from tracking.shapes import ShapeError, decode_rle, rasterize_polygon

from cvat_track.marker import is_marked

AUTO = "auto"
SHAPE_TYPES = ("mask", "polygon", "rectangle")
OVERLAP_IOU = 0.5


@dataclass
class Shape:
    """A CVAT shape (standalone, or one element of a track) in CVAT's API encoding:
    rectangle ``[x1, y1, x2, y2]``, polygon ``[x1, y1, ...]``, mask run lengths followed
    by the inclusive box ``[left, top, right, bottom]``, all in pixels."""

    type: str
    frame: int
    points: list[float]
    label: str = ""
    group: int = 0
    source: str = "manual"
    outside: bool = False
    keyframe: bool = True
    ref: object = None  # where it came from (an XML element, an API model), for writing back

    @cached_property
    def marked(self) -> bool:
        """Whether the points carry the tool's mark (read once: a SHA-256 for polygons
        and rectangles, asked for again by every rule below)."""
        return is_marked(self.type, self.points)


@dataclass
class Track:
    label: str
    shapes: list[Shape]
    group: int = 0
    source: str = "manual"
    ref: object = None
    # The frames of the CVAT job the track is stored in (a task's tracks live in its
    # jobs); None: anywhere (a file).
    home: range | None = None

    def output_shapes(self) -> list[Shape]:
        """The tool's shapes in this track: the marked ones; every shape of an auto track
        written before the mark existed."""
        marked = [s for s in self.shapes if s.marked]
        if not marked and self.source == AUTO:
            return list(self.shapes)
        return marked

    def people_shapes(self) -> list[Shape]:
        output = {id(s) for s in self.output_shapes()}
        return [s for s in self.shapes if id(s) not in output]

    def export_closing(self) -> Shape | None:
        """The ``outside`` shape CVAT's exporter puts on the frame after a standalone
        shape when it writes it as a track (CVAT for video 1.1): people's shapes ending in
        an outside one right after their only visible one. It says where the export ended
        the shape, not that the person saw the object leave: output replaces it."""
        people = sorted(self.people_shapes(), key=lambda s: s.frame)
        visible = [s for s in people if not s.outside]
        if len(people) >= 2 and len(visible) == 1 and people[-1].outside:
            last, before = people[-1], people[-2]
            if before is visible[0] and last.frame == before.frame + 1:
                return last
        return None


def is_output_shape(shape: Shape) -> bool:
    """Whether a standalone shape is the tool's output."""
    return shape.marked or shape.source == AUTO


@dataclass
class TrackedObject:
    """One object to track: its label and group, the shape type answered, and the
    people's shapes that are its keyframes (at most one per frame)."""

    label: str
    group: int
    shape_type: str
    keyframes: list[Shape]
    tracks: list[Track] = field(default_factory=list)  # tracks holding people's shapes
    shapes: list[Shape] = field(default_factory=list)  # people's standalone shapes

    def target(self, segment: range) -> Track | None:
        """The track that takes the output on the frames of ``segment`` (a job): the
        object's first track of its shape type stored there (none for masks, or when
        people drew standalone shapes only)."""
        if self.shape_type == "mask":
            return None
        return next(
            (
                t
                for t in self.tracks
                if t.people_shapes()[0].type == self.shape_type
                and (t.home is None or t.home == segment)
            ),
            None,
        )


@dataclass
class Plan:
    """What a run tracks and what it replaces."""

    objects: list[TrackedObject]
    replaced_shapes: list[Shape]  # earlier output shapes of these objects: deleted
    replaced_tracks: list[Track]  # earlier output-only tracks of these objects: deleted
    # Tracks of these objects holding people's shapes: their output keyframes go, the
    # object's target track gets the new output.
    rewritten_tracks: list[Track]
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


def _join_corrections(
    person_shapes: list[Shape],
    person_tracks: list[Track],
    output: list[Shape],
    frame_size: tuple[int, int],
    regrouped: list[Shape | Track],
) -> None:
    """A group-0 person's shape drawn over an output shape joins that shape's object; so
    does a group-0 track of one visible shape (CVAT for video's form of a standalone
    polygon or rectangle)."""
    height, width = frame_size
    drawn: list[tuple[Shape | Track, Shape]] = [(s, s) for s in person_shapes if not s.group]
    for track in person_tracks:
        visible = [s for s in track.people_shapes() if not s.outside]
        if not track.group and len(visible) == 1:
            drawn.append((track, visible[0]))
    for item, shape in drawn:
        candidates = [
            s
            for s in output
            if s.frame == shape.frame and s.label == shape.label and s.group and not s.outside
        ]
        if not candidates:
            continue
        pixels = shape_mask(shape, height, width)
        overlaps = [(_iou(pixels, shape_mask(s, height, width)), s) for s in candidates]
        best_iou, best = max(overlaps, key=lambda pair: pair[0])
        if best_iou >= OVERLAP_IOU:
            item.group = best.group
            regrouped.append(item)


def plan_objects(
    shapes: list[Shape],
    tracks: list[Track],
    frame_size: tuple[int, int],
    labels: set[str] | None = None,
    groups: set[int] | None = None,
    used_groups: set[int] = frozenset(),
) -> Plan:
    """Objects (in a stable order: tracks, then shape groups by first frame) and the
    earlier output they replace. ``labels`` and ``groups`` limit the run to those;
    ``used_groups`` are group ids taken elsewhere in the task (other jobs), which new
    groups avoid."""
    wanted = (lambda label: label in labels) if labels else (lambda label: True)
    taken = {s.group for s in shapes} | {t.group for t in tracks} | set(used_groups)
    next_group = max(taken | {0}) + 1
    regrouped: list[Shape | Track] = []

    def new_group(item: Shape | Track) -> int:
        nonlocal next_group
        item.group, next_group = next_group, next_group + 1
        regrouped.append(item)
        return item.group

    output_shapes = [s for s in shapes if is_output_shape(s)]
    person_shapes = [s for s in shapes if not is_output_shape(s) and wanted(s.label)]
    person_tracks = [t for t in tracks if t.people_shapes() and wanted(t.label)]
    track_output = [s for t in tracks for s in t.output_shapes()]
    _join_corrections(
        person_shapes, person_tracks, output_shapes + track_output, frame_size, regrouped
    )

    objects: dict[tuple[str, int], TrackedObject] = {}
    for track in person_tracks:
        people = track.people_shapes()
        visible = [s for s in people if s.keyframe and not s.outside]
        if not visible:
            continue
        group = track.group or new_group(track)
        for shape in track.shapes:
            shape.group = group
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
    if groups:
        objects = {key: obj for key, obj in objects.items() if obj.group in groups}
        regrouped = [item for item in regrouped if item.group in groups]
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

    keys = set(objects)
    tracked = [t for t in tracks if (t.label, t.group) in keys]
    return Plan(
        objects=list(objects.values()),
        replaced_shapes=[s for s in output_shapes if (s.label, s.group) in keys],
        replaced_tracks=[t for t in tracked if not t.people_shapes()],
        rewritten_tracks=[t for t in tracked if t.people_shapes()],
        regrouped=regrouped,
    )
