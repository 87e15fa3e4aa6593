"""Where object states live between calls: Redis (or Kvrocks) in production, memory locally.

CVAT carries only a reference per object, ``{"sam2": <token>, "frame": <n>}``:
an unguessable 256-bit token naming the stored state and the frame index it was
at when CVAT received it. A continuation is accepted only if the stored state is
still at that frame, so a state is advanced exactly once per frame. One exception
makes calls safe to retry: when the stored state is exactly one frame further and
its stored answer was given for the same frame bytes, the call is a replay (CVAT
timed out, a worker died after its commit, the user ran the step again) and gets
that answer back (``Replay``). Anything else (another frame, further ahead) is a
conflict.

Writes are all-or-nothing for the objects of one call (Redis MULTI/EXEC under
WATCH), so a failed call never changes a stored state.

Every failure of the store itself (unreachable, a refused password, an error reply, a
reply that is not Redis's protocol) is ``StoreUnavailable``: nothing changed, retry.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import redis

from tracker_state.codec import ForeignState, Sam2StateCodec, StateCodec, TrackedState
from tracker_state.serialization import (
    ANSWER,
    HEAD,
    Answer,
    StateFormatError,
    decode_answer,
    stored_frame_index,
)

DEFAULT_TTL_SECONDS = 8 * 3600
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
KEY_PREFIX = "sam2cvat:v1:"
COMMIT_ATTEMPTS = 2  # a commit whose connection dropped while nothing changed is redone once


class StateError(Exception):
    """Base class of errors about a state CVAT sent."""


class StateNotFound(StateError):
    """The state is unknown or expired."""


class StateConflict(StateError):
    """The stored state moved past the frame CVAT names (a concurrent or replayed call)."""


class StateFromAnotherModel(StateError):
    """The stored state was made by another backend or model (a function redeployed with
    another ``TRACKER_BACKEND``, or states sent to the wrong function)."""

    def __init__(self, token: str, model_id: str) -> None:
        super().__init__(token)
        self.model_id = model_id


class StoreUnavailable(Exception):
    """The backing store cannot be reached."""


@dataclass(frozen=True)
class StateRef:
    """What CVAT holds for one object: the store token and the frame index of the state."""

    token: str
    frame_index: int

    def to_json(self) -> dict:
        return {"sam2": self.token, "frame": self.frame_index}


@dataclass(frozen=True)
class Replay:
    """A call that repeats the one that advanced this state: its answer, given again."""

    ref: StateRef  # the reference that call answered with (one frame later)
    shape: object  # the shape it answered (JSON value)


def new_token() -> str:
    return secrets.token_urlsafe(32)


class StateStore(ABC):
    """Keeps object states between calls, addressed by StateRef. States are any backend's
    (``TrackedState``); the store's codec turns them into parts."""

    codec: StateCodec
    ttl_seconds: float

    @abstractmethod
    def create(self, states: list[TrackedState]) -> list[StateRef]:
        """Store new states (prompt frames) and return their references."""

    @abstractmethod
    def load(
        self, refs: list[StateRef], frame_digest: str | None = None
    ) -> list[TrackedState | Replay]:
        """The stored states for ``refs``, checked against the store (one round trip at
        least, so a missing or moved state is found before any model work). With a
        ``frame_digest``, a ref whose call was already answered for that frame gives a
        Replay. Raises StateNotFound, StateConflict, StateFromAnotherModel or
        StoreUnavailable."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers (one round trip)."""

    @abstractmethod
    def check(self, refs: list[StateRef]) -> None:
        """Raise StateNotFound/StateConflict/StoreUnavailable unless every state is stored at
        its ref's frame (one round trip)."""

    @abstractmethod
    def commit(
        self,
        refs: list[StateRef],
        new_states: list[TrackedState],
        answers: list[Answer] | None = None,
    ) -> list[StateRef]:
        """Replace the states at ``refs`` by ``new_states`` (one frame later) and keep what
        was answered for them, all or nothing."""


def codec_for(memory_capacity: int | None, codec: StateCodec | None) -> StateCodec:
    """The codec a store was given, or SAM 2's for ``memory_capacity`` recent memories."""
    if codec is not None:
        return codec
    if memory_capacity is None:
        raise TypeError("a store needs a codec or SAM 2's memory_capacity")
    return Sam2StateCodec(memory_capacity)


