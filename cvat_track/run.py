"""One tracking run: people's shapes -> objects and keyframes -> SAM 2 over the frames
-> the tool's output (auto mask shapes per frame, auto tracks of polygons/rectangles)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tracking.answers import shape_prompt
from tracking.engine import Prompt, Sam2StreamTracker
from tracking.shapes import ShapeError, encode_shape
from tracking.video import (
    FrameSource,
    Keyframe,
    KeyframeVideoTracker,
    VideoError,
    yielded_frame_count,
)

from cvat_track.objects import AUTO, Plan, Shape, Track, TrackedObject, plan_objects


class RunError(ValueError):
    """The run cannot start (the message says what to change)."""


@dataclass
class RunResult:
    plan: Plan
    new_shapes: list[Shape]  # auto mask shapes, one per object and visible frame
    new_tracks: list[Track]  # auto tracks of polygons and rectangles, one per object
    frames_processed: int
    seconds: float


def keyframe_prompt(shape: Shape, frame_size: tuple[int, int]) -> Prompt:
    """A person's shape as SAM 2's prompt: a box for rectangles, a mask otherwise."""
    try:
        return shape_prompt(shape.type, shape.points, frame_size)
    except ShapeError as error:
        raise RunError(f"{shape.label} {shape.type} on frame {shape.frame}: {error}") from error


def track_job(
    tracker: Sam2StreamTracker,
    frames: FrameSource,
    shapes: list[Shape],
    tracks: list[Track],
    direction: str = "forward",
    labels: set[str] | None = None,
    max_cond_frames: int | None = None,
    first_frame: int = 0,
    on_frame: Callable[[int, int, int], None] | None = None,
    groups: set[int] | None = None,
) -> RunResult:
    """Track every object of the job; ``first_frame`` is the annotation frame number of
    ``frames[0]``; ``on_frame(frames done, frames in all, objects)`` reports progress."""
    started = time.perf_counter()
    first_image = frames.read(0)
    frame_size = (first_image.height, first_image.width)
    num_frames = len(frames)
    plan = plan_objects(shapes, tracks, frame_size, labels, groups)
    if not plan.objects:
        raise RunError(
            "no keyframes found: draw the object (mask, polygon or rectangle) on at least "
            "one frame, or check --labels / --groups"
        )
    objects = []
    for obj in plan.objects:
        keyframes = []
        for shape in obj.keyframes:
            index = shape.frame - first_frame
            if not 0 <= index < num_frames:
                raise RunError(
                    f"{obj.label} keyframe on frame {shape.frame} is outside the frames given "
                    f"({first_frame}..{first_frame + num_frames - 1})"
                )
            keyframes.append(Keyframe(index, keyframe_prompt(shape, frame_size)))
        objects.append(keyframes)

    total = yielded_frame_count(objects, direction, num_frames)
    answers: list[dict[int, list | None]] = [{} for _ in objects]
    done = 0
    try:
        for tracked in KeyframeVideoTracker(tracker).track(
            frames, objects, direction, max_cond_frames
        ):
            for obj, answer, logits in zip(
                plan.objects, answers, tracked.low_res_logits, strict=True
            ):
                mask = tracker.logits_mask(logits, tracked.frame_size)
                answer[tracked.frame_index] = encode_shape(obj.shape_type, mask)
            done += 1
            if on_frame is not None:
                on_frame(done, total, len(objects))
    except VideoError as error:
        raise RunError(str(error)) from error

    new_shapes, new_tracks = [], []
    for obj, answer in zip(plan.objects, answers, strict=True):
        if obj.shape_type == "mask":
            new_shapes.extend(_mask_shapes(obj, answer, first_frame))
        else:
            new_tracks.append(_track(obj, answer, first_frame, num_frames))
    return RunResult(plan, new_shapes, new_tracks, done, time.perf_counter() - started)


def _mask_shapes(obj: TrackedObject, answer: dict, first_frame: int) -> list[Shape]:
    """One auto mask per visible frame, except where a person's keyframe already is."""
    keyframes = {k.frame for k in obj.keyframes}
    return [
        Shape("mask", index + first_frame, points, obj.label, obj.group, AUTO)
        for index, points in sorted(answer.items())
        if points is not None and index + first_frame not in keyframes
    ]


def _track(obj: TrackedObject, answer: dict, first_frame: int, num_frames: int) -> Track:
    """The object's auto track: a keyframe on every tracked frame (a person's own shape on
    their keyframes), ``outside`` where SAM 2 does not see the object, and closed after
    the last tracked frame."""
    keyframes = {k.frame: k for k in obj.keyframes if k.type == obj.shape_type}
    shapes: list[Shape] = []
    last_points = None
    for index, points in sorted(answer.items()):
        frame = index + first_frame
        if frame in keyframes:
            points = keyframes[frame].points
        outside = points is None
        points = last_points if outside else points
        if points is None:
            continue  # not seen yet: the track starts where it is first seen
        shapes.append(
            Shape(obj.shape_type, frame, list(points), obj.label, obj.group, AUTO, outside=outside)
        )
        last_points = points
    end = max(answer) + 1
    if shapes and end < num_frames and not shapes[-1].outside:
        shapes.append(
            Shape(
                obj.shape_type,
                end + first_frame,
                list(last_points),
                obj.label,
                obj.group,
                AUTO,
                outside=True,
            )
        )
    return Track(obj.label, shapes, obj.group, AUTO)
