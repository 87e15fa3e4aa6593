"""One tracking run: people's shapes -> objects and keyframes (checked before any model
loads) -> SAM 2 over the frames -> the tool's output (marked mask shapes per frame;
marked keyframes in the object's track, or a new auto track, for polygons/rectangles)."""

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

from cvat_track.marker import mark
from cvat_track.objects import AUTO, Plan, Shape, Track, TrackedObject, plan_objects


class RunError(ValueError):
    """The run cannot start (the message says what to change)."""


@dataclass
class PreparedRun:
    """A run checked and planned, before any model is loaded."""

    plan: Plan
    keyframes: list[list[Keyframe]]  # per object, frame indices into the frame source
    frame_size: tuple[int, int]  # (height, width)
    first_frame: int  # annotation frame number of the frame source's index 0
    num_frames: int
    direction: str
    total: int  # frames the run processes
    # Annotation frame numbers of the CVAT jobs written to (each job stores its own
    # tracks); one segment of every frame for a file or a single job.
    segments: list[range]


@dataclass
class RunResult:
    plan: Plan
    new_shapes: list[Shape]  # marked auto mask shapes, one per object and visible frame
    new_tracks: list[Track]  # new auto tracks (objects people drew as shapes only)
    # The plan's rewritten tracks, each with its whole new shape list (people's shapes
    # kept as they were, the new output beside them); ``ref`` is the track it replaces.
    rewritten_tracks: list[Track]
    frames_processed: int
    seconds: float


def keyframe_prompt(shape: Shape, frame_size: tuple[int, int]) -> Prompt:
    """A person's shape as SAM 2's prompt: a box for rectangles, a mask otherwise."""
    try:
        return shape_prompt(shape.type, shape.points, frame_size)
    except ShapeError as error:
        raise RunError(f"{shape.label} {shape.type} on frame {shape.frame}: {error}") from error


def prepare_run(
    frames: FrameSource,
    shapes: list[Shape],
    tracks: list[Track],
    direction: str = "forward",
    labels: set[str] | None = None,
    groups: set[int] | None = None,
    first_frame: int = 0,
    used_groups: set[int] = frozenset(),
    segments: list[range] | None = None,
    frame_size: tuple[int, int] | None = None,
) -> PreparedRun:
    """The objects, their keyframes as prompts, and what the run replaces; refuses a job
    without keyframes or with keyframes outside the frames. ``first_frame`` is the
    annotation frame number of ``frames[0]``; ``frame_size`` (height, width), when the
    caller has read a frame already (else frame 0 is read)."""
    if frame_size is None:
        first_image = frames.read(0)
        frame_size = (first_image.height, first_image.width)
    num_frames = len(frames)
    plan = plan_objects(shapes, tracks, frame_size, labels, groups, used_groups)
    if not plan.objects:
        raise RunError(
            "no keyframes found: draw the object (mask, polygon or rectangle) on at least "
            "one frame, or check --labels / --groups"
        )
    keyframes = []
    for obj in plan.objects:
        prompts = []
        for shape in obj.keyframes:
            index = shape.frame - first_frame
            if not 0 <= index < num_frames:
                raise RunError(
                    f"{obj.label} keyframe on frame {shape.frame} is outside the frames given "
                    f"({first_frame}..{first_frame + num_frames - 1})"
                )
            prompts.append(Keyframe(index, keyframe_prompt(shape, frame_size)))
        keyframes.append(prompts)
    total = yielded_frame_count(keyframes, direction, num_frames)
    segments = segments or [range(first_frame, first_frame + num_frames)]
    return PreparedRun(
        plan, keyframes, frame_size, first_frame, num_frames, direction, total, segments
    )


