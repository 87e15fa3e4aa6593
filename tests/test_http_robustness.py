"""The whole protocol over HTTP: shape types, old CVAT, many objects, bad input, conflicts,
Redis going away. The server runs SAM 2 at 512 input to keep these tests quick."""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
from conftest import (
    SMALL_IMAGE_SIZE,
    build_model,
    davis_sequence,
    frame_folder,
    frame_paths,
    ground_truth,
    official_logits,
    png_claiming_size,
)
from cvat_sdk.masks import decode_mask, encode_mask
from PIL import Image
from tracker_state.stores import new_token
from tracking.engine import BoxPrompt
from tracking.shapes import mask_to_box, rasterize_polygon

SEQUENCE = "blackswan"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def frames() -> list[str]:
    return [b64(path.read_bytes()) for path in frame_paths(davis_sequence(SEQUENCE))[:8]]


@pytest.fixture(scope="module")
def gt() -> np.ndarray:
    return ground_truth(davis_sequence(SEQUENCE))


@pytest.fixture
def server(present_checkpoint, own_redis, function_server_factory):
    return function_server_factory(
        present_checkpoint, image_size=SMALL_IMAGE_SIZE, redis_port=own_redis.port
    )


def start(server, image: str, shapes: list) -> list:
    status, answer = server.post({"image": image, "shapes": shapes, "states": []})
    assert status == 200, answer
    return json.loads(json.dumps(answer["states"]))


def follow(server, image: str, states: list) -> tuple[list, list]:
    status, answer = server.post({"image": image, "shapes": [None] * len(states), "states": states})
    assert status == 200, answer
    return answer["shapes"], json.loads(json.dumps(answer["states"]))


def test_bad_requests_get_4xx_and_tracking_goes_on(server, frames, gt):
    mask_shape = {"type": "mask", "points": encode_mask(gt)}
    [clean] = start(server, frames[0], [mask_shape])
    [probed] = start(server, frames[0], [mask_shape])
    small = io.BytesIO()
    Image.open(io.BytesIO(base64.b64decode(frames[1]))).resize((427, 240)).save(small, "JPEG")
    unknown = {"sam2": new_token(), "frame": 0}
    bad_requests = {
        "malformed JSON": (None, b'{"image": '),
        "no image": ({"shapes": [None], "states": [probed]}, None),
        "image not base64": ({"image": "%%%", "shapes": [None], "states": [probed]}, None),
        "image not an image": (
            {"image": b64(b"GIF89a garbage"), "shapes": [None], "states": [probed]},
            None,
        ),
        "decompression bomb": (
            {
                "image": b64(png_claiming_size(100_000, 100_000)),
                "shapes": [None],
                "states": [probed],
            },
            None,
        ),
        "unknown shape type": (
            {"image": frames[1], "shapes": [{"type": "cuboid", "points": [1, 2]}], "states": []},
            None,
        ),
        "malformed RLE": (
            {
                "image": frames[1],
                "shapes": [{"type": "mask", "points": [5, 1, 1, 2, 2]}],
                "states": [],
            },
            None,
        ),
        "degenerate polygon": (
            {
                "image": frames[1],
                "shapes": [{"type": "polygon", "points": [1, 1, 5, 5, 9, 9]}],
                "states": [],
            },
            None,
        ),
        "degenerate rectangle": (
            {
                "image": frames[1],
                "shapes": [{"type": "rectangle", "points": [3, 3, 3, 40]}],
                "states": [],
            },
            None,
        ),
        "unknown state": ({"image": frames[1], "shapes": [None], "states": [unknown]}, None),
        "not our state": ({"image": frames[1], "shapes": [None], "states": [[1, 2]]}, None),
        "frame of another size": (
            {"image": b64(small.getvalue()), "shapes": [None], "states": [probed]},
            None,
        ),
        "mismatched lists": (
            {"image": frames[1], "shapes": [None, None], "states": [probed]},
            None,
        ),
        "state from the future": (
            {"image": frames[1], "shapes": [None], "states": [{**probed, "frame": 5}]},
            None,
        ),
    }
    statuses = {}
    for name, (body, raw) in bad_requests.items():
        status, answer = server.post(body, raw=raw)
        statuses[name] = status
        assert 400 <= status < 500, (name, status, answer)
        assert isinstance(answer.get("error"), str) and len(answer["error"]) > 10, name
    assert statuses["decompression bomb"] == 413
    assert statuses["unknown state"] == 404
    assert statuses["state from the future"] == 409

    # The probed state was never changed: it tracks exactly like the clean one.
    shapes, states = follow(server, frames[1], [clean, probed])
    assert shapes[0] == shapes[1] and shapes[0] is not None
    shapes, _ = follow(server, frames[2], states)
    assert shapes[0] == shapes[1]


