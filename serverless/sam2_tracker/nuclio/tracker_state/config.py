"""The state store named by CVAT's environment variables."""

from __future__ import annotations

import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tracker_state.cache import DEFAULT_CACHED_OBJECTS, CachedStateStore
from tracker_state.codec import Sam2StateCodec, StateCodec
from tracker_state.stores import (
    InMemoryStateStore,
    RedisStateStore,
    StateStore,
    StoreUnavailable,
)

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


# Seconds. Whole states (MiBs) go through the main client; the probe client carries what
# runs before any model work (PING, the heads), so a lost store is a 503 within a second:
# two tries of PROBE_TIMEOUT each.
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
PROBE_TIMEOUT = 0.3


def redis_client(
    host: str,
    port: int,
    password: str | None = None,
    timeout: float = SOCKET_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> redis.Redis:
    """A client for Redis or Kvrocks as CVAT runs them.

    RESP2: redis-py 8 opens connections with ``HELLO 3`` (RESP3) by default; Kvrocks, CVAT's
    ``cvat_redis_ondisk``, answers that with a RESP2 reply and stays RESP2 (RESP3 is off
    unless ``resp3-enabled yes``), which redis-py cannot parse. RESP2 is what every Redis
    and Kvrocks speaks; a password then goes as ``AUTH <password>``.

    It gives up quickly: one immediate retry (a pooled connection that went stale when
    Redis restarted), not redis-py's default of ten with growing pauses."""
    return redis.Redis(
        host=host,
        port=port,
        password=password,
        protocol=2,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=30,
        retry=Retry(NoBackoff(), retries=1),
    )


def redis_store(
    host: str, port: int, password: str | None, codec: StateCodec, **options
) -> RedisStateStore:
    """A Redis store with its two clients (bulk transfers, and the quick probe)."""
    return RedisStateStore(
        redis_client(host, port, password),
        codec=codec,
        probe=redis_client(host, port, password, PROBE_TIMEOUT, PROBE_TIMEOUT),
        **options,
    )


def store_from_env(
    env: dict[str, str], codec: StateCodec | int, check: bool = False
) -> tuple[StateStore, str]:
    """The store named by CVAT's variables for states in ``codec``'s layout (an int: SAM 2
    states with that many recent memories), and a line saying which one it is (never the
    password). With ``check``, a Redis store is sent one PING and the line says whether it
    answered; one that does not leaves the worker up (calls get 503 until it answers).

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
    store: StateStore = redis_store(host_name, port, password[1] if password else None, codec)
    cached = int(env.get("SAM2_STATE_CACHE_OBJECTS") or DEFAULT_CACHED_OBJECTS)
    if cached > 0:
        store = CachedStateStore(store, cached)
    description = (
        f"state store: redis at {host_name}:{port} (from {host_variable}"
        f"{', with password' if password else ''}; RESP2; worker cache: {cached} objects)"
    )
    return store, f"{description}, {ping_result(store)}" if check else description


def ping_result(store: StateStore) -> str:
    """One PING, in words."""
    start = time.perf_counter()
    try:
        store.ping()
    except StoreUnavailable as error:
        return f"NOT answering at startup ({error}): calls get 503 until it answers"
    return f"answered PING in {(time.perf_counter() - start) * 1000:.1f} ms"
