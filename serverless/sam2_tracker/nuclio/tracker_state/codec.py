"""How a backend's object states become store parts and back: one codec per backend.

The stores (``tracker_state.stores``) keep states as named parts (safetensors blobs)
and only need to know, per backend, which parts a state may have, how to write all
of them or only those a tracked frame changed, and how to read them back. Every
codec's ``head`` part holds an int64 ``frame_index`` tensor (what compare-and-set
checks) and, in its metadata, the backend and model that made the state, so a state
from another backend is refused with the model's name instead of being misread.
"""

from __future__ import annotations

from typing import Protocol

from tracker_state.serialization import (
    HEAD,
    Answer,
    StateFormatError,
    changed_parts,
    decode_state,
    encode_state,
    head_metadata,
    part_names,
)
from tracker_state.state import ObjectState

SAM2_BACKEND = "sam2"


class ForeignState(StateFormatError):
    """A readable state made by another backend or model than the one reading it."""

    def __init__(self, backend: str, model_id: str) -> None:
        super().__init__(f"state was made by the {backend} backend, model {model_id}")
        self.backend = backend
        self.model_id = model_id


class TrackedState(Protocol):
    """What the handler and the stores read from any backend's state."""

    model_id: str
    shape_type: str
    legacy: bool
    frame_size: tuple[int, int]
    frame_index: int
    last_box: tuple[float, float, float, float] | None


class StateCodec(Protocol):
    """A backend's state layout in the stores."""

    backend: str
    part_names: list[str]  # every part a state may have, ``head`` first

    def encode(self, state) -> dict[str, bytes]:
        """All parts of a new state."""
        ...

    def changed(self, state, answer: Answer | None) -> dict[str, bytes]:
        """The parts that differ from the state one frame earlier (and the answer)."""
        ...

    def decode(self, parts: dict[str, bytes | None]):
        """The state, validated; raises StateFormatError (ForeignState for another
        backend's state)."""
        ...


def check_backend(head: bytes | None, backend: str) -> None:
    """Raise ForeignState when ``head`` names another backend (SAM 2 heads written before
    backends existed name none and count as SAM 2's)."""
    metadata = head_metadata(head)
    stored = metadata.get("backend", SAM2_BACKEND)
    if stored != backend:
        raise ForeignState(stored, metadata.get("model_id", "unknown"))


class Sam2StateCodec:
    """SAM 2 states (``tracker_state.serialization``): head, prompt memory, a ring of
    recent memories, answer."""

    backend = SAM2_BACKEND

    def __init__(self, memory_capacity: int) -> None:
        self.memory_capacity = memory_capacity
        self.part_names = part_names(memory_capacity)

    def encode(self, state: ObjectState) -> dict[str, bytes]:
        return encode_state(state)

    def changed(self, state: ObjectState, answer: Answer | None) -> dict[str, bytes]:
        return changed_parts(state, answer)

    def decode(self, parts: dict[str, bytes | None]) -> ObjectState:
        check_backend(parts.get(HEAD), self.backend)
        return decode_state(parts)
