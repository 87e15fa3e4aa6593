"""The state store named by CVAT's environment variables."""

from __future__ import annotations

import redis

from tracker_state.cache import DEFAULT_CACHED_OBJECTS, CachedStateStore
from tracker_state.stores import InMemoryStateStore, RedisStateStore, StateStore


def store_from_env(env: dict[str, str], memory_capacity: int) -> tuple[StateStore, str]:
    """The store named by CVAT's variables, and a line saying which one it is.

    ``CVAT_FUNCTIONS_REDIS_HOST`` (unset: in-memory store), ``CVAT_FUNCTIONS_REDIS_PORT``
    (default 6379), ``CVAT_FUNCTIONS_REDIS_PASSWORD`` (optional).
    """
    host = env.get("CVAT_FUNCTIONS_REDIS_HOST", "").strip()
    if not host:
        return (
            InMemoryStateStore(memory_capacity),
            "state store: in memory (CVAT_FUNCTIONS_REDIS_HOST is not set); states are lost "
            "on restart and not shared between workers",
        )
    port = int(env.get("CVAT_FUNCTIONS_REDIS_PORT", "6379") or 6379)
    client = redis.Redis(
        host=host,
        port=port,
        password=env.get("CVAT_FUNCTIONS_REDIS_PASSWORD") or None,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    store: StateStore = RedisStateStore(client, memory_capacity)
    cached = int(env.get("SAM2_STATE_CACHE_OBJECTS") or DEFAULT_CACHED_OBJECTS)
    if cached > 0:
        store = CachedStateStore(store, cached)
    return store, f"state store: redis at {host}:{port} (worker cache: {cached} objects)"
