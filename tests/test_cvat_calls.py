"""Calls as real CVAT makes them: its rectangle panel's call sequence, replayed calls
(timeouts, a worker killed after its commit, the user running a step again), and
answers that must come before any model work (404, 409, 503).

CVAT itself cannot run here: ``RectanglePanel`` replays the calls of CVAT's AI Tools
tracking panel as docs/protocol.md and the shared notes on CVAT 2.73 describe them,
against the function served over HTTP (serve.py, a real socket) at 512 input.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (
    REPO,
    SMALL_IMAGE_SIZE,
    build_model,
    counted_encoder,
    davis_sequence,
    frame_paths,
    ground_truth,
    official_logits,
)
from cvat_sdk.masks import encode_mask
from model_handler import ModelHandler
from tracker_state import CachedStateStore, RedisStateStore
from tracker_state.config import redis_client
from tracking.engine import BoxPrompt
from tracking.model_loading import ModelSettings, build_tracker
from tracking.protocol import RequestError
from tracking.shapes import mask_to_box

# Any DAVIS sequence can stand in (e.g. one the tests never saw, for an acceptance run).
PANEL_SEQUENCE = os.environ.get("PANEL_SEQUENCE", "car-shadow")
SEQUENCE = "dog"


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@dataclass
class PanelObject:
    box: list[float]  # what the user sees on the current frame
    state: object = None
    answered: list[float] | None = None  # the box of the last answer


class RectanglePanel:
    """CVAT's AI Tools tracking panel (open-source CVAT's only tracker UI, rectangles only).

    Stepping from frame f-1 to f: every object without a state, or whose box the user
    moved since the last answer, is initialised with an init call carrying its box on
    frame f-1; then one track call on frame f for all objects. Each answered shape is
    read as ``shape["points"]`` with no check for null, as the panel does (a null would
    raise here, as it raises "Tracking error" there)."""

    def __init__(self, server, frames: list[str]) -> None:
        self.server = server
        self.frames = frames
        self.objects: list[PanelObject] = []
        self.calls: list[str] = []

    def step_to(self, frame: int) -> list[list[float]]:
        starting = [o for o in self.objects if o.state is None or o.box != o.answered]
        if starting:
            status, answer = self.server.post(
                {
                    "image": self.frames[frame - 1],
                    "shapes": [{"type": "rectangle", "points": o.box} for o in starting],
                    "states": [],
                }
            )
            assert status == 200, answer
            self.calls.append(f"init {frame - 1}")
            for obj, state in zip(starting, answer["states"], strict=True):
                obj.state = state
        status, answer = self.server.post(
            {
                "image": self.frames[frame],
                "shapes": [None] * len(self.objects),
                "states": [o.state for o in self.objects],
            }
        )
        assert status == 200, answer
        self.calls.append(f"track {frame}")
        for obj, shape, state in zip(self.objects, answer["shapes"], answer["states"], strict=True):
            obj.box = obj.answered = shape["points"]
            obj.state = state
        return [o.box for o in self.objects]


def official_boxes(model, sequence: Path, first: int, count: int, box, root: Path) -> list:
    """Masks of the official predictor's box-prompt track over frames first..first+count-1."""
    folder = root / f"{sequence.name}-from-{first}"
    folder.mkdir()
    for index, path in enumerate(frame_paths(sequence)[first : first + count]):
        shutil.copy(path, folder / f"{index:05d}.jpg")
    logits = official_logits(model, folder, [BoxPrompt(tuple(box))], count)
    return [(frame[0, 0] > 0).numpy() for frame in logits]


@pytest.fixture
def redis_server(present_checkpoint, own_redis, function_server_factory):
    return function_server_factory(
        present_checkpoint, image_size=SMALL_IMAGE_SIZE, redis_port=own_redis.port
    )


