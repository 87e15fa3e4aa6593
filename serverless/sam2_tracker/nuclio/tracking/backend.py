"""The seam between CVAT's protocol and a tracking model: what the handler needs from a
backend, and which backend ``TRACKER_BACKEND`` names.

A call goes: ``prepare`` the decoded frame (the backend's own resize and
normalisation), ``encode`` it once for all objects, ``start`` new objects from their
prompts and ``step`` stored objects onto the frame, then ``frame_mask`` per object at
the frame's size. States are the backend's own dataclasses (fields of
``tracker_state.TrackedState`` plus its tensors), written by its ``codec``. Two
backends exist: SAM 2 (``tracking.engine.Sam2StreamTracker``) and DeAOT
(``tracking.deaot_engine.DeaotTracker``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from tracker_state.codec import StateCodec, TrackedState

from tracking.engine import CallNotServed, Prompt
from tracking.frames import PreparedFrame
from tracking.model_loading import InfoLogger, ModelSetupError

__all__ = ["CallNotServed", "FrameTracker", "LoadedBackend", "TrackResult", "load_backend"]

DEFAULT_BACKEND = "sam2"
# Backend name -> "module:function" building it from the environment; imported only when
# chosen, so an image for one backend needs none of the other's packages.
BACKEND_LOADERS = {
    "sam2": "tracking.model_loading:load_sam2_tracker",
    "deaot": "tracking.deaot_engine:load_deaot_tracker",
}


class TrackResult(Protocol):
    """One object's outcome on one frame; ``frame_mask`` turns it into pixels."""

    state: TrackedState


class FrameTracker(Protocol):
    """A tracking model serving CVAT's frame-by-frame calls with explicit per-object state."""

    backend: str  # names the backend in states and logs: "sam2", "deaot"
    model_id: str  # a state is only continued by the model that made it
    device: torch.device

    @property
    def codec(self) -> StateCodec: ...

    def describe(self) -> str:
        """The startup line's first part: backend, model, input size, device, precision."""
        ...

    def prepare(self, image: Image.Image) -> PreparedFrame: ...

    def encode(self, frame: PreparedFrame) -> Any:
        """Image features of one frame, computed once and shared by all its objects."""
        ...

    def start(
        self,
        features: Any,
        prompts: list[Prompt],
        shape_types: list[str],
        legacy_flags: list[bool],
        frames: list[int | None] | None = None,
    ) -> list[TrackResult]:
        """New objects on this frame (their prompt frame), one per prompt; ``frames``: the
        caller's number of this frame per object (None: count steps from here)."""
        ...

    def step(
        self, features: Any, states: list[TrackedState], frames: list[int | None] | None = None
    ) -> list[TrackResult]:
        """Stored objects tracked onto this frame, in order: each state's next frame, or
        the frame number given (raises CallNotServed when the state cannot go there)."""
        ...

    def add_keyframes(
        self,
        features: Any,
        states: list[TrackedState],
        prompts: list[Prompt],
        frames: list[int],
    ) -> list[TrackResult]:
        """One more keyframe per stored object, on this frame (number ``frames[i]``): its
        prompt conditions the object from now on; the result is the keyframe's mask.
        Raises CallNotServed when the backend or the state takes no keyframes."""
        ...

    def frame_mask(self, result: TrackResult, frame_size: tuple[int, int]) -> np.ndarray:
        """(H, W) bool mask of the object at the frame's size; all False when not visible."""
        ...


@dataclass(frozen=True)
class LoadedBackend:
    tracker: FrameTracker
    notes: tuple[str, ...]  # what the startup line should say about setup choices


def backend_name(env: dict[str, str]) -> str:
    name = (env.get("TRACKER_BACKEND") or DEFAULT_BACKEND).strip().lower()
    if name not in BACKEND_LOADERS:
        raise ModelSetupError(
            f"TRACKER_BACKEND={name!r} is not one of {', '.join(sorted(BACKEND_LOADERS))}"
        )
    return name


def load_backend(env: dict[str, str], logger: InfoLogger) -> LoadedBackend:
    """The backend ``TRACKER_BACKEND`` names (default sam2), built from the environment."""
    module_name, function_name = BACKEND_LOADERS[backend_name(env)].split(":")
    loader: Callable[[dict[str, str], InfoLogger], LoadedBackend] = getattr(
        importlib.import_module(module_name), function_name
    )
    return loader(env, logger)
