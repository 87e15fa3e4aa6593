"""Request validation: every malformed request names its problem."""

from __future__ import annotations

import json

import pytest
from tracker_state.stores import new_token
from tracking.protocol import ContinuedObject, NewObject, RequestError, parse_request

TOKEN = new_token()
MASK = {"type": "mask", "points": [1, 0, 0, 0, 0]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not UTF-8"),
        ("[1, 2]", 400, "JSON object"),
        ({"shapes": [MASK]}, 400, "no 'image'"),
        ({"image": "x", "shapes": {}, "states": []}, 400, "must be lists"),
        ({"image": "x", "shapes": [], "states": []}, 400, "names no object"),
        ({"image": "x", "shapes": [MASK, MASK], "states": [None]}, 400, "same objects"),
        ({"image": "x", "shapes": [{"type": "ellipse", "points": []}]}, 400, "unsupported type"),
        ({"image": "x", "shapes": [{"type": "mask", "points": "1 2"}]}, 400, "list of numbers"),
        ({"image": "x", "shapes": [7]}, 400, "shape object"),
        ({"image": "x", "shapes": [None], "states": [None]}, 400, "neither a shape nor a state"),
        (
            {"image": "x", "shapes": [None], "states": [{"sam2": "short", "frame": 1}]},
            400,
            "start tracking this object again",
        ),
        (
            {"image": "x", "shapes": [None], "states": [{"sam2": TOKEN, "frame": -1}]},
            400,
            "not a state",
        ),
        ({"image": "x", "shapes": [None], "states": ["pickle-me"]}, 400, "not a state"),
        ({"image": "x", "states": [{"sam2": TOKEN, "frame": 1}] * 2}, 400, "appears twice"),
        ({"image": "x", "shapes": [MASK] * 5}, 413, "limit of 4"),
    ],
)
def test_malformed_requests(body, status, message):
    with pytest.raises(RequestError, match=message) as info:
        parse_request(body, max_objects=4)
    assert info.value.status == status


def test_cvat_requests_are_understood():
    init = parse_request(json.dumps({"image": "x", "shapes": [MASK, [1, 2, 3, 4]], "states": []}))
    assert init.objects == [
        NewObject("mask", MASK["points"], legacy=False),
        NewObject("rectangle", [1, 2, 3, 4], legacy=True),
    ]
    state = {"sam2": TOKEN, "frame": 3}
    follow = parse_request({"image": "x", "shapes": [None], "states": [state]})
    [obj] = follow.objects
    assert isinstance(obj, ContinuedObject) and obj.ref.to_json() == state
