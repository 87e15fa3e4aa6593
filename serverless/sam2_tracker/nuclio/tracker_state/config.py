"""The state store named by CVAT's environment variables."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tracker_state.cache import DEFAULT_CACHED_OBJECTS, CachedStateStore
from tracker_state.codec import Sam2StateCodec, StateCodec
from tracker_state.stores import InMemoryStateStore, RedisStateStore, StateStore

# CVAT's deploy scripts name the tracker's Redis with CVAT_FUNCTIONS_REDIS_* (current
# releases) or CVAT_REDIS_* (earlier ones); when both are set the newer names win.
REDIS_VARIABLE_PREFIXES = ("CVAT_FUNCTIONS_REDIS_", "CVAT_REDIS_")


def redis_setting(env: dict[str, str], name: str) -> tuple[str, str] | None:
    """(variable, value) of the first non-empty ``<prefix><name>``, newest names first."""
    for prefix in REDIS_VARIABLE_PREFIXES:
        value = (env.get(prefix + name) or "").strip()
        if value:
            return prefix + name, value
    return None


def redis_client(host: str, port: int, password: str | None = None) -> redis.Redis:
    """A client that gives up quickly: one immediate retry (a pooled connection that
    went stale when Redis restarted), not redis-py's default of ten with growing pauses,
    so an unreachable store is a 503 within milliseconds, not seconds."""
    return redis.Redis(
        host=host,
        port=port,
        password=password,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(NoBackoff(), retries=1),
    )


def store_from_env(env: dict[str, str], codec: StateCodec | int) -> tuple[StateStore, str]:
    """The store named by CVAT's variables for states in ``codec``'s layout (an int: SAM 2
    states with that many recent memories), and a line saying which one it is (never the
    password).

    ``CVAT_FUNCTIONS_REDIS_HOST`` or ``CVAT_REDIS_HOST`` (unset: in-memory store), ``..._PORT``
    (default 6379), ``..._PASSWORD`` (optional).
    """
    if isinstance(codec, int):
        codec = Sam2StateCodec(codec)
    host = redis_setting(env, "HOST")
    if host is None:
        return (
            InMemoryStateStore(codec=codec),
            "state store: in memory (neither CVAT_FUNCTIONS_REDIS_HOST nor CVAT_REDIS_HOST is "
            "set): states are lost on restart and not shared between workers",
        )
    host_variable, host_name = host
    port = int((redis_setting(env, "PORT") or ("", "6379"))[1])
    password = redis_setting(env, "PASSWORD")
    client = redis_client(host_name, port, password[1] if password else None)
    store: StateStore = RedisStateStore(client, codec=codec)
    cached = int(env.get("SAM2_STATE_CACHE_OBJECTS") or DEFAULT_CACHED_OBJECTS)
    if cached > 0:
        store = CachedStateStore(store, cached)
    return store, (
        f"state store: redis at {host_name}:{port} (from {host_variable}"
        f"{', with password' if password else ''}; worker cache: {cached} objects)"
    )
