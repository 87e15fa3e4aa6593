"""A worker-local cache of recent states in front of a shared store.

When the same worker continues an object, its state is taken from memory instead
of being read and decoded from Redis. Redis stays the truth: a cached state is
used only if it is at exactly the frame CVAT's reference names and the store
confirms, in one round trip reading the heads, that it is still there at that
frame, so an expired state (404), a state advanced by another worker (409) or an
unreachable store (503) is found before any model work; every commit still goes
through the store's compare-and-set, and a restart simply starts with an empty
cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from tracker_state.codec import TrackedState
from tracker_state.serialization import Answer
from tracker_state.stores import Replay, StateConflict, StateRef, StateStore

DEFAULT_CACHED_OBJECTS = 64  # about 3.5 MiB each at the 1024 input


class CachedStateStore(StateStore):
    """Wraps a store with an LRU cache of up to ``capacity`` object states."""

    def __init__(self, inner: StateStore, capacity: int = DEFAULT_CACHED_OBJECTS) -> None:
        self.codec = inner.codec
        self.ttl_seconds = inner.ttl_seconds
        self.inner = inner
        self.capacity = capacity
        self._lock = threading.Lock()
        self._states: OrderedDict[str, TrackedState] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _remember(self, refs: list[StateRef], states: list[TrackedState]) -> None:
        with self._lock:
            for ref, state in zip(refs, states):
                self._states[ref.token] = state
                self._states.move_to_end(ref.token)
            while len(self._states) > self.capacity:
                self._states.popitem(last=False)

    def create(self, states: list[TrackedState]) -> list[StateRef]:
        refs = self.inner.create(states)
        self._remember(refs, states)
        return refs

    def load(
        self, refs: list[StateRef], frame_digest: str | None = None
    ) -> list[TrackedState | Replay]:
        with self._lock:
            cached = [self._states.get(ref.token) for ref in refs]
        if all(s is not None and s.frame_index == r.frame_index for s, r in zip(cached, refs)):
            try:
                self.inner.check(refs)
            except StateConflict:
                self._forget(refs)  # moved on elsewhere, or a replay: the store decides
            else:
                self.hits += len(refs)
                return cached  # type: ignore[return-value]
        self.misses += len(refs)
        loaded = self.inner.load(refs, frame_digest)
        self._remember(
            [r for r, s in zip(refs, loaded) if not isinstance(s, Replay)],
            [s for s in loaded if not isinstance(s, Replay)],
        )
        return loaded

    def ping(self) -> None:
        self.inner.ping()

    def check(self, refs: list[StateRef]) -> None:
        self.inner.check(refs)

    def commit(
        self,
        refs: list[StateRef],
        new_states: list[TrackedState],
        answers: list[Answer] | None = None,
    ) -> list[StateRef]:
        try:
            new_refs = self.inner.commit(refs, new_states, answers)
        except Exception:
            self._forget(refs)  # whatever we held may be stale now
            raise
        self._remember(new_refs, new_states)
        return new_refs

    def _forget(self, refs: list[StateRef]) -> None:
        with self._lock:
            for ref in refs:
                self._states.pop(ref.token, None)