def test_a_state_is_advanced_once(server, frames, gt):
    """Two calls continuing one state onto different frames at once: one 200, one 409.
    The same call twice is a replay: both get the same answer (tests/test_cvat_calls.py)."""
    [state] = start(server, frames[0], [{"type": "mask", "points": encode_mask(gt)}])
    bodies = [{"image": image, "shapes": [None], "states": [state]} for image in frames[1:3]]
    results = {}

    def call(index):
        results[index] = server.post_raw(bodies[index])

    threads = [threading.Thread(target=call, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(status for status, _ in results.values()) == [200, 409]
    winner = next(index for index, (status, _) in results.items() if status == 200)
    conflict = json.loads(results[1 - winner][1])
    assert "already advanced" in conflict["error"]
    assert server.post(bodies[1 - winner])[0] == 409  # a retry later is refused just the same
    assert server.post_raw(bodies[winner]) == results[winner]  # the winner's replay is not
    advanced = json.loads(results[winner][1])["states"]
    follow(server, frames[3], advanced)


def test_redis_going_away_gives_503_and_recovers(server, own_redis, frames, gt):
    [state] = start(server, frames[0], [{"type": "mask", "points": encode_mask(gt)}])
    own_redis.stop()
    body = {"image": frames[1], "shapes": [None], "states": [state]}
    status, answer = server.post(body)
    assert status == 503 and "unavailable" in answer["error"]
    status, answer = server.post({"image": frames[1], "shapes": [[10, 10, 90, 90]]})
    assert status == 503
    own_redis.start()
    shapes, _ = follow(server, frames[1], [state])
    assert shapes[0] is not None


def test_old_cvat_bare_rectangles(server, frames):
    states = start(server, frames[0], [[100.0, 80.0, 400.0, 300.0]])
    for image in frames[1:3]:
        shapes, states = follow(server, image, states)
        [box] = shapes
        assert isinstance(box, list) and len(box) == 4
        assert 0 <= box[0] < box[2] <= 854 and 0 <= box[1] < box[3] <= 480


def test_ten_objects_in_one_call_match_ten_single_calls(
    present_checkpoint, own_redis, function_server_factory, frames, gt
):
    # Batched as on a GPU (the CPU default runs objects one at a time).
    server = function_server_factory(
        present_checkpoint,
        image_size=SMALL_IMAGE_SIZE,
        redis_port=own_redis.port,
        extra_env={"SAM2_OBJECT_BATCH": "10"},
    )
    rng = np.random.default_rng(0)
    masks = [gt]
    for _ in range(9):
        x, y = int(rng.integers(0, 700)), int(rng.integers(0, 380))
        patch = np.zeros_like(gt)
        patch[y : y + int(rng.integers(30, 100)), x : x + int(rng.integers(30, 150))] = True
        masks.append(patch)
    shapes = [{"type": "mask", "points": encode_mask(m)} for m in masks]
    together = start(server, frames[0], shapes)
    alone = [start(server, frames[0], [shape])[0] for shape in shapes]
    for image in frames[1:3]:
        joint_shapes, together = follow(server, image, together)
        for index in range(10):
            [single_shape], [alone[index]] = follow(server, image, [alone[index]])
            joint = decode_mask(joint_shapes[index]["points"], image_width=854, image_height=480)
            single = decode_mask(single_shape["points"], image_width=854, image_height=480)
            # Batched objects differ from one-by-one only by float rounding.
            assert (joint == single).mean() >= 0.99999


@pytest.fixture(scope="module")
def official_box_track(present_checkpoint, tmp_path_factory, gt):
    """The official predictor's masks from a box prompt at the same input size."""
    model, _ = build_model(present_checkpoint, SMALL_IMAGE_SIZE)
    folder = frame_folder(davis_sequence(SEQUENCE), 16, tmp_path_factory.mktemp("frames"))
    rows, cols = np.flatnonzero(gt.any(axis=1)), np.flatnonzero(gt.any(axis=0))
    box = [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
    logits = official_logits(model, folder, [BoxPrompt(tuple(box))], 5)
    return box, [(frame[0, 0] > 0).numpy() for frame in logits]


def test_rectangles_follow_the_official_box_track(server, frames, official_box_track):
    box, masks = official_box_track
    status, answer = server.post(
        {"image": frames[0], "shapes": [{"type": "rectangle", "points": box}], "states": []}
    )
    assert status == 200
    returned = [answer["shapes"][0]]
    states = answer["states"]
    for image in frames[1:5]:
        shapes, states = follow(server, image, states)
        returned.append(shapes[0])
    for index, (shape, mask) in enumerate(zip(returned, masks, strict=True)):
        assert 0.02 < mask.mean() < 0.98, f"frame {index}: reference mask is trivial"
        assert shape["type"] == "rectangle"
        assert shape["points"] == mask_to_box(mask), f"frame {index}"


def test_polygons_are_valid_outlines(server, frames, gt):
    ys, xs = np.nonzero(gt)
    # A polygon prompt: the ground truth's bounding diamond is enough of a shape.
    cx, cy = float(xs.mean()), float(ys.mean())
    contour_points = [
        cx,
        float(ys.min()),
        float(xs.max()),
        cy,
        cx,
        float(ys.max()),
        float(xs.min()),
        cy,
    ]
    states = start(server, frames[0], [{"type": "polygon", "points": contour_points}])
    outlines = 0
    for image in frames[1:4]:
        shapes, states = follow(server, image, states)
        polygon = shapes[0]
        if polygon is None:
            continue
        outlines += 1
        points = polygon["points"]
        assert polygon["type"] == "polygon" and len(points) % 2 == 0 and len(points) >= 6
        xy = np.asarray(points).reshape(-1, 2)
        assert (xy >= 0).all() and (xy[:, 0] <= 854).all() and (xy[:, 1] <= 480).all()
        assert rasterize_polygon(points, 480, 854).any()
    assert outlines > 0, "objects stay present with this checkpoint: expected outlines"


def test_invisible_objects_answer_null_and_keep_their_state(
    absent_checkpoint, function_server_factory, frames, gt
):
    server = function_server_factory(absent_checkpoint, image_size=SMALL_IMAGE_SIZE)
    states = start(server, frames[0], [{"type": "mask", "points": encode_mask(gt)}])
    for image in frames[1:3]:
        shapes, states = follow(server, image, states)
        assert shapes == [None]
        assert states[0]["frame"] >= 1
