"""CVAT shapes as prompts, and a backend's masks as CVAT answers: one place for the
Nuclio handler, the cvat-cli agent and the keyframe tool."""

from __future__ import annotations

from dataclasses import replace

import torch
from tracker_state.codec import TrackedState

from tracking.backend import FrameTracker, TrackResult
from tracking.engine import BoxPrompt, MaskPrompt, Prompt
from tracking.shapes import ShapeError, decode_rle, encode_shape, parse_box, rasterize_polygon

Box = tuple[float, float, float, float]


def shape_prompt(shape_type: str, points: object, frame_size: tuple[int, int]) -> Prompt:
    """SAM 2's prompt for a CVAT shape: a box for rectangles, a mask otherwise. Raises
    ShapeError naming what is wrong (malformed, outside the frame, covering no pixel)."""
    height, width = frame_size
    if shape_type == "rectangle":
        return BoxPrompt(tuple(float(v) for v in parse_box(points, height, width)))
    if shape_type == "polygon":
        mask = rasterize_polygon(points, height, width)
    elif shape_type == "mask":
        mask = decode_rle(points, height, width)
    else:
        raise ShapeError(f"{shape_type!r} shapes cannot be tracked")
    if not mask.any():
        raise ShapeError(f"the {shape_type} covers no pixel")
    return MaskPrompt(torch.from_numpy(mask))


def answer_points(
    tracker: FrameTracker,
    result: TrackResult,
    frame_size: tuple[int, int],
    fallback_box: Box | None,
) -> tuple[list | None, TrackedState]:
    """(points in the object's shape type, or None when not visible; the state to keep).

    Rectangles are never None while a box is known: CVAT's rectangle panel cannot take
    ``null``, so while SAM 2 says the object is not visible they keep the last box where
    it was seen (``fallback_box``: the state's ``last_box``, or the prompt's box)."""
    mask = tracker.frame_mask(result, frame_size)
    state = result.state
    points = encode_shape(state.shape_type, mask)
    if state.shape_type == "rectangle":
        if points is None and fallback_box is not None:
            points = list(fallback_box)
        if points is not None:
            state = replace(state, last_box=tuple(points))
    return points, state
