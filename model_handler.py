"""One tracker call, from CVAT's JSON to CVAT's JSON.

decode the frame once -> image features once -> start new objects from their
shapes / continue stored objects -> store states -> encode the shapes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from tracker_state import (
    ObjectState,
    StateConflict,
    StateFormatError,
    StateNotFound,
    StateRef,
    StateStore,
    StoreUnavailable,
    store_from_env,
)
from tracking.engine import BoxPrompt, MaskPrompt, Prompt, Sam2StreamTracker, StepResult
from tracking.frames import (
    DEFAULT_MAX_PIXELS,
    FrameError,
    FrameTooLarge,
    decode_frame,
    preprocess_frame,
)
from tracking.model_loading import ModelSettings, build_tracker, load_sam2
from tracking.protocol import (
    DEFAULT_MAX_OBJECTS,
    ContinuedObject,
    NewObject,
    RequestError,
    bad_request,
    parse_request,
)
from tracking.shapes import (
    ShapeError,
    decode_rle,
    encode_shape,
    parse_box,
    rasterize_polygon,
)
from tracking.timing import PhaseTimer

log = logging.getLogger(__name__)

RESTART_HINT = "start tracking this object again from a shape"


@dataclass(frozen=True)
class HandlerLimits:
    max_objects: int = DEFAULT_MAX_OBJECTS
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_env(cls, env: dict[str, str]) -> HandlerLimits:
        return cls(
            max_objects=int(env.get("SAM2_MAX_OBJECTS_PER_CALL") or DEFAULT_MAX_OBJECTS),
            max_pixels=int(env.get("SAM2_MAX_FRAME_PIXELS") or DEFAULT_MAX_PIXELS),
        )


class ModelHandler:
    """Answers tracker calls with a SAM 2 stream tracker and a state store."""

    def __init__(
        self, tracker: Sam2StreamTracker, store: StateStore, limits: HandlerLimits | None = None
    ) -> None:
        self.tracker = tracker
        self.store = store
        self.limits = limits or HandlerLimits()
        self.last_timings: dict[str, float] = {}  # seconds per phase of the last call

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ModelHandler:
        env = dict(os.environ if env is None else env)
        settings = ModelSettings.from_env(env)
        model = load_sam2(settings, env)
        tracker = build_tracker(model, settings)
        store, description = store_from_env(env, tracker.memory_capacity)
        log.info(
            "model %s on %s (%s%s); %s",
            tracker.model_id,
            tracker.device,
            str(tracker.precision).removeprefix("torch."),
            ", compiled" if tracker.compiled else "",
            description,
        )
        return cls(tracker, store, HandlerLimits.from_env(env))

    def infer(self, body: object) -> dict:
        """Answer one call: ``{"shapes": [...], "states": [...]}`` in the request's order.

        Raises RequestError (4xx/503) for anything the caller can fix or retry.
        """
        timer = PhaseTimer(self.tracker.device)
        with timer.phase("parse"):
            request = parse_request(body, self.limits.max_objects)
        with timer.phase("decode"):
            try:
                image = decode_frame(request.image, self.limits.max_pixels)
            except FrameError as error:
                status = 413 if isinstance(error, FrameTooLarge) else 400
                raise RequestError(status, str(error)) from error
        frame_size = (image.height, image.width)

        new = [(i, o) for i, o in enumerate(request.objects) if isinstance(o, NewObject)]
        continued = [
            (i, o) for i, o in enumerate(request.objects) if isinstance(o, ContinuedObject)
        ]
        with timer.phase("prompts"):
            prompts = [self._prompt(o, i, frame_size) for i, o in new]
        refs = [o.ref for _, o in continued]
        with timer.phase("state_read"):
            states = self._load(refs, frame_size)

        with timer.phase("preprocess"):
            pixels = preprocess_frame(image, self.tracker.image_size, self.tracker.device)
        with timer.phase("image_encoder"):
            features = self.tracker.encode_frame(pixels, frame_size)
        with timer.phase("tracking"):
            started = self.tracker.start(
                features,
                prompts,
                [o.shape_type for _, o in new],
                [o.legacy for _, o in new],
            )
            stepped = self.tracker.step(features, states) if states else []

        with timer.phase("state_write"):
            # New states first: if that fails nothing CVAT holds has changed; if the
            # commit then fails, the new states are orphans that simply expire.
            created = self._store(lambda: self.store.create([r.state for r in started]))
            new_refs = self._store(lambda: self.store.commit(refs, [r.state for r in stepped]))

        answers: list[tuple[int, StepResult, StateRef]] = [
            *((i, r, ref) for (i, _), r, ref in zip(new, started, created)),
            *((i, r, ref) for (i, _), r, ref in zip(continued, stepped, new_refs)),
        ]
        answers.sort(key=lambda answer: answer[0])
        with timer.phase("shapes"):
            shapes = self._shapes([r for _, r, _ in answers], frame_size)
        self.last_timings = timer.seconds
        return {"shapes": shapes, "states": [ref.to_json() for _, _, ref in answers]}

    def _prompt(self, obj: NewObject, index: int, frame_size: tuple[int, int]) -> Prompt:
        height, width = frame_size
        try:
            if obj.shape_type == "rectangle":
                return BoxPrompt(parse_box(obj.points, height, width))
            if obj.shape_type == "polygon":
                mask = rasterize_polygon(obj.points, height, width)
            else:
                mask = decode_rle(obj.points, height, width)
        except ShapeError as error:
            raise bad_request(f"shapes[{index}]: {error}") from error
        if not mask.any():
            raise bad_request(f"shapes[{index}]: the {obj.shape_type} covers no pixel")
        return MaskPrompt(torch.from_numpy(mask))

    def _load(self, refs: list[StateRef], frame_size: tuple[int, int]) -> list[ObjectState]:
        if not refs:
            return []
        try:
            states = self._store(lambda: self.store.load(refs))
        except StateFormatError as error:
            raise RequestError(
                410, f"a stored state is unreadable ({error}); {RESTART_HINT}"
            ) from error
        for index, state in enumerate(states):
            if state.model_id != self.tracker.model_id:
                raise RequestError(
                    409,
                    f"states[{index}] was made by model {state.model_id}, this function runs "
                    f"{self.tracker.model_id}; {RESTART_HINT}",
                )
            if state.frame_size != frame_size:
                raise bad_request(
                    f"states[{index}] tracks {state.frame_size[1]}x{state.frame_size[0]} frames "
                    f"but this frame is {frame_size[1]}x{frame_size[0]}"
                )
        return states

    def _store(self, operation):
        """Run a store operation, turning its failures into answers for the caller."""
        try:
            return operation()
        except StateNotFound as error:
            raise RequestError(
                404, f"tracking state {str(error)[:8]}... is unknown or expired; {RESTART_HINT}"
            ) from error
        except StateConflict as error:
            raise RequestError(
                409,
                "this object's state was already advanced past this frame by another call "
                "(concurrent or repeated request); continue from the latest state or "
                + RESTART_HINT,
            ) from error
        except StoreUnavailable as error:
            raise RequestError(503, f"the tracking state store is unavailable: {error}") from error

    def _shapes(self, results: list[StepResult], frame_size: tuple[int, int]) -> list:
        shapes = []
        for result in results:
            # One object at a time: full-size float logits of many objects on 4K
            # frames would take gigabytes.
            logits = self.tracker.upsample(result.low_res_logits[None], frame_size)
            mask: np.ndarray = (logits[0, 0] > 0).cpu().numpy()
            points = encode_shape(result.state.shape_type, mask)
            if points is None:
                shapes.append(None)
            elif result.state.legacy:
                shapes.append(points)
            else:
                shapes.append({"type": result.state.shape_type, "points": points})
        return shapes