def run_prepared(
    tracker: Sam2StreamTracker,
    frames: FrameSource,
    run: PreparedRun,
    max_cond_frames: int | None = None,
    on_frame: Callable[[int, int, int], None] | None = None,
) -> RunResult:
    """Track every object; ``on_frame(frames done, frames in all, objects)`` reports."""
    started = time.perf_counter()
    plan = run.plan
    answers: list[dict[int, list | None]] = [{} for _ in plan.objects]
    done = 0
    try:
        for tracked in KeyframeVideoTracker(tracker).track(
            frames, run.keyframes, run.direction, max_cond_frames
        ):
            for obj, answer, logits in zip(
                plan.objects, answers, tracked.low_res_logits, strict=True
            ):
                mask = tracker.logits_mask(logits, tracked.frame_size)
                points = encode_shape(obj.shape_type, mask)
                answer[tracked.frame_index + run.first_frame] = (
                    None if points is None else mark(obj.shape_type, points, run.frame_size)
                )
            done += 1
            if on_frame is not None:
                on_frame(done, run.total, len(plan.objects))
    except VideoError as error:
        raise RunError(str(error)) from error

    new_shapes, new_tracks, rewritten = [], [], {}
    for obj, answer in zip(plan.objects, answers, strict=True):
        if obj.shape_type == "mask":
            new_shapes.extend(_mask_shapes(obj, answer))
            continue
        for segment in run.segments:
            part = {f: p for f, p in answer.items() if f in segment}
            if not part:
                continue
            target = obj.target(segment)
            output = _track_output(obj, part, target, run.frame_size)
            end = max(part) + 1
            if target is None:
                output = _ended(output, end, run)
                new_tracks.append(Track(obj.label, output, obj.group, AUTO, home=segment))
                continue
            if end == segment.stop:  # the next job takes over: end this job's part
                output = _ended(output, end, run)
            rewritten[id(target)] = _with_output(target, output)
    rewritten_tracks = [rewritten.get(id(t)) or _with_output(t, []) for t in plan.rewritten_tracks]
    seconds = time.perf_counter() - started
    return RunResult(plan, new_shapes, new_tracks, rewritten_tracks, done, seconds)


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
    """``prepare_run`` then ``run_prepared``, for callers that hold a tracker already."""
    run = prepare_run(frames, shapes, tracks, direction, labels, groups, first_frame)
    return run_prepared(tracker, frames, run, max_cond_frames, on_frame)


def _people_frames(obj: TrackedObject) -> set[int]:
    """Frames where a person's shape of the object is visible (its keyframes)."""
    return {k.frame for k in obj.keyframes}


def _mask_shapes(obj: TrackedObject, answer: dict[int, list | None]) -> list[Shape]:
    """One auto mask per visible frame, except where a person's keyframe already is."""
    people = _people_frames(obj)
    return [
        Shape("mask", frame, points, obj.label, obj.group, AUTO)
        for frame, points in sorted(answer.items())
        if points is not None and frame not in people
    ]


def _track_output(
    obj: TrackedObject,
    answer: dict[int, list | None],
    target: Track | None,
    frame_size: tuple[int, int],
) -> list[Shape]:
    """The output keyframes of a polygon/rectangle object, one per tracked frame: the
    tracked shape; ``outside`` where SAM 2 does not see the object, and where a person's
    shape of the object outside ``target`` shows it (so CVAT shows one shape there);
    nothing where ``target`` holds a person's shape. Outside keyframes repeat the last
    points, marked; none come before the first shape."""
    own = {}
    if target is not None:
        closing = target.export_closing()
        own = {s.frame: s for s in target.people_shapes() if s is not closing}
    people = _people_frames(obj)
    shapes: list[Shape] = []
    last_points = None
    for frame, points in sorted(answer.items()):
        if frame in own:
            if not own[frame].outside:  # the person's own shape continues the track here
                last_points = mark(obj.shape_type, own[frame].points, frame_size)
            continue
        outside = points is None or frame in people
        if not outside:
            last_points = points
        elif last_points is None:
            continue
        shapes.append(
            Shape(obj.shape_type, frame, list(last_points), obj.label, obj.group, AUTO, outside)
        )
    return shapes


def _ended(shapes: list[Shape], end: int, run: PreparedRun) -> list[Shape]:
    """Output keyframes ending at frame ``end``, after the last tracked frame (``outside``
    there, also when that is the first frame of the next job, as CVAT ends a job's part
    of a track), unless that is past the frames or they end outside already."""
    if shapes and not shapes[-1].outside and end < run.first_frame + run.num_frames:
        last = shapes[-1]
        closing = Shape(last.type, end, list(last.points), last.label, last.group, AUTO, True)
        return [*shapes, closing]
    return shapes


def _with_output(track: Track, output: list[Shape]) -> Track:
    """``track`` with its earlier output replaced by ``output``, in frame order (the
    exporter's closing shape goes where the output covers its frame)."""
    closing = track.export_closing()
    covered = {s.frame for s in output}
    people = [s for s in track.people_shapes() if not (s is closing and s.frame in covered)]
    shapes = sorted([*people, *output], key=lambda s: s.frame)
    return Track(track.label, shapes, track.group, track.source, ref=track, home=track.home)
