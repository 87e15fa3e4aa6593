"""Per-object SAM 2 tracking state, its safe serialisation, and the stores that keep it."""

from tracker_state.cache import CachedStateStore
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
    "InMemoryStateStore",
    "ObjectState",
    "RedisStateStore",
    "Replay",
    "StateConflict",
    "StateError",
    "StateFormatError",
    "StateNotFound",
    "StateRef",
    "StateStore",
    "StoreUnavailable",
    "decode_state",
    "encode_state",
    "store_from_env",
]
