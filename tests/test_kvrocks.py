"""The function against a store as CVAT's default install runs it: Kvrocks
(``cvat_redis_ondisk``) speaking RESP2, with and without a password, through
``tests/kvrocks_standin.py`` (Kvrocks's handshake, a real redis-server behind it; Kvrocks
itself is not packaged for CI). And a store that is unreachable or misbehaves: a 503
within a second and before any model work, never a 500 and never a 409 for a commit whose
connection dropped."""

from __future__ import annotations

import base64
import time

import pytest
import redis
import torch
from conftest import (
    SMALL_IMAGE_SIZE,
    counted_encoder,
    davis_sequence,
    frame_folder,
    frame_paths,
    free_port,
    ground_truth,
    official_logits,
)
from cvat_sdk.masks import decode_mask, encode_mask
from kvrocks_standin import KvrocksStandIn
from model_handler import ModelHandler
from test_equivalence import extra_masks
from test_state import random_state
from test_stores import advance
from tracker_state import CachedStateStore, InMemoryStateStore, StateConflict, StoreUnavailable
from tracker_state.config import redis_store, store_from_env
from tracking.engine import MaskPrompt
from tracking.model_loading import ModelSettings, build_tracker
from tracking.protocol import RequestError

SEQUENCE = "dog"
NUM_FRAMES = 5
PASSWORD = "s3cret"


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(params=[None, PASSWORD], ids=["no password", "password"])
def kvrocks(request, own_redis):
    standin = KvrocksStandIn(own_redis.port, request.param)
    yield standin
    standin.stop()


def test_the_standin_shows_what_redis_py_defaults_do_against_kvrocks(own_redis):
    """The reported failures, reproduced: redis-py 8's default RESP3 handshake breaks on
    Kvrocks's RESP2 reply (no password), and with a password its RESP3 parser waits on a
    RESP2 nil until the socket times out. The function's own client works with both."""
    open_standin = KvrocksStandIn(own_redis.port)
    locked_standin = KvrocksStandIn(own_redis.port, PASSWORD)
    try:
        with pytest.raises(AttributeError, match="'list' object has no attribute 'get'"):
            redis.Redis(port=open_standin.port).get("missing")
        default = redis.Redis(port=locked_standin.port, password=PASSWORD, socket_timeout=0.5)
        with pytest.raises(redis.TimeoutError):
            default.get("missing")
        for standin, password in ((open_standin, None), (locked_standin, PASSWORD)):
            store = redis_store("127.0.0.1", standin.port, password, codec=None, memory_capacity=6)
            [ref] = store.create([random_state(0)])
            assert store.load([ref])[0].frame_index == 0
    finally:
        open_standin.stop()
        locked_standin.stop()


@pytest.fixture(scope="module")
def official_masks(small_model, tmp_path_factory):
    """The official predictor's masks of 3 objects over NUM_FRAMES frames (it sees 16)."""
    sequence = davis_sequence(SEQUENCE)
    gt = ground_truth(sequence)
    prompts = [MaskPrompt(torch.from_numpy(m)) for m in (gt, *extra_masks(gt))]
    folder = frame_folder(sequence, 16, tmp_path_factory.mktemp("frames"))
    logits = official_logits(small_model, folder, prompts, NUM_FRAMES)
    return [(frame[:, 0] > 0).numpy() for frame in logits]


def test_a_default_cvat_install_tracks_three_objects_as_the_official_predictor(
    kvrocks, present_checkpoint, function_server_factory, official_masks
):
    """serve.py configured as CVAT's compose file configures the function (Kvrocks's host
    and port, a password or none) tracks 3 objects over 5 frames, over HTTP, with the
    official predictor's masks; it speaks RESP2 only and says at startup that the store
    answered."""
    sequence = davis_sequence(SEQUENCE)
    paths = frame_paths(sequence)
    gt = ground_truth(sequence)
    height, width = gt.shape
    env = {"CVAT_FUNCTIONS_REDIS_PASSWORD": kvrocks.password} if kvrocks.password else {}
    server = function_server_factory(
        present_checkpoint,
        image_size=SMALL_IMAGE_SIZE,
        redis_port=kvrocks.port,
        extra_env=env,
    )
    shapes = [{"type": "mask", "points": encode_mask(m)} for m in (gt, *extra_masks(gt))]
    status, answer = server.post({"image": b64(paths[0]), "shapes": shapes, "states": []})
    answers = [answer]
    for path in paths[1:NUM_FRAMES]:
        assert status == 200, answer
        body = {"image": b64(path), "shapes": [None] * 3, "states": answer["states"]}
        status, answer = server.post(body)
        answers.append(answer)
    assert status == 200, answer

    for index, (answer, reference) in enumerate(zip(answers, official_masks, strict=True)):
        for obj, (shape, theirs) in enumerate(zip(answer["shapes"], reference, strict=True)):
            assert 0.01 < theirs.mean() < 0.99, f"frame {index}: reference is trivial"
            ours = decode_mask(shape["points"], image_width=width, image_height=height)
            agreement = (ours == theirs).mean()
            assert agreement >= 0.99999, f"frame {index}, object {obj}: {agreement:.6%}"

    log = server.log.read_text()
    assert f"redis at 127.0.0.1:{kvrocks.port}" in log and "RESP2" in log
    assert "answered PING in" in log
    names = {command[0].upper() for command in kvrocks.commands}
    assert b"HELLO" not in names  # RESP2 from the first byte
    assert (b"AUTH" in names) == (kvrocks.password is not None)


@pytest.fixture
def counted_tracker(small_model):
    """The SAM 2 tracker at 512 with its image encoder runs counted."""
    tracker = build_tracker(small_model, ModelSettings(device="cpu"))
    return tracker, counted_encoder(tracker)


