"""Per-object tracking state (SAM 2's here; other backends bring a codec), its safe
serialisation, and the stores that keep it."""

from tracker_state.cache import CachedStateStore
from tracker_state.codec import ForeignState, Sam2StateCodec, StateCodec, TrackedState
from tracker_state.config import store_from_env
from tracker_state.serialization import Answer, StateFormatError, decode_state, encode_state
from tracker_state.state import SHAPE_TYPES, ObjectState
from tracker_state.stores import (
    TOKEN_PATTERN,
    InMemoryStateStore,
    RedisStateStore,
    Replay,
    StateConflict,
    StateError,
    StateFromAnotherModel,
    StateNotFound,
    StateRef,
    StateStore,
    StoreUnavailable,
)

__all__ = [
    "SHAPE_TYPES",
    "TOKEN_PATTERN",
    "Answer",
    "CachedStateStore",
    "ForeignState",
    "InMemoryStateStore",
    "ObjectState",
    "RedisStateStore",
    "Replay",
    "Sam2StateCodec",
    "StateCodec",
    "StateConflict",
    "StateError",
    "StateFormatError",
    "StateFromAnotherModel",
    "StateNotFound",
    "StateRef",
    "StateStore",
    "StoreUnavailable",
    "TrackedState",
    "decode_state",
    "encode_state",
    "store_from_env",
]