class PartStore(StateStore):
    """Stores states as serialised parts (the codec's); subclasses provide the raw part
    I/O. ``memory_capacity`` alone means SAM 2 states."""

    def __init__(
        self,
        memory_capacity: int | None = None,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        codec: StateCodec | None = None,
    ) -> None:
        self.codec = codec_for(memory_capacity, codec)
        self.ttl_seconds = ttl_seconds
        self.part_names = self.codec.part_names

    def create(self, states: list[TrackedState]) -> list[StateRef]:
        if not states:
            return []
        entries = {new_token(): self.codec.encode(state) for state in states}
        self._insert(entries)
        return [StateRef(token, state.frame_index) for token, state in zip(entries, states)]

    def load(
        self, refs: list[StateRef], frame_digest: str | None = None
    ) -> list[TrackedState | Replay]:
        tokens = [ref.token for ref in refs]
        # Heads and answers first (a few KiB, and a short timeout in Redis's case): a lost
        # store, a missing state, a replay or a conflict is told without reading states.
        loaded: list[TrackedState | Replay | None] = []
        for ref, parts in zip(refs, self._read(tokens, (HEAD, ANSWER), probe=True)):
            loaded.append(self._moved_on(ref, parts, frame_digest))
        current = [i for i, item in enumerate(loaded) if item is None]
        whole = self._read([tokens[i] for i in current]) if current else []
        for i, parts in zip(current, whole):
            ref = refs[i]
            loaded[i] = self._moved_on(ref, parts, frame_digest)  # it may have moved since
            if loaded[i] is None:
                try:
                    loaded[i] = self.codec.decode(parts)
                except ForeignState as error:
                    raise StateFromAnotherModel(ref.token, error.model_id) from error
        return loaded  # type: ignore[return-value]

    @staticmethod
    def _moved_on(
        ref: StateRef, parts: dict[str, bytes | None], frame_digest: str | None
    ) -> Replay | None:
        """None when the stored state is at the ref's frame; the stored answer when the call
        repeats the one that moved it on (same state, same frame bytes); raises otherwise."""
        head = parts.get(HEAD)
        if head is None:
            raise StateNotFound(ref.token)
        stored_index = stored_frame_index(head)
        if stored_index == ref.frame_index:
            return None
        answer = decode_answer(parts.get(ANSWER))
        if (
            frame_digest is None
            or answer is None
            or answer.frame_index != stored_index
            or answer.previous_frame_index != ref.frame_index
            or answer.frame_digest != frame_digest
        ):
            raise StateConflict(ref.token)
        return Replay(StateRef(ref.token, stored_index), answer.shape)

    def check(self, refs: list[StateRef]) -> None:
        # Reads only the heads (a few KiB), not the memories.
        for ref, head in zip(refs, self._read_heads([ref.token for ref in refs])):
            self._check_expected(ref.token, head, ref.frame_index)

    def commit(
        self,
        refs: list[StateRef],
        new_states: list[TrackedState],
        answers: list[Answer] | None = None,
    ) -> list[StateRef]:
        if not refs:
            return []
        answers = answers or [None] * len(refs)
        writes = {
            ref.token: self.codec.changed(state, answer)
            for ref, state, answer in zip(refs, new_states, answers, strict=True)
        }
        expected = {ref.token: ref.frame_index for ref in refs}
        self._compare_and_write(expected, writes)
        return [StateRef(ref.token, state.frame_index) for ref, state in zip(refs, new_states)]

    @abstractmethod
    def _insert(self, entries: dict[str, dict[str, bytes]]) -> None: ...

    @abstractmethod
    def _read(
        self, tokens: list[str], parts: tuple[str, ...] | None = None, probe: bool = False
    ) -> list[dict[str, bytes | None]]:
        """The stored ``parts`` (default: all) of each token, read atomically; ``probe``:
        a small read before any model work (Redis: the client with short timeouts)."""

    def _read_heads(self, tokens: list[str]) -> list[bytes | None]:
        return [parts.get(HEAD) for parts in self._read(tokens, (HEAD,), probe=True)]

    @abstractmethod
    def _compare_and_write(
        self, expected: dict[str, int], writes: dict[str, dict[str, bytes]]
    ) -> None:
        """Write ``writes`` if every token's stored frame index equals ``expected``;
        refresh the TTL of all parts of those tokens."""

    def _check_expected(self, token: str, head: bytes | None, frame_index: int) -> None:
        if head is None:
            raise StateNotFound(token)
        if stored_frame_index(head) != frame_index:
            raise StateConflict(token)