def first_frames(count: int) -> tuple[list[str], dict]:
    """The sequence's first ``count`` frames (base64) and a call starting its object."""
    sequence = davis_sequence(SEQUENCE)
    frames = [b64(p) for p in frame_paths(sequence)[:count]]
    shape = {"type": "mask", "points": encode_mask(ground_truth(sequence))}
    return frames, {"image": frames[0], "shapes": [shape], "states": []}


def handler_on(tracker, port: int, password: str | None = None) -> ModelHandler:
    """A worker with the function's own Redis clients and cache."""
    store = redis_store("127.0.0.1", port, password, tracker.codec)
    return ModelHandler(tracker, CachedStateStore(store))


FAULTS = ["black hole", "not redis", "wrong password", "no password", "nothing listening"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_store_that_fails_is_a_503_within_a_second_before_any_model_work(
    own_redis, counted_tracker, fault
):
    tracker, runs = counted_tracker
    frames, start = first_frames(2)
    standin = KvrocksStandIn(own_redis.port, PASSWORD)
    try:
        states = handler_on(tracker, standin.port, PASSWORD).infer(start)["states"]
        password = {"wrong password": "wrong", "no password": None}.get(fault, PASSWORD)
        port = free_port() if fault == "nothing listening" else standin.port
        worker = handler_on(tracker, port, password)
        standin.black_hole = fault == "black hole"
        standin.garbage = fault == "not redis"
        continued = {"image": frames[1], "shapes": [None], "states": states}
        for body in (start, continued):
            before = runs["encode_frame"]
            began = time.perf_counter()
            with pytest.raises(RequestError) as raised:
                worker.infer(body)
            elapsed = time.perf_counter() - began
            assert raised.value.status == 503, raised.value.message
            assert "state store" in raised.value.message
            assert runs["encode_frame"] == before, "the model ran before the store was asked"
            assert elapsed < 1.0, f"{fault}: the 503 took {elapsed:.2f} s"
        standin.black_hole = standin.garbage = False
        # Once the store is back the same worker goes on from the stored state.
        if fault not in ("wrong password", "no password", "nothing listening"):
            assert worker.infer(continued)["states"][0]["frame"] == 1
    finally:
        standin.stop()


def test_a_startup_line_says_whether_the_store_answered(kvrocks):
    env = {
        "CVAT_FUNCTIONS_REDIS_HOST": "127.0.0.1",
        "CVAT_FUNCTIONS_REDIS_PORT": str(kvrocks.port),
        "CVAT_FUNCTIONS_REDIS_PASSWORD": kvrocks.password or "",
    }
    _, line = store_from_env(env, 6, check=True)
    assert "answered PING in" in line
    _, line = store_from_env({**env, "CVAT_FUNCTIONS_REDIS_PORT": str(free_port())}, 6, True)
    assert "NOT answering at startup" in line and "calls get 503" in line
    assert PASSWORD not in line


def test_a_commit_whose_connection_drops_is_redone_or_a_503_never_a_409(own_redis):
    """redis-py raises WatchError when the connection drops between WATCH and EXEC, as when
    a watched head changed. A drop before EXEC ran is redone once, a lost EXEC reply is
    success, two drops in a row are a 503 with the state unchanged; a head that really
    moved stays a conflict."""
    standin = KvrocksStandIn(own_redis.port)
    try:
        store = redis_store("127.0.0.1", standin.port, None, codec=None, memory_capacity=6)
        state = random_state(0)
        [ref] = store.create([state])
        for fault in ("drop_before_exec", "drop_after_exec"):
            setattr(standin, fault, 1)
            state = advance(state)
            [ref] = store.commit([ref], [state])
            assert getattr(standin, fault) == 0, "the fault did not happen"
            assert store.load([ref])[0].frame_index == state.frame_index
        standin.drop_before_exec = 2
        with pytest.raises(StoreUnavailable):
            store.commit([ref], [advance(state)])
        assert store.load([ref])[0].frame_index == state.frame_index  # unchanged
        [moved] = store.commit([ref], [advance(state)])
        with pytest.raises(StateConflict):
            store.commit([ref], [advance(state)])  # the old ref: a real conflict
        assert moved.frame_index == state.frame_index + 1
    finally:
        standin.stop()


def test_a_call_whose_commit_drops_answers_as_an_undisturbed_one(own_redis, counted_tracker):
    """Over the handler: a dropped commit (twice) is a 503, never a 409, and the retry
    answers what an undisturbed worker answers; a lost EXEC reply is answered at once."""
    tracker, _ = counted_tracker
    frames, start = first_frames(4)
    undisturbed = ModelHandler(tracker, InMemoryStateStore(codec=tracker.codec))
    standin = KvrocksStandIn(own_redis.port)
    try:
        worker = handler_on(tracker, standin.port)
        states, reference_states = worker.infer(start)["states"], undisturbed.infer(start)["states"]
        for frame, fault, drops in ((1, "drop_before_exec", 2), (2, "drop_after_exec", 1)):
            body = {"image": frames[frame], "shapes": [None], "states": states}
            expected = undisturbed.infer(
                {"image": frames[frame], "shapes": [None], "states": reference_states}
            )
            reference_states = expected["states"]
            setattr(standin, fault, drops)
            if fault == "drop_before_exec":
                with pytest.raises(RequestError) as raised:
                    worker.infer(body)
                assert raised.value.status == 503, raised.value.message
            answer = worker.infer(body)
            assert getattr(standin, fault) == 0
            assert answer["shapes"] == expected["shapes"]
            assert [s["frame"] for s in answer["states"]] == [frame]
            states = answer["states"]
    finally:
        standin.stop()