def test_rectangle_panel_sequence_matches_the_official_box_track(
    redis_server, small_model, tmp_path
):
    """Init on f-1 and track on f, four steps; then the user moves the box on frame 4 and
    the panel starts again from it. Every box equals the box of the official predictor's
    box-prompt track started at the same frame with the same box."""
    sequence = davis_sequence(PANEL_SEQUENCE)
    frames = [b64(p) for p in frame_paths(sequence)[:7]]
    first_box = mask_to_box(ground_truth(sequence))
    panel = RectanglePanel(redis_server, frames)
    panel.objects.append(PanelObject(first_box))
    answers = {frame: panel.step_to(frame)[0] for frame in range(1, 5)}
    moved = [answers[4][0] + 12.0, answers[4][1] + 6.0, answers[4][2] + 12.0, answers[4][3] + 6.0]
    panel.objects[0].box = moved
    answers |= {frame: panel.step_to(frame)[0] for frame in (5, 6)}
    assert panel.calls == [
        "init 0",
        *(f"track {f}" for f in range(1, 5)),
        "init 4",
        "track 5",
        "track 6",
    ]

    first = official_boxes(small_model, sequence, 0, 5, first_box, tmp_path)
    second = official_boxes(small_model, sequence, 4, 3, moved, tmp_path)
    expected = {f: first[f] for f in range(1, 5)} | {f: second[f - 4] for f in (5, 6)}
    for frame, mask in expected.items():
        assert 0.01 < mask.mean() < 0.99, f"frame {frame}: reference mask is trivial"
        assert answers[frame] == mask_to_box(mask), f"frame {frame}"


def test_rectangles_are_never_null_while_the_object_is_not_visible(
    absent_checkpoint, function_server_factory, tmp_path
):
    """With weights whose object score says "not visible", masks answer null but
    rectangles answer the last box where the object was seen (the user's box if never):
    the panel keeps working, and wherever the official track sees the object the box is
    its box."""
    server = function_server_factory(absent_checkpoint, image_size=SMALL_IMAGE_SIZE)
    sequence = davis_sequence(PANEL_SEQUENCE)
    frames = [b64(p) for p in frame_paths(sequence)[:4]]
    mask = ground_truth(sequence)
    user_box = mask_to_box(mask)
    panel = RectanglePanel(server, frames)
    panel.objects.append(PanelObject(user_box))
    answered = [panel.step_to(frame)[0] for frame in (1, 2, 3)]

    model, _ = build_model(absent_checkpoint, SMALL_IMAGE_SIZE)
    reference = official_boxes(model, sequence, 0, 4, user_box, tmp_path)
    assert not reference[1].any(), "these weights should hide the object after the prompt"
    last_seen = mask_to_box(reference[0]) if reference[0].any() else user_box
    for frame, box in zip((1, 2, 3), answered, strict=True):
        if reference[frame].any():
            last_seen = mask_to_box(reference[frame])
        assert box == last_seen, f"frame {frame}"

    # Old CVAT (bare arrays) likewise, and the same box; masks still say null.
    status, answer = server.post(
        {
            "image": frames[0],
            "shapes": [user_box, {"type": "mask", "points": encode_mask(mask)}],
            "states": [],
        }
    )
    assert status == 200
    status, answer = server.post(
        {"image": frames[1], "shapes": [None] * 2, "states": answer["states"]}
    )
    assert status == 200
    assert answer["shapes"] == [answered[0], None]


def test_a_replayed_call_gets_the_same_bytes_and_a_stale_one_409(redis_server):
    sequence = davis_sequence(SEQUENCE)
    frames = [b64(p) for p in frame_paths(sequence)[:3]]
    shape = {"type": "mask", "points": encode_mask(ground_truth(sequence))}
    status, answer = redis_server.post({"image": frames[0], "shapes": [shape], "states": []})
    assert status == 200
    state0 = json.loads(json.dumps(answer["states"]))

    def call(image, states):
        return redis_server.post_raw({"image": image, "shapes": [None], "states": states})

    status, first = call(frames[1], state0)
    assert status == 200 and json.loads(first)["shapes"][0] is not None
    log_before = redis_server.log.read_text()
    assert call(frames[1], state0) == (200, first)  # CVAT retrying, byte for byte
    assert "0 continued, 1 replayed" in redis_server.log.read_text()[len(log_before) :]
    status, stale = call(frames[2], state0)  # the old state on another frame
    assert status == 409 and "already advanced" in json.loads(stale)["error"]

    state1 = json.loads(first)["states"]
    status, second = call(frames[2], state1)
    assert status == 200
    assert call(frames[2], state1) == (200, second)
    assert call(frames[1], state0)[0] == 409  # two frames behind: no longer a replay