class InMemoryStateStore(PartStore):
    """States in this process only (local use and tests); same semantics as Redis."""

    def __init__(
        self,
        memory_capacity: int | None = None,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        codec: StateCodec | None = None,
    ) -> None:
        super().__init__(memory_capacity, ttl_seconds, codec)
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, dict[str, bytes]]] = {}

    def _live(self, token: str) -> dict[str, bytes] | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        expires_at, parts = entry
        if expires_at < time.monotonic():
            del self._entries[token]
            return None
        return parts

    def ping(self) -> None:
        pass  # always there

    def _insert(self, entries: dict[str, dict[str, bytes]]) -> None:
        with self._lock:
            for token, parts in entries.items():
                self._entries[token] = (time.monotonic() + self.ttl_seconds, dict(parts))

    def _read(
        self, tokens: list[str], parts: tuple[str, ...] | None = None, probe: bool = False
    ) -> list[dict[str, bytes | None]]:
        names = parts or tuple(self.part_names)
        with self._lock:
            return [
                {name: (self._live(token) or {}).get(name) for name in names} for token in tokens
            ]

    def _compare_and_write(
        self, expected: dict[str, int], writes: dict[str, dict[str, bytes]]
    ) -> None:
        with self._lock:
            for token, frame_index in expected.items():
                self._check_expected(token, (self._live(token) or {}).get(HEAD), frame_index)
            for token, parts in writes.items():
                stored = self._entries[token][1]
                stored.update(parts)
                self._entries[token] = (time.monotonic() + self.ttl_seconds, stored)


class RedisStateStore(PartStore):
    """States in Redis or Kvrocks, one key per object part, using only common commands
    (SET EX, MGET, EXPIRE, WATCH/MULTI/EXEC, PING).

    ``probe`` is a client of the same server with short timeouts, for what runs before any
    model work (PING, the heads): an unreachable or silent store is then told in under a
    second, while whole states are read and written through ``client``, whose timeouts
    allow for large transfers.
    """

    def __init__(
        self,
        client: redis.Redis,
        memory_capacity: int | None = None,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        key_prefix: str = KEY_PREFIX,
        codec: StateCodec | None = None,
        probe: redis.Redis | None = None,
    ) -> None:
        super().__init__(memory_capacity, ttl_seconds, codec)
        self.client = client
        self.probe = probe or client
        self.key_prefix = key_prefix

    def key(self, token: str, part: str) -> str:
        return f"{self.key_prefix}{token}:{part}"

    def _run(self, operation):
        try:
            return operation()
        except (StateError, StateFormatError, redis.WatchError):
            raise
        except (redis.RedisError, OSError, ValueError, AttributeError, TypeError) as error:
            # redis-py's own errors, and what it raises on replies it cannot parse (a server
            # that speaks another protocol): the store failed, nothing was changed.
            message = f"state store failed: {type(error).__name__}: {error}"
            raise StoreUnavailable(message) from error

    def ping(self) -> None:
        self._run(self.probe.ping)

    def _insert(self, entries: dict[str, dict[str, bytes]]) -> None:
        def operation():
            with self.client.pipeline(transaction=True) as pipe:
                for token, parts in entries.items():
                    for part, blob in parts.items():
                        pipe.set(self.key(token, part), blob, ex=self.ttl_seconds)
                pipe.execute()

        self._run(operation)

    def _read(
        self, tokens: list[str], parts: tuple[str, ...] | None = None, probe: bool = False
    ) -> list[dict[str, bytes | None]]:
        names = parts or tuple(self.part_names)
        keys = [self.key(token, part) for token in tokens for part in names]
        if not keys:
            return []
        client = self.probe if probe else self.client
        values = self._run(lambda: client.mget(keys))
        per_token = len(names)
        return [
            dict(zip(names, values[i * per_token : (i + 1) * per_token]))
            for i in range(len(tokens))
        ]

    def _compare_and_write(
        self, expected: dict[str, int], writes: dict[str, dict[str, bytes]]
    ) -> None:
        head_keys = [self.key(token, HEAD) for token in expected]

        def operation():
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(*head_keys)
                heads = pipe.mget(head_keys)
                for (token, frame_index), head in zip(expected.items(), heads):
                    self._check_expected(token, head, frame_index)
                pipe.multi()
                for token, parts in writes.items():
                    for part in self.part_names:
                        key = self.key(token, part)
                        if part in parts:
                            pipe.set(key, parts[part], ex=self.ttl_seconds)
                        else:
                            pipe.expire(key, self.ttl_seconds)
                pipe.execute()

        for _ in range(COMMIT_ATTEMPTS):
            try:
                self._run(operation)
                return
            except redis.WatchError:
                # redis-py raises WatchError both when a watched head changed and when the
                # connection dropped while watching (EXEC unsent, or sent and its reply
                # lost): the heads as they are now tell which.
                heads = self._run(lambda: self.client.mget(head_keys))
                if all(head == writes[token].get(HEAD) for token, head in zip(expected, heads)):
                    return  # our EXEC ran; only its reply was lost
                for (token, frame_index), head in zip(expected.items(), heads):
                    self._check_expected(token, head, frame_index)  # moved: a real conflict
                # Nothing changed: the connection dropped before EXEC ran. Try again.
        raise StoreUnavailable(
            f"state store dropped the connection during {COMMIT_ATTEMPTS} commits in a row"
        )
