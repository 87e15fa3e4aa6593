"""CVAT's tracker protocol: request validation and the errors it answers with.

Request: ``{"image": <base64>, "shapes": [...], "states": [...]}`` (see
docs/protocol.md). Per object, a non-null state continues tracking; otherwise its
shape starts a new track. ``states`` may be empty (all objects start). Newer CVAT
sends shapes as ``{"type", "points"}``; older CVAT sends bare rectangle arrays and
expects bare arrays back.

Frame numbers (docs/protocol.md, "Frame numbers and keyframes"): a shape may carry
``"frame"``, the number of this call's frame (CVAT's relay passes shapes through as
sent, once it has checked their ``type``). With a state, ``{"type", "frame": n}``
continues the object onto frame n, and a whole shape (with ``points``) and its frame adds
a keyframe there. Callers that send none get what they always got: a state with a shape
continues, and the shape is not read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tracker_state import TOKEN_PATTERN, StateRef
from tracker_state.state import SHAPE_TYPES

DEFAULT_MAX_OBJECTS = 32


class RequestError(Exception):
    """An answer other than success: HTTP status and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> RequestError:
    return RequestError(400, message)


@dataclass(frozen=True)
class NewObject:
    """An object to start tracking from a shape on this frame."""

    shape_type: str
    points: list
    legacy: bool  # came as a bare point array (older CVAT)
    frame: int | None = None  # this frame's number, when the caller tracks by numbers


@dataclass(frozen=True)
class ContinuedObject:
    """An object to track onto this frame from its stored state."""

    ref: StateRef
    frame: int | None = None  # this frame's number; None: the state's next frame


@dataclass(frozen=True)
class KeyframedObject:
    """A stored object given one more keyframe: its shape on this frame (number ``frame``)."""

    ref: StateRef
    shape_type: str
    points: list
    frame: int


TrackedObject = NewObject | ContinuedObject | KeyframedObject


@dataclass(frozen=True)
class TrackRequest:
    image: object
    objects: list[TrackedObject]


def parse_body(body: object) -> dict:
    """Nuclio hands a dict for JSON bodies, bytes or str otherwise."""
    if isinstance(body, bytes | bytearray):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as error:
            raise bad_request("request body is not UTF-8 JSON") from error
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as error:
            raise bad_request(f"request body is not valid JSON: {error}") from error
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object with 'image', 'shapes', 'states'")
    return body


def parse_state_ref(state: object, index: int) -> StateRef:
    if isinstance(state, dict) and isinstance(state.get("sam2"), str):
        token, frame = state["sam2"], state.get("frame")
        if (
            TOKEN_PATTERN.match(token)
            and isinstance(frame, int)
            and not isinstance(frame, bool)
            and frame >= 0
        ):
            return StateRef(token, frame)
    raise bad_request(
        f"states[{index}] is not a state of this tracker; start tracking this object again"
    )


def parse_frame(shape: object, index: int) -> int | None:
    """The frame number a shape carries, or None."""
    if not isinstance(shape, dict) or "frame" not in shape:
        return None
    frame = shape["frame"]
    if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
        raise bad_request(f"shapes[{index}].frame must be a frame number (an integer >= 0)")
    return frame


def parse_continued(state: object, shape: object, index: int) -> TrackedObject:
    """An object with a state: continued, or given a keyframe when its shape has points
    and names its frame."""
    ref = parse_state_ref(state, index)
    frame = parse_frame(shape, index)
    if frame is None:
        return ContinuedObject(ref)
    if isinstance(shape, dict) and "points" in shape:
        new = parse_shape(shape, index)
        return KeyframedObject(ref, new.shape_type, new.points, frame)
    return ContinuedObject(ref, frame)


def parse_shape(shape: object, index: int) -> NewObject:
    if isinstance(shape, list):
        return NewObject("rectangle", shape, legacy=True)
    if not isinstance(shape, dict):
        raise bad_request(f"shapes[{index}] must be a shape object (or null with a state)")
    shape_type = shape.get("type")
    if shape_type not in SHAPE_TYPES:
        raise bad_request(
            f"shapes[{index}] has unsupported type {shape_type!r}; "
            f"supported: {', '.join(SHAPE_TYPES)}"
        )
    points = shape.get("points")
    if not isinstance(points, list):
        raise bad_request(f"shapes[{index}].points must be a list of numbers")
    return NewObject(shape_type, points, legacy=False, frame=parse_frame(shape, index))


def parse_request(body: object, max_objects: int = DEFAULT_MAX_OBJECTS) -> TrackRequest:
    data = parse_body(body)
    if "image" not in data:
        raise bad_request("request has no 'image'")
    shapes = data.get("shapes")
    states = data.get("states")
    shapes = [] if shapes is None else shapes
    states = [] if states is None else states
    if not isinstance(shapes, list) or not isinstance(states, list):
        raise bad_request("'shapes' and 'states' must be lists")
    if states and shapes and len(states) != len(shapes):
        raise bad_request(
            f"'shapes' has {len(shapes)} entries but 'states' has {len(states)}; "
            "they must list the same objects"
        )
    count = max(len(shapes), len(states))
    if count == 0:
        raise bad_request("request names no object: 'shapes' and 'states' are empty")
    if count > max_objects:
        raise RequestError(
            413, f"{count} objects in one call exceed this function's limit of {max_objects}"
        )
    objects: list[TrackedObject] = []
    for index in range(count):
        state = states[index] if states else None
        shape = shapes[index] if shapes else None
        if state is not None:
            objects.append(parse_continued(state, shape, index))
            continue
        if shape is None:
            raise bad_request(f"object {index} has neither a shape nor a state")
        objects.append(parse_shape(shape, index))
    tokens = [o.ref.token for o in objects if not isinstance(o, NewObject)]
    if len(set(tokens)) != len(tokens):
        raise bad_request("the same state appears twice in one call")
    frames = {o.frame for o in objects if o.frame is not None}
    if len(frames) > 1:
        raise bad_request(
            f"shapes name frames {sorted(frames)}, but a call carries one frame: all the "
            "frame numbers of one call must be the same"
        )
    return TrackRequest(image=data["image"], objects=objects)
