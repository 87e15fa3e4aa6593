"""``sam2-cvat-track --server``: a job read and written through cvat-sdk, against the
server in tests/fake_cvat.py (CVAT's REST API as cvat-sdk uses it; a real CVAT cannot
run in CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_model, davis_sequence, frame_paths, ground_truth
from cvat_sdk.masks import decode_mask, encode_mask
from fake_cvat import FakeCvat
from test_keyframe_cli import IMAGE_SIZE, run_cli
from tracking.engine import MaskPrompt, Sam2StreamTracker
from tracking.shapes import mask_to_box
from tracking.video import FolderFrames, Keyframe, KeyframeVideoTracker

from cvat_track.marker import is_marked

SEQUENCE = "dog"
NUM_FRAMES = 10


def without_ids(annotations: list[dict]) -> list[str]:
    def strip(item: dict) -> dict:
        item = {k: v for k, v in item.items() if k != "id"}
        if "shapes" in item:
            item["shapes"] = [strip(s) for s in item["shapes"]]
        return item

    return sorted(repr(sorted(strip(a).items())) for a in annotations)


@pytest.fixture
def cvat():
    """Task 1: ten dog frames, job 1 = frames 0-5, job 2 = frames 6-9. People drew the dog
    as a mask on frame 0 (no group) and a rectangle track from frame 2; another tool left
    an auto 'tree' shape."""
    sequence = davis_sequence(SEQUENCE)
    fake = FakeCvat(frame_paths(sequence)[:NUM_FRAMES], ["dog", "tree"], job_size=6)
    fake.add(
        "shapes",
        {
            "type": "mask",
            "frame": 0,
            "label_id": 11,
            "points": encode_mask(ground_truth(sequence, 0)),
        },
    )
    box = mask_to_box(ground_truth(sequence, 2))
    fake.add(
        "tracks",
        {"frame": 2, "label_id": 11, "shapes": [{"type": "rectangle", "frame": 2, "points": box}]},
    )
    fake.add(
        "shapes",
        {
            "type": "rectangle",
            "frame": 1,
            "label_id": 12,
            "source": "auto",
            "points": [1.0, 2.0, 30.0, 40.0],
        },
    )
    server, url = fake.serve()
    yield fake, url
    server.shutdown()


def test_a_job_is_tracked_and_written_back(cvat, present_checkpoint, tmp_path):
    fake, url = cvat
    job_1 = ("--server", url, "--auth", "annotator:secret-password", "--job", "1")
    people_before = [dict(s) for s in fake.shapes if s["source"] == "manual"]
    tree_before = [dict(s) for s in fake.shapes if s["label_id"] == 12]
    result = run_cli(*job_1, checkpoint=present_checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tracked 2 objects over 6 frames" in result.stdout
    assert "wrote to job 1" in result.stdout

    # People's mask: unchanged but for its new group, which its output shares.
    [person] = [s for s in fake.shapes if s["source"] == "manual"]
    assert person["group"] > 0
    assert {**person, "group": 0} == {**people_before[0], "group": 0}
    assert [s for s in fake.shapes if s["label_id"] == 12] == tree_before

    masks = sorted(
        (s for s in fake.shapes if s["source"] == "auto" and s["type"] == "mask"),
        key=lambda s: s["frame"],
    )
    assert [s["frame"] for s in masks] == [1, 2, 3, 4, 5]  # job 1 only, not its keyframe
    assert {s["group"] for s in masks} == {person["group"]}

    sequence = davis_sequence(SEQUENCE)
    model, _ = build_model(present_checkpoint, IMAGE_SIZE)
    tracker = Sam2StreamTracker(model, "test")
    folder = tmp_path / "job1"
    folder.mkdir()
    for path in frame_paths(sequence)[:6]:
        (folder / path.name).symlink_to(path)
    keyframe = Keyframe(0, MaskPrompt(torch.from_numpy(ground_truth(sequence, 0))))
    height, width = ground_truth(sequence).shape
    for tracked in KeyframeVideoTracker(tracker).track(FolderFrames(folder), [[keyframe]]):
        logits = tracker.upsample(tracked.low_res_logits[0][None], tracked.frame_size)
        if tracked.frame_index == 0:
            continue
        written = decode_mask(
            masks[tracked.frame_index - 1]["points"], image_width=width, image_height=height
        )
        assert np.array_equal(written, (logits[0, 0] > 0).numpy()), tracked.frame_index

    # The person's rectangle track holds the output: a marked box on every other frame
    # of the job (the run starts at the mask's frame 0), the person's box kept on 2.
    [track] = [t for t in fake.tracks if t["label_id"] == 11]
    assert track["source"] == "manual" and track["group"] > 0
    assert track["group"] != person["group"]
    assert [s["frame"] for s in track["shapes"]] == list(range(6))
    for shape in track["shapes"]:
        assert is_marked("rectangle", shape["points"]) == (shape["frame"] != 2)
    assert track["shapes"][2]["points"] == mask_to_box(ground_truth(davis_sequence(SEQUENCE), 2))

    # Again: the same annotations, its own output replaced, nothing else touched.
    after_first = (without_ids(fake.shapes), without_ids(fake.tracks))
    result = run_cli(*job_1, checkpoint=present_checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replacing 5 earlier output shapes and 0 output tracks" in result.stdout
    assert (without_ids(fake.shapes), without_ids(fake.tracks)) == after_first


def test_token_task_frame_range_and_dry_run(cvat, present_checkpoint):
    fake, url = cvat
    before = (without_ids(fake.shapes), without_ids(fake.tracks))
    result = run_cli(
        "--server",
        url,
        "--auth",
        fake.token,
        "--task",
        "1",
        "--frame-range",
        "0:3",
        "--labels",
        "dog",
        "--dry-run",
        checkpoint=present_checkpoint,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tracked 2 objects over 4 frames" in result.stdout
    assert "would write to task 1: 3 mask shapes, 0 new tracks, 1 tracks with new" in result.stdout
    assert (without_ids(fake.shapes), without_ids(fake.tracks)) == before
    assert not any(r.startswith("PATCH") for r in fake.requests)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth", "annotator:wrong", "--job", "1"], "refused these credentials"),
        (["--auth", "not-a-valid-token", "--job", "1"], "refused these credentials"),
        (["--auth", "annotator:secret-password", "--job", "9"], "job 9 was not found"),
        (["--auth", "annotator:secret-password", "--job", "2"], "no keyframes found"),
    ],
)
def test_clear_errors(cvat, present_checkpoint, args, message):
    _, url = cvat
    result = run_cli("--server", url, *args, checkpoint=present_checkpoint)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_a_url_without_a_scheme_is_named(cvat, present_checkpoint):
    _, url = cvat
    bare = url.removeprefix("http://")
    result = run_cli(
        "--server",
        bare,
        "--auth",
        "annotator:secret-password",
        "--job",
        "1",
        checkpoint=present_checkpoint,
    )
    assert result.returncode == 2
    assert f"{bare!r} has no scheme: give http://{bare}" in result.stderr, result.stderr[-2000:]
