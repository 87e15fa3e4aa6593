"""The function driven over HTTP exactly as CVAT drives it, against the official predictor.

SAM 2.1 tiny at its real 1024 input, seeded random weights (objects kept present),
states passed back through json.dumps/json.loads, the server killed and restarted
mid-track with its states in Redis.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from conftest import build_model, davis_sequence, frame_paths, ground_truth, official_logits
from cvat_sdk.masks import decode_mask, encode_mask
from tracking.engine import MaskPrompt

NUM_FRAMES = 13  # frames 0..12
RESTART_AFTER = 8


def frame_b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def redis_bytes(client) -> tuple[int, int, int]:
    """(bytes of state values, bytes of stored answers, number of keys) held by a Redis
    server. The answers (the last shape sent, kept for replays) vary with the mask."""
    keys = list(client.scan_iter())
    answers = [key for key in keys if key.endswith(b":answer")]
    answer_bytes = sum(client.strlen(key) for key in answers)
    state_bytes = sum(client.strlen(key) for key in keys) - answer_bytes
    return state_bytes, answer_bytes, client.dbsize()


def shape_mask(shape, height: int, width: int) -> np.ndarray:
    if shape is None:
        return np.zeros((height, width), bool)
    assert shape["type"] == "mask"
    return decode_mask(shape["points"], image_width=width, image_height=height)


@pytest.fixture(scope="module")
def official_masks(present_checkpoint):
    """The official predictor's masks for the first NUM_FRAMES frames, given the whole video."""
    sequence = davis_sequence("dog")
    model, _ = build_model(present_checkpoint, 1024)
    prompt = MaskPrompt(torch.from_numpy(ground_truth(sequence)))
    logits = official_logits(model, sequence / "frames", [prompt], NUM_FRAMES)
    return [(frame[0, 0] > 0).numpy() for frame in logits]


def test_cvat_flow_matches_official_predictor_and_survives_restart(
    present_checkpoint, own_redis, function_server_factory, official_masks
):
    sequence = davis_sequence("dog")
    paths = frame_paths(sequence)
    gt = ground_truth(sequence)
    height, width = gt.shape
    server = function_server_factory(present_checkpoint, redis_port=own_redis.port)
    redis_client = own_redis.client()

    status, answer = server.post(
        {
            "image": frame_b64(paths[0]),
            "shapes": [{"type": "mask", "points": encode_mask(gt)}],
            "states": [],
        }
    )
    assert status == 200, answer
    returned = [shape_mask(answer["shapes"][0], height, width)]
    states = json.loads(json.dumps(answer["states"]))  # as CVAT's signing round trip does
    sizes = {}
    for index in range(1, NUM_FRAMES):
        if index == RESTART_AFTER + 1:
            server.kill()
            server.start()
        status, answer = server.post(
            {"image": frame_b64(paths[index]), "shapes": [None], "states": states}
        )
        assert status == 200, answer
        assert len(answer["shapes"]) == len(answer["states"]) == 1
        returned.append(shape_mask(answer["shapes"][0], height, width))
        states = json.loads(json.dumps(answer["states"]))
        assert len(json.dumps(states[0])) < 1024  # CVAT carries a short key, never tensors
        sizes[index] = redis_bytes(redis_client)

    for index, (ours, theirs) in enumerate(zip(returned, official_masks, strict=True)):
        foreground = theirs.mean()
        assert 0.02 < foreground < 0.98, f"frame {index}: reference mask is trivial"
        agreement = (ours == theirs).mean()
        assert agreement >= 0.99999, f"frame {index}: {agreement:.6%} of pixels agree"

    assert sizes[12][0] == sizes[8][0], f"Redis grew from {sizes[8]} to {sizes[12]}"
    # One object: head, prompt memory, six recent memories and the last answer, which is
    # the last shape sent and a frame digest (a few hundred bytes more), nothing else.
    assert sizes[8][2] == sizes[12][2] == 9
    assert sizes[12][1] < len(json.dumps(answer["shapes"][0])) + 256
