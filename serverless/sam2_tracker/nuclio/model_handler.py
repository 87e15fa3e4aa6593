"""One tracker call, from CVAT's JSON to CVAT's JSON.

parse -> check the stored states (one store round trip; replayed calls are answered
here, without the model) -> decode the frame once -> image features once -> start new
objects from their shapes / continue stored objects -> shapes -> store the states with
their answers -> answer.

The model is a backend (``tracking.backend``): SAM 2 by default, DeAOT with
``TRACKER_BACKEND=deaot``; this module is the same for both.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

from tracker_state import (
    Answer,
    Replay,
    StateConflict,
    StateFormatError,
    StateFromAnotherModel,
    StateNotFound,
    StateRef,
    StateStore,
    StoreUnavailable,
    TrackedState,
    store_from_env,
)
from tracking.answers import Box, answer_points, shape_prompt
from tracking.backend import CallNotServed, FrameTracker, TrackResult, load_backend
from tracking.cpu_threads import apply_torch_threads
from tracking.engine import BoxPrompt, Prompt
from tracking.frames import DEFAULT_MAX_PIXELS, FrameError, FrameTooLarge, decode_frame
from tracking.model_loading import InfoLogger
from tracking.protocol import (
    DEFAULT_MAX_OBJECTS,
    ContinuedObject,
    KeyframedObject,
    NewObject,
    RequestError,
    bad_request,
    parse_request,
)
from tracking.shapes import ShapeError
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


@dataclass(frozen=True)
class CallSummary:
    """What one answered call did, for the one log line per call."""

    frame_size: tuple[int, int] | None  # (height, width); None when nothing was decoded
    started: int
    continued: int
    replayed: int
    seconds: dict[str, float]  # wall time per phase

    def describe(self) -> str:
        if self.frame_size is None:
            frame = "frame not decoded"
        else:
            frame = f"{self.frame_size[1]}x{self.frame_size[0]} frame"
        phases = ", ".join(f"{name} {s * 1000:.0f}" for name, s in self.seconds.items())
        total_ms = sum(self.seconds.values()) * 1000
        return (
            f"tracked {self.started} started, {self.continued} continued, "
            f"{self.replayed} replayed objects on a {frame} in {total_ms:.0f} ms ({phases} ms)"
        )


def frame_digest(image: object) -> str | None:
    """Identifies the frame CVAT sent (SHA-256 of its base64 text), so a replayed call can
    be told from a call on another frame."""
    if not isinstance(image, str):
        return None
    return hashlib.sha256(image.encode()).hexdigest()


class ModelHandler:
    """Answers tracker calls with a backend's tracker and a state store."""

    def __init__(
        self,
        tracker: FrameTracker,
        store: StateStore,
        limits: HandlerLimits | None = None,
        setup_notes: tuple[str, ...] = (),
    ) -> None:
        self.tracker = tracker
        self.store = store
        self.limits = limits or HandlerLimits()
        self.setup_notes = setup_notes  # e.g. which store, from which variable
        self.last_call: CallSummary | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, logger: InfoLogger = log) -> ModelHandler:
        env = dict(os.environ if env is None else env)
        threads = apply_torch_threads(env)  # before the model's first thread pool starts
        backend = load_backend(env, logger)
        store, store_description = store_from_env(env, backend.tracker.codec, check=True)
        return cls(
            backend.tracker,
            store,
            HandlerLimits.from_env(env),
            (store_description, threads, *backend.notes),
        )

    def describe(self) -> str:
        """The startup line: backend, model, input size, device, precision, store, limits."""
        return "; ".join(
            (
                self.tracker.describe(),
                *self.setup_notes,
                f"limits: {self.limits.max_objects} objects per call, frames up to "
                f"{self.limits.max_pixels} pixels",
            )
        )

    def infer(self, body: object) -> dict:
        """Answer one call: ``{"shapes": [...], "states": [...]}`` in the request's order.

        Raises RequestError (4xx/503) for anything the caller can fix or retry; stored
        states are checked before any model work, so those answers come at once.
        """
        timer = PhaseTimer(self.tracker.device)
        with timer.phase("parse"):
            request = parse_request(body, self.limits.max_objects)
            digest = frame_digest(request.image)
        new = [(i, o) for i, o in enumerate(request.objects) if isinstance(o, NewObject)]
        stored = [(i, o) for i, o in enumerate(request.objects) if not isinstance(o, NewObject)]
        with timer.phase("state_read"):
            loaded = self._load([(i, o.ref) for i, o in stored], digest)
            if new and not stored:
                # Stored objects were checked in the store; new ones alone only get there
                # after the model ran: see first that the store answers.
                self._store(self.store.ping)

        answers: dict[int, tuple[object, StateRef]] = {
            i: (found.shape, found.ref)
            for (i, _), found in zip(stored, loaded)
            if isinstance(found, Replay)
        }
        stepping = [
            (i, o, found) for (i, o), found in zip(stored, loaded) if not isinstance(found, Replay)
        ]
        frame_size = None
        if new or stepping:
            frame_size = self._track(request.image, new, stepping, digest, timer, answers)
        self.last_call = CallSummary(
            frame_size, len(new), len(stepping), len(stored) - len(stepping), timer.seconds
        )
        order = sorted(answers)
        return {
            "shapes": [answers[i][0] for i in order],
            "states": [answers[i][1].to_json() for i in order],
        }

    def _track(
        self,
        image: object,
        new: list[tuple[int, NewObject]],
        stepping: list[tuple[int, ContinuedObject | KeyframedObject, TrackedState]],
        digest: str | None,
        timer: PhaseTimer,
        answers: dict[int, tuple[object, StateRef]],
    ) -> tuple[int, int]:
        """Run the model on the frame for new, continued and keyframed objects, store their
        states and put their answers into ``answers``; returns the frame size (height,
        width)."""
        with timer.phase("decode"):
            try:
                frame = decode_frame(image, self.limits.max_pixels)
            except FrameError as error:
                status = 413 if isinstance(error, FrameTooLarge) else 400
                raise RequestError(status, str(error)) from error
        frame_size = (frame.height, frame.width)
        continued = [(i, o, s) for i, o, s in stepping if isinstance(o, ContinuedObject)]
        keyed = [(i, o, s) for i, o, s in stepping if isinstance(o, KeyframedObject)]
        with timer.phase("prompts"):
            prompts = [self._prompt(o, i, frame_size) for i, o in new]
            key_prompts = [self._prompt(o, i, frame_size) for i, o, _ in keyed]
        self._check_compatible([s for _, _, s in stepping], [i for i, _, _ in stepping], frame_size)

        with timer.phase("preprocess"):
            prepared = self.tracker.prepare(frame)
        with timer.phase("image_encoder"):
            features = self.tracker.encode(prepared)
        with timer.phase("tracking"):
            try:
                started = self.tracker.start(
                    features,
                    prompts,
                    [o.shape_type for _, o in new],
                    [o.legacy for _, o in new],
                    [o.frame for _, o in new],
                )
                stepped = (
                    self.tracker.step(
                        features, [s for _, _, s in continued], [o.frame for _, o, _ in continued]
                    )
                    if continued
                    else []
                )
                keyframed = (
                    self.tracker.add_keyframes(
                        features,
                        [s for _, _, s in keyed],
                        key_prompts,
                        [o.frame for _, o, _ in keyed],
                    )
                    if keyed
                    else []
                )
            except CallNotServed as error:
                raise bad_request(str(error)) from error

        with timer.phase("shapes"):
            started_answers = [
                self._answer(r, frame_size, p.box if isinstance(p, BoxPrompt) else None)
                for r, p in zip(started, prompts)
            ]
            stepped_answers = [self._answer(r, frame_size, r.state.last_box) for r in stepped]
            keyed_answers = [self._answer(r, frame_size, r.state.last_box) for r in keyframed]

        with timer.phase("state_write"):
            # New states first: if that fails nothing CVAT holds has changed; if the
            # commit then fails, the new states are orphans that simply expire.
            created = self._store(lambda: self.store.create([s for _, s in started_answers]))
            moved = [*continued, *keyed]
            moved_answers = [*stepped_answers, *keyed_answers]
            refs = [o.ref for _, o, _ in moved]
            stored_answers = [
                Answer(state.frame_index, digest or "", shape, from_frame_index=ref.frame_index)
                for (shape, state), ref in zip(moved_answers, refs)
            ]
            new_refs = self._store(
                lambda: self.store.commit(refs, [s for _, s in moved_answers], stored_answers)
            )
        for (i, _), (shape, _), ref in zip(new, started_answers, created):
            answers[i] = (shape, ref)
        for (i, _, _), (shape, _), ref in zip(moved, moved_answers, new_refs):
            answers[i] = (shape, ref)
        return frame_size

    def _prompt(
        self, obj: NewObject | KeyframedObject, index: int, frame_size: tuple[int, int]
    ) -> Prompt:
        try:
            return shape_prompt(obj.shape_type, obj.points, frame_size)
        except ShapeError as error:
            raise bad_request(f"shapes[{index}]: {error}") from error

    def _load(
        self, continued: list[tuple[int, StateRef]], digest: str | None
    ) -> list[TrackedState | Replay]:
        """The stored states of the continued objects ((request index, ref) pairs)."""
        if not continued:
            return []
        refs = [ref for _, ref in continued]
        try:
            return self._store(lambda: self.store.load(refs, digest))
        except StateFromAnotherModel as error:
            index = next(i for i, ref in continued if ref.token == str(error))
            raise self._another_model(index, error.model_id) from error
        except StateFormatError as error:
            raise RequestError(
                410, f"a stored state is unreadable ({error}); {RESTART_HINT}"
            ) from error

    def _another_model(self, index: int, model_id: str) -> RequestError:
        return RequestError(
            409,
            f"states[{index}] was made by model {model_id}, this function runs "
            f"{self.tracker.model_id}; {RESTART_HINT}",
        )

    def _check_compatible(
        self, states: list[TrackedState], indices: list[int], frame_size: tuple[int, int]
    ) -> None:
        for index, state in zip(indices, states):
            if state.model_id != self.tracker.model_id:
                raise self._another_model(index, state.model_id)
            if state.frame_size != frame_size:
                raise bad_request(
                    f"states[{index}] tracks {state.frame_size[1]}x{state.frame_size[0]} "
                    f"frames but this frame is {frame_size[1]}x{frame_size[0]}"
                )

    def _store(self, operation):
        """Run a store operation, turning its failures into answers for the caller."""
        try:
            return operation()
        except StateNotFound as error:
            raise RequestError(
                404,
                f"tracking state {str(error)[:8]}... is unknown or expired (states live 8 "
                f"hours after their last use); {RESTART_HINT}",
            ) from error
        except StateConflict as error:
            raise RequestError(
                409,
                "this object's state was already advanced past this frame by another call "
                "(a concurrent call, or a repeated one on another frame); continue from the "
                "latest state or " + RESTART_HINT,
            ) from error
        except StoreUnavailable as error:
            raise RequestError(
                503,
                f"the tracking state store is unavailable ({error}); nothing was changed, "
                "retry when it is back",
            ) from error

    def _answer(
        self, result: TrackResult, frame_size: tuple[int, int], fallback_box: Box | None
    ) -> tuple[object, TrackedState]:
        """(the JSON answer, the state to store) for one object on this frame."""
        points, state = answer_points(self.tracker, result, frame_size, fallback_box)
        if points is None:
            return None, state
        if state.legacy:
            return points, state
        return {"type": state.shape_type, "points": points}, state