def test_a_worker_killed_after_its_commit_does_not_break_the_track(
    present_checkpoint, own_redis, function_server_factory
):
    """Worker A commits frame 1 and dies (SIGKILL) before answering; CVAT's retry reaches
    worker B, which answers from the store; the track goes on, equal to an uninterrupted
    track of the same object."""
    crashing = function_server_factory(
        present_checkpoint,
        image_size=SMALL_IMAGE_SIZE,
        redis_port=own_redis.port,
        script=REPO / "tests" / "crash_after_commit.py",
    )
    healthy = function_server_factory(
        present_checkpoint, image_size=SMALL_IMAGE_SIZE, redis_port=own_redis.port
    )
    sequence = davis_sequence(SEQUENCE)
    frames = [b64(p) for p in frame_paths(sequence)[:3]]
    shape = {"type": "mask", "points": encode_mask(ground_truth(sequence))}
    init = {"image": frames[0], "shapes": [shape], "states": []}
    states = crashing.post(init)[1]["states"]
    body = {"image": frames[1], "shapes": [None], "states": states}
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        crashing.post(body)
    assert crashing.process.wait(timeout=30) == -9  # killed, not a clean exit

    status, retried = healthy.post(body)
    assert status == 200 and retried["states"][0]["frame"] == 1
    status, after = healthy.post(
        {"image": frames[2], "shapes": [None], "states": retried["states"]}
    )
    assert status == 200

    reference_states = healthy.post(init)[1]["states"]
    expected = []
    for image in frames[1:]:
        _, answer = healthy.post({"image": image, "shapes": [None], "states": reference_states})
        expected.append(answer["shapes"])
        reference_states = answer["states"]
    assert [retried["shapes"], after["shapes"]] == expected


@pytest.fixture
def workers(small_model, own_redis):
    """Two in-process handlers (Nuclio workers), each with its own state cache, sharing
    one Redis through the function's own client settings; image encoder runs counted."""
    settings = ModelSettings(device="cpu")
    tracker = build_tracker(small_model, settings)
    runs = counted_encoder(tracker)
    handlers = [
        ModelHandler(
            tracker,
            CachedStateStore(
                RedisStateStore(redis_client("127.0.0.1", own_redis.port), tracker.memory_capacity)
            ),
        )
        for _ in range(2)
    ]
    return handlers, runs


def test_stored_states_are_checked_before_any_model_work(workers, own_redis):
    """404, 409 and 503 come without running SAM 2, even for a state in the worker's cache;
    a replay is answered without SAM 2 too. Times are printed for the record."""
    (worker_a, worker_b), runs = workers
    sequence = davis_sequence(SEQUENCE)
    frames = [b64(p) for p in frame_paths(sequence)[:5]]
    shape = {"type": "mask", "points": encode_mask(ground_truth(sequence))}
    started = worker_a.infer({"image": frames[0], "shapes": [shape], "states": []})

    def call(worker, image, states):
        return worker.infer({"image": image, "shapes": [None], "states": states})

    first = call(worker_a, frames[1], started["states"])  # worker A caches frame 1 now
    timings = {}

    def refused(status, worker, image, states):
        before = runs["encode_frame"]
        start = time.perf_counter()
        with pytest.raises(RequestError) as raised:
            call(worker, image, states)
        timings[status] = time.perf_counter() - start
        assert raised.value.status == status, raised.value.message
        assert runs["encode_frame"] == before, f"{status} ran the image encoder"

    before = runs["encode_frame"]
    assert json.dumps(call(worker_a, frames[1], started["states"])) == json.dumps(first)
    assert runs["encode_frame"] == before

    own_redis.stop()
    refused(503, worker_a, frames[2], first["states"])
    own_redis.start()

    second = call(worker_b, frames[2], first["states"])  # worker B moves the object on
    refused(409, worker_a, frames[3], first["states"])  # A's cached state is stale

    third = call(worker_a, frames[3], second["states"])  # A caches frame 3
    client = own_redis.client()
    client.delete(*client.keys("*"))  # the state expired meanwhile
    refused(404, worker_a, frames[4], third["states"])
    print("refusal times (s):", {k: round(v, 4) for k, v in timings.items()})
