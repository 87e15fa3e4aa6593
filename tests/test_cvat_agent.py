"""cvat_agent.py served by the real ``cvat-cli function run-agent --burst`` against the
agent-queue server in tests/fake_cvat.py (CVAT's function queue and task endpoints as
cvat-cli uses them; CVAT itself cannot run in CI): masks, polygons and rectangles over
several frames equal the official predictor's; bad requests get cvat-cli's own failure
messages; each object's state is a fixed number of host bytes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    build_model,
    davis_sequence,
    frame_folder,
    frame_paths,
    ground_truth,
    official_logits,
)
from cvat_sdk.masks import decode_mask, encode_mask
from fake_cvat import FakeCvat
from PIL import Image
from tracking.engine import BoxPrompt, MaskPrompt
from tracking.shapes import mask_to_box, mask_to_polygon, rasterize_polygon

# Any DAVIS sequence can stand in (e.g. one the tests never saw, for an acceptance run).
SEQUENCE = os.environ.get("AGENT_SEQUENCE", "blackswan")
NUM_FRAMES = 5
IMAGE_SIZE = 256
CVAT_CLI = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "cvat-cli"


def diamond(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    cx, cy = float(xs.mean()), float(ys.mean())
    return [cx, float(ys.min()), float(xs.max()), cy, cx, float(ys.max()), float(xs.min()), cy]


def run_agent(
    fake: FakeCvat, url: str, checkpoint: Path, home: Path
) -> subprocess.CompletedProcess:
    command = str(CVAT_CLI) if CVAT_CLI.exists() else "cvat-cli"
    return subprocess.run(
        [
            command,
            "--server-host",
            url,
            "--auth",
            f"{fake.user}:{fake.password}",
            "function",
            "run-agent",
            str(fake.function_id),
            "--function-file",
            str(REPO / "cvat_agent.py"),
            "-p",
            f"checkpoint=str:{checkpoint}",
            "-p",
            "device=str:cpu",
            "-p",
            f"image_size=int:{IMAGE_SIZE}",
            "--burst",
        ],
        cwd=REPO,
        env={
            **os.environ,
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_CONFIG_HOME": str(home / "config"),
        },
        capture_output=True,
        text=True,
        timeout=900,
    )


def follow_up(fake: FakeCvat, last_frame: int):
    """After each init or track request, queue the next frame's track request with the
    states the agent answered, as CVAT does when the user steps forward."""

    def on_complete(ar_id: str, result: dict) -> None:
        name, _, frame = ar_id.rpartition("-")
        if int(frame) < last_frame and "states" in result:
            fake.queue.append(
                {
                    "ar_id": f"{name}-{int(frame) + 1}",
                    "ar_params": {
                        "type": "track",
                        "task": 1,
                        "frame": int(frame) + 1,
                        "states": result["states"],
                    },
                }
            )

    return on_complete


@pytest.fixture(scope="module")
def agent_run(present_checkpoint, tmp_path_factory):
    """One agent run: a 1-object and a 3-object track (mask; mask, polygon, rectangle)
    over 5 frames, plus bad requests."""
    sequence = davis_sequence(SEQUENCE)
    root = tmp_path_factory.mktemp("agent")
    small = root / "small.png"
    Image.open(frame_paths(sequence)[0]).resize((320, 180)).save(small)
    fake = FakeCvat(
        frame_paths(sequence)[:NUM_FRAMES],
        ["bird"],
        job_size=NUM_FRAMES,
        other_tasks={2: [frame_paths(sequence)[0], small]},
    )
    gt = ground_truth(sequence)
    shapes = [
        {"type": "mask", "points": encode_mask(gt)},
        {"type": "polygon", "points": diamond(gt)},
        {"type": "rectangle", "points": mask_to_box(gt)},
    ]
    fake.queue += [
        {
            "ar_id": "one-0",
            "ar_params": {"type": "init_tracking", "task": 1, "frame": 0, "shapes": shapes[:1]},
        },
        {
            "ar_id": "three-0",
            "ar_params": {"type": "init_tracking", "task": 1, "frame": 0, "shapes": shapes},
        },
        {
            "ar_id": "unknown-9",
            "ar_params": {"type": "track", "task": 1, "frame": 1, "states": ["not-a-state"]},
        },
        {
            "ar_id": "resized-0",
            "ar_params": {"type": "init_tracking", "task": 2, "frame": 0, "shapes": shapes[2:]},
        },
    ]
    follow = follow_up(fake, NUM_FRAMES - 1)

    def on_complete(ar_id: str, result: dict) -> None:
        follow(ar_id, result)
        if ar_id == "resized-0":  # the same state on a frame of another size, and task
            fake.queue.append(
                {
                    "ar_id": "resized-9",
                    "ar_params": {
                        "type": "track",
                        "task": 2,
                        "frame": 1,
                        "states": result["states"],
                    },
                }
            )
        if ar_id == "one-0":
            fake.queue.append(
                {
                    "ar_id": "othertask-9",
                    "ar_params": {
                        "type": "track",
                        "task": 2,
                        "frame": 0,
                        "states": result["states"],
                    },
                }
            )

    fake.on_complete = on_complete
    server, url = fake.serve()
    result = run_agent(fake, url, present_checkpoint, root)
    server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    # A stream has no known length: the official predictor sees 16 frames (it caps object
    # pointers at the video's length below that) and propagates over the first ones.
    folder = frame_folder(sequence, 16, root)
    model, _ = build_model(present_checkpoint, IMAGE_SIZE)
    prompts = [
        MaskPrompt(torch.from_numpy(gt)),
        MaskPrompt(torch.from_numpy(rasterize_polygon(diamond(gt), *gt.shape))),
        BoxPrompt(tuple(mask_to_box(gt))),
    ]
    official = official_logits(model, folder, prompts, NUM_FRAMES)
    return fake, [[(frame[i, 0] > 0).numpy() for frame in official] for i in range(3)]


def test_tracks_equal_the_official_predictor(agent_run):
    fake, official = agent_run
    height, width = official[0][0].shape
    for frame in range(1, NUM_FRAMES):
        [one] = fake.completed[f"one-{frame}"]["shapes"]
        mask, polygon, rectangle = fake.completed[f"three-{frame}"]["shapes"]
        expected = [official[i][frame] for i in range(3)]
        for i, reference in enumerate(expected):
            assert 0.01 < reference.mean() < 0.99, f"frame {frame}: object {i} is trivial"
        for shape in (one, mask):
            assert shape["type"] == "mask"
            decoded = decode_mask(shape["points"], image_width=width, image_height=height)
            assert np.array_equal(decoded, expected[0]), f"frame {frame}"
        assert polygon == {"type": "polygon", "points": mask_to_polygon(expected[1])}
        assert rectangle == {"type": "rectangle", "points": mask_to_box(expected[2])}
        # cvat-cli answers with the state ids it made at init; they stay the same.
        assert fake.completed[f"three-{frame}"]["states"] == fake.completed["three-0"]["states"]


def test_bad_requests_get_cvat_clis_failure_messages(agent_run):
    fake, _ = agent_run
    assert fake.failed["unknown-9"] == (
        "Invalid annotation request: Tracking state 'not-a-state' not found - possibly expired"
    )
    assert fake.failed["othertask-9"].startswith("Invalid annotation request: Tracking state")
    assert fake.failed["othertask-9"].endswith("is not for task #2")
    assert fake.failed["resized-9"] == (
        "Invalid annotation request: "
        "Image sizes of the start frame and the current frame are different"
    )


def test_state_bytes_are_fixed_and_in_host_memory(present_checkpoint):
    """The documented 3,686,400 bytes per object at 1024 input: prompt memory and 6
    memories of 64x64x64 bfloat16, 16 pointers of 256 float32; at this test's input the
    same layout at (input/16)^2; flat once the windows are full."""
    import cvat_agent

    function = cvat_agent.create(
        checkpoint=str(present_checkpoint), device="cpu", image_size=IMAGE_SIZE
    )
    sequence = davis_sequence(SEQUENCE)
    frames = [Image.open(p).convert("RGB") for p in frame_paths(sequence)[:2]]
    import cvat_sdk.auto_annotation as cvataa

    frame = function.preprocess_image(None, frames[0])
    shape = cvataa.TrackableShape(type="mask", points=encode_mask(ground_truth(sequence)))
    obj = function.init_tracking_state(None, frame, shape)
    side = IMAGE_SIZE // 16
    per_memory = 64 * side * side * 2
    sizes = []
    for index in range(20):
        function.track(None, function.preprocess_image(None, frames[index % 2]), obj)
        sizes.append(cvat_agent.state_bytes(obj.state))
        assert all(t.device.type == "cpu" for t in obj.state.memories.values())
    assert sizes[-1] == 7 * per_memory + 16 * 256 * 4
    assert sizes[14] == sizes[19]  # nothing grows once the windows are full
    assert 7 * (64 * 64 * 64 * 2) + 16 * 256 * 4 == 3_686_400
