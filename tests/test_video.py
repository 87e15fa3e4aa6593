"""The keyframe video tracker against the official predictor, logit for logit: several
keyframes per object, forward, backward and both, box keyframes, objects whose
keyframes start later, and SAM 2's cap on conditioning frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_model, davis_sequence, frame_folder, ground_truth
from tracking.engine import BoxPrompt, MaskPrompt, Sam2StreamTracker
from tracking.shapes import mask_to_box
from tracking.video import (
    FolderFrames,
    Keyframe,
    KeyframeVideoTracker,
    VideoError,
    yielded_frame_count,
)

SEQUENCE = "dog"
NUM_FRAMES = 20
IMAGE_SIZE = 256  # equivalence holds at any input size; 256 keeps these runs short


@pytest.fixture(scope="module")
def small_model(present_checkpoint):
    return build_model(present_checkpoint, IMAGE_SIZE)[0]


def mask_keyframe(sequence, frame: int) -> Keyframe:
    return Keyframe(frame, MaskPrompt(torch.from_numpy(ground_truth(sequence, frame))))


def box_keyframe(sequence, frame: int) -> Keyframe:
    return Keyframe(frame, BoxPrompt(tuple(mask_to_box(ground_truth(sequence, frame)))))


def official(model, folder, objects, direction) -> dict[int, torch.Tensor]:
    """Video-resolution logits (objects, 1, H, W) per frame: keyframes added with
    add_new_mask / add_new_points_or_box(box=...), then propagate_in_video as the
    direction says; a frame yielded twice keeps its later logits."""
    state = model.init_state(str(folder))
    for obj_id, keyframes in enumerate(objects):
        for keyframe in keyframes:
            if isinstance(keyframe.prompt, MaskPrompt):
                model.add_new_mask(state, keyframe.frame_index, obj_id, keyframe.prompt.mask)
            else:
                model.add_new_points_or_box(
                    state, keyframe.frame_index, obj_id, box=list(keyframe.prompt.box)
                )
    frames = [k.frame_index for keyframes in objects for k in keyframes]
    runs = {
        "forward": [{}],
        "backward": [{"start_frame_idx": max(frames), "reverse": True}],
        "both": [{}, {"start_frame_idx": min(frames), "reverse": True}],
    }[direction]
    logits = {}
    for kwargs in runs:
        for index, _, frame_logits in model.propagate_in_video(state, **kwargs):
            logits[index] = frame_logits.clone()
    return logits


def ours(
    model, folder, objects, direction, precision=torch.float32, **options
) -> dict[int, torch.Tensor]:
    tracker = Sam2StreamTracker(model, "test", precision)
    logits = {}
    frames = FolderFrames(folder)
    yielded = 0
    for frame in KeyframeVideoTracker(tracker).track(frames, objects, direction, **options):
        low_res = torch.stack(frame.low_res_logits)
        logits[frame.frame_index] = tracker.upsample(low_res, frame.frame_size)
        yielded += 1
    assert yielded == yielded_frame_count(objects, direction, len(frames))
    return logits


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return frame_folder(davis_sequence(SEQUENCE), NUM_FRAMES, tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def short_folder(tmp_path_factory):
    """Fewer frames where a test's point needs no full pointer window."""
    return frame_folder(davis_sequence(SEQUENCE), 10, tmp_path_factory.mktemp("short"))


@pytest.mark.parametrize(
    ("direction", "mask_frames", "box_frame"),
    [("forward", (0, 10), 0), ("backward", (19, 9), 19), ("both", (6, 14), 6)],
)
def test_equal_to_the_official_predictor(small_model, folder, direction, mask_frames, box_frame):
    """Object A: ground-truth masks on two keyframes; object B: a box keyframe."""
    sequence = davis_sequence(SEQUENCE)
    objects = [
        [mask_keyframe(sequence, f) for f in mask_frames],
        [box_keyframe(sequence, box_frame)],
    ]
    expected = official(small_model, folder, objects, direction)
    got = ours(small_model, folder, objects, direction)
    assert sorted(got) == sorted(expected)
    first, last = min(mask_frames), max(mask_frames)
    covered = range(first, NUM_FRAMES) if direction != "backward" else range(0, last + 1)
    assert sorted(expected) == (list(range(NUM_FRAMES)) if direction == "both" else list(covered))
    for index in expected:
        assert torch.equal(got[index], expected[index]), f"frame {index}"
        foreground = (expected[index][0] > 0).float().mean().item()
        assert 0.02 < foreground < 0.98, f"frame {index}: reference mask of A is trivial"


def test_an_object_whose_keyframes_start_later(small_model, short_folder):
    """B's first keyframe comes after A's: the official predictor tracks B from A's
    first frame, conditioned on B's later keyframe alone (no object pointer yet). Outside
    autocast SAM 2 itself fails on such a frame (bfloat16 memory into float32 layers), so
    both run under bfloat16 autocast, as on a GPU."""
    sequence = davis_sequence(SEQUENCE)
    objects = [[mask_keyframe(sequence, 0)], [mask_keyframe(sequence, 5)]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = official(small_model, short_folder, objects, "forward")
    got = ours(small_model, short_folder, objects, "forward", precision=torch.bfloat16)
    assert sorted(got) == sorted(expected) == list(range(10))
    for index in expected:
        agreement = ((got[index] > 0) == (expected[index] > 0)).float().mean().item()
        assert agreement >= 0.9999, f"frame {index}: {agreement:.6%}"
        assert (expected[index][1] > 0).float().mean() > 0.01, f"frame {index}: B is empty"


def test_capped_conditioning_frames_equal_sam2s_own_cap(small_model, short_folder):
    sequence = davis_sequence(SEQUENCE)
    objects = [[mask_keyframe(sequence, f) for f in (0, 3, 6)]]
    previous = small_model.max_cond_frames_in_attn
    small_model.max_cond_frames_in_attn = 2
    try:
        expected = official(small_model, short_folder, objects, "forward")
    finally:
        small_model.max_cond_frames_in_attn = previous
    got = ours(small_model, short_folder, objects, "forward", max_cond_frames=2)
    uncapped = ours(small_model, short_folder, objects, "forward")
    assert small_model.max_cond_frames_in_attn == previous
    for index in expected:
        assert torch.equal(got[index], expected[index]), f"frame {index}"
    assert any(not torch.equal(got[i], uncapped[i]) for i in expected), "the cap changed nothing"


def test_bad_keyframes_are_refused(small_model, folder):
    tracker = KeyframeVideoTracker(Sam2StreamTracker(small_model, "test"))
    frames = FolderFrames(folder)
    mask = MaskPrompt(torch.from_numpy(np.ones((480, 854), bool)))
    for objects, message in [
        ([[Keyframe(NUM_FRAMES, mask)]], "there are 20 frames"),
        ([[]], "at least one keyframe"),
    ]:
        with pytest.raises(VideoError, match=message):
            list(tracker.track(frames, objects))
    with pytest.raises(VideoError, match="direction"):
        list(tracker.track(frames, [[Keyframe(0, mask)]], "sideways"))
    with pytest.raises(VideoError, match="at least 2"):
        list(tracker.track(frames, [[Keyframe(0, mask)]], max_cond_frames=1))
