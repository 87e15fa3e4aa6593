"""State stores: in memory, the machine's Redis, and a redis-server of the test's own."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import torch
from test_state import MEMORY_SHAPE, assert_same_state, random_state
from tracker_state import (
    Answer,
    CachedStateStore,
    InMemoryStateStore,
    RedisStateStore,
    Replay,
    StateConflict,
    StateNotFound,
    StateRef,
    StoreUnavailable,
)
from tracker_state.stores import new_token


def advance(state):
    return state.advanced(
        torch.full(MEMORY_SHAPE, float(state.frame_index + 1), dtype=torch.bfloat16),
        torch.full((256,), float(state.frame_index + 1)),
    )


@pytest.fixture(params=["memory", "redis", "cached-redis"])
def store(request, shared_redis):
    if request.param == "memory":
        yield InMemoryStateStore(memory_capacity=6)
        return
    prefix = f"sam2cvat-test:{uuid.uuid4().hex}:"
    redis_store = RedisStateStore(shared_redis, memory_capacity=6, key_prefix=prefix)
    yield CachedStateStore(redis_store) if request.param == "cached-redis" else redis_store
    keys = list(shared_redis.scan_iter(match=f"{prefix}*"))
    if keys:
        shared_redis.delete(*keys)


def test_create_load_commit_round_trip(store):
    state = random_state(0)
    [ref] = store.create([state])
    assert ref.frame_index == 0 and len(ref.token) == 43
    assert_same_state(store.load([ref])[0], state)
    for _ in range(9):
        nxt = advance(state)
        [ref] = store.commit([ref], [nxt])
        state = nxt
        assert_same_state(store.load([ref])[0], state)
    assert ref.frame_index == 9


def test_empty_calls_do_nothing(store):
    assert store.create([]) == [] and store.commit([], []) == [] and store.load([]) == []


def test_unknown_token_is_not_found(store):
    with pytest.raises(StateNotFound):
        store.load([StateRef(new_token(), 0)])
    with pytest.raises(StateNotFound):
        store.commit([StateRef(new_token(), 0)], [advance(random_state(0))])


def test_a_state_is_advanced_once_per_frame(store):
    state = random_state(3)
    [ref] = store.create([state])
    store.commit([ref], [advance(state)])
    with pytest.raises(StateConflict):  # the same reference again: a replay
        store.commit([ref], [advance(state)])
    with pytest.raises(StateConflict):  # loading with the old frame index
        store.load([ref])
    assert store.load([StateRef(ref.token, 4)])[0].frame_index == 4


def test_failed_commit_changes_no_state(store):
    a, b = random_state(2, seed=1), random_state(5, seed=2)
    ref_a, ref_b = store.create([a, b])
    stale_b = StateRef(ref_b.token, 4)
    with pytest.raises(StateConflict):
        store.commit([ref_a, stale_b], [advance(a), advance(b)])
    assert_same_state(store.load([ref_a])[0], a)
    assert_same_state(store.load([ref_b])[0], b)


def test_concurrent_commits_advance_once(store):
    state = random_state(6)
    [ref] = store.create([state])
    outcomes = []
    barrier = threading.Barrier(8)

    def attempt(value):
        nxt = state.advanced(
            torch.full(MEMORY_SHAPE, value, dtype=torch.bfloat16), torch.full((256,), value)
        )
        barrier.wait()
        try:
            store.commit([ref], [nxt])
            outcomes.append(value)
        except StateConflict:
            outcomes.append(None)

    threads = [threading.Thread(target=attempt, args=(float(v),)) for v in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [v for v in outcomes if v is not None]
    assert len(winners) == 1 and len(outcomes) == 8
    stored = store.load([StateRef(ref.token, 7)])[0]
    assert torch.all(stored.memories[7].float() == winners[0])


def test_states_expire_and_ttl_is_refreshed_on_use(shared_redis):
    prefix = f"sam2cvat-test:{uuid.uuid4().hex}:"
    store = RedisStateStore(shared_redis, memory_capacity=6, ttl_seconds=100, key_prefix=prefix)
    state = random_state(2)
    [ref] = store.create([state])
    keys = list(shared_redis.scan_iter(match=f"{prefix}*"))
    assert len(keys) == 4  # head, prompt, two memories
    for key in keys:
        assert 90 <= shared_redis.ttl(key) <= 100
        shared_redis.expire(key, 5)
    store.commit([ref], [advance(state)], [Answer(3, "digest", None)])
    keys = list(shared_redis.scan_iter(match=f"{prefix}*"))
    assert len(keys) == 6  # and the third memory and the answer
    assert all(90 <= shared_redis.ttl(key) <= 100 for key in keys)
    shared_redis.delete(*keys)

    short = RedisStateStore(shared_redis, memory_capacity=6, ttl_seconds=1, key_prefix=prefix)
    [ref] = short.create([state])
    time.sleep(2.1)
    with pytest.raises(StateNotFound):
        short.load([ref])


def test_default_ttl_is_eight_hours(store):
    assert store.ttl_seconds == 8 * 3600


def test_in_memory_states_expire():
    store = InMemoryStateStore(memory_capacity=6, ttl_seconds=0.2)
    [ref] = store.create([random_state(1)])
    store.load([ref])
    time.sleep(0.3)
    with pytest.raises(StateNotFound):
        store.load([ref])


def test_redis_going_away_and_coming_back(own_redis):
    store = RedisStateStore(own_redis.client(), memory_capacity=6)
    state = random_state(4)
    [ref] = store.create([state])
    own_redis.stop()
    with pytest.raises(StoreUnavailable):
        store.load([ref])
    with pytest.raises(StoreUnavailable):
        store.commit([ref], [advance(state)])
    own_redis.start()
    # Same client object: it reconnects by itself; the on-disk server kept the state.
    assert_same_state(store.load([ref])[0], state)
    store.commit([ref], [advance(state)])


def test_redis_bytes_stop_growing(own_redis):
    client = own_redis.client()
    store = RedisStateStore(client, memory_capacity=6)
    state = random_state(0)
    [ref] = store.create([state])

    def stored_bytes():
        return sum(client.strlen(key) for key in client.scan_iter()), client.dbsize()

    sizes = {}
    for _ in range(16):
        nxt = advance(state)
        # The stored answer of a rectangle: the same size on every frame.
        answer = Answer(nxt.frame_index, "f" * 64, {"type": "rectangle", "points": [1.5] * 4})
        [ref] = store.commit([ref], [nxt], [answer])
        state = nxt
        sizes[state.frame_index] = stored_bytes()
    # From frame 10 on (frame numbers in the answer take two digits) nothing grows.
    assert sizes[10] == sizes[12] == sizes[16]
    assert sizes[10][1] == 9  # head, prompt, six memories and the last answer


def test_worker_caches_share_redis_as_the_truth(shared_redis):
    """Two workers, each with its own cache, continuing the same object in turns."""
    prefix = f"sam2cvat-test:{uuid.uuid4().hex}:"
    shared = RedisStateStore(shared_redis, memory_capacity=6, key_prefix=prefix)
    worker_a, worker_b = CachedStateStore(shared), CachedStateStore(shared)
    state = random_state(0)
    [ref] = worker_a.create([state])
    for turn in range(6):
        worker = (worker_a, worker_b)[turn % 2]
        loaded = worker.load([ref])[0]
        assert_same_state(loaded, state)
        state = advance(loaded)
        [ref] = worker.commit([ref], [state])
    # A created the state (a hit on turn 0); every later turn follows the other worker.
    assert (worker_a.hits, worker_a.misses, worker_b.hits, worker_b.misses) == (1, 2, 0, 3)

    # Worker A still caches frame 6; B advances to 7; a stale call reaching A is refused
    # when it loads (A's cache is checked against Redis), before any model work ...
    worker_a.load([ref])
    [newer] = worker_b.commit([ref], [advance(worker_b.load([ref])[0])])
    with pytest.raises(StateConflict):
        worker_a.load([ref])
    # ... and a commit racing past a load is still refused by the compare-and-set.
    with pytest.raises(StateConflict):
        worker_b.commit([ref], [advance(state)])
    assert worker_a.load([newer])[0].frame_index == 7
    assert worker_a.hits >= 1
    keys = list(shared_redis.scan_iter(match=f"{prefix}*"))
    shared_redis.delete(*keys)


def test_a_replayed_call_gets_its_answer_and_nothing_else_does(store):
    """The call that advanced a state, repeated with the same frame, gets its answer back;
    another frame, a state two frames on, or a caller without a frame digest get 409."""
    state = random_state(3)
    [ref] = store.create([state])
    shape = {"type": "mask", "points": [0, 4, 10, 20, 11, 21]}
    [newer] = store.commit([ref], [advance(state)], [Answer(4, "frame-a", shape)])
    [replay] = store.load([ref], "frame-a")
    assert replay == Replay(newer, shape)
    assert store.load([ref], "frame-a") == [replay]  # as often as it is asked
    for digest in ("frame-b", None):
        with pytest.raises(StateConflict):
            store.load([ref], digest)
    # The newer state itself still loads as a state, and advances normally.
    assert store.load([newer], "frame-b")[0].frame_index == 4
    [newest] = store.commit([newer], [advance(advance(state))], [Answer(5, "frame-b", None)])
    with pytest.raises(StateConflict):  # two frames behind: no replay
        store.load([ref], "frame-a")
    assert store.load([newer], "frame-b") == [Replay(newest, None)]


def test_check_reads_the_store_even_when_cached(shared_redis):
    """A cached state is confirmed against Redis before use: deleted -> not found,
    advanced elsewhere -> conflict."""
    prefix = f"sam2cvat-test:{uuid.uuid4().hex}:"
    shared = RedisStateStore(shared_redis, memory_capacity=6, key_prefix=prefix)
    worker = CachedStateStore(shared)
    state = random_state(2)
    [ref] = worker.create([state])
    worker.check([ref])
    assert worker.load([ref])[0] is not None and worker.hits == 1
    shared.commit([ref], [advance(state)])
    with pytest.raises(StateConflict):
        worker.load([ref])
    shared_redis.delete(*shared_redis.scan_iter(match=f"{prefix}*"))
    with pytest.raises(StateNotFound):
        worker.load([StateRef(ref.token, 3)])


def test_cached_state_with_redis_down_is_unavailable(own_redis):
    worker = CachedStateStore(RedisStateStore(own_redis.client(), memory_capacity=6))
    [ref] = worker.create([random_state(1)])
    own_redis.stop()
    with pytest.raises(StoreUnavailable):
        worker.load([ref])
    own_redis.start()
    assert worker.load([ref])[0].frame_index == 1
