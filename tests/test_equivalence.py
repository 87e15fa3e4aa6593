"""Our streaming tracker against the official SAM2VideoPredictor, at the level of mask logits.

Every frame's state goes through the store (safetensors, bfloat16 memory) between
frames, so these tests also prove that the stored state is all SAM 2 needs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    SMALL_IMAGE_SIZE,
    build_model,
    davis_sequence,
    frame_folder,
    frame_paths,
    ground_truth,
    official_logits,
    track_frames,
)
from tracker_state import InMemoryStateStore
from tracking.engine import BoxPrompt, MaskPrompt, Sam2StreamTracker

LOGIT_TOLERANCE = 1e-5  # batched objects differ from one-by-one by float rounding (~3e-7)


def extra_masks(gt: np.ndarray) -> list[np.ndarray]:
    """Two more objects for multi-object tests: the left half of the object, a background patch."""
    left = gt.copy()
    cols = np.flatnonzero(gt.any(axis=0))
    left[:, (cols[0] + cols[-1]) // 2 :] = False
    patch = np.zeros_like(gt)
    patch[20:120, 30:200] = True
    return [left, patch]


def streamed_logits(
    model, paths, prompts, num_frames: int, max_batch: int = 1
) -> list[torch.Tensor]:
    tracker = Sam2StreamTracker(model, "test-model", max_batch=max_batch)
    store = InMemoryStateStore(tracker.memory_capacity)
    return [logits for logits, _ in track_frames(tracker, paths[:num_frames], prompts, store)]


def assert_equivalent(ours: list[torch.Tensor], reference: list[torch.Tensor], trivial_ok=False):
    for index, (mine, theirs) in enumerate(zip(ours, reference, strict=True)):
        assert mine.shape == theirs.shape
        foreground = (theirs > 0).float().mean(dim=(1, 2, 3))
        if not trivial_ok:
            # Random weights can make every mask empty; then equality would prove nothing.
            assert torch.all((foreground > 0.02) & (foreground < 0.98)), (index, foreground)
        difference = (mine - theirs).abs().max().item()
        assert difference <= LOGIT_TOLERANCE, f"frame {index}: logits differ by {difference}"
        agreement = ((mine > 0) == (theirs > 0)).float().mean().item()
        assert agreement >= 0.99999, f"frame {index}: {agreement:.6%} of pixels agree"


@pytest.mark.parametrize(
    ("num_objects", "max_batch"),
    [(1, 1), (3, 1), (3, 3)],
    ids=["1 object", "3 objects one by one", "3 objects batched"],
)
def test_mask_tracking_matches_official_predictor(small_model, tmp_path, num_objects, max_batch):
    sequence = davis_sequence("car-shadow")
    num_frames = 17  # the prompt frame + 16: the object-pointer ring only fills then
    gt = ground_truth(sequence)
    masks = [gt, *extra_masks(gt)][:num_objects]
    prompts = [MaskPrompt(torch.from_numpy(m)) for m in masks]
    folder = frame_folder(sequence, num_frames, tmp_path)
    reference = official_logits(small_model, folder, prompts, num_frames)
    ours = streamed_logits(small_model, frame_paths(sequence), prompts, num_frames, max_batch)
    assert_equivalent(ours, reference)
    if max_batch == 1:
        # One object at a time runs exactly the official computation: bit-identical.
        assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))


def test_box_prompt_matches_official_predictor(small_model, tmp_path):
    sequence = davis_sequence("dog")
    num_frames = 9
    gt = ground_truth(sequence)
    rows, cols = np.flatnonzero(gt.any(axis=1)), np.flatnonzero(gt.any(axis=0))
    box = BoxPrompt((float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)))
    folder = frame_folder(sequence, 16, tmp_path)  # the official predictor sees >= 16 frames
    reference = official_logits(small_model, folder, [box], num_frames)
    ours = streamed_logits(small_model, frame_paths(sequence), [box], num_frames)
    assert_equivalent(ours, reference)


def test_vanishing_objects_match_official_predictor(absent_checkpoint, tmp_path):
    """With the object score shifted down objects vanish; both must agree on that too."""
    model, _ = build_model(absent_checkpoint, SMALL_IMAGE_SIZE)
    sequence = davis_sequence("blackswan")
    num_frames = 6
    prompts = [MaskPrompt(torch.from_numpy(ground_truth(sequence)))]
    folder = frame_folder(sequence, 16, tmp_path)
    reference = official_logits(model, folder, prompts, num_frames)
    ours = streamed_logits(model, frame_paths(sequence), prompts, num_frames)
    assert_equivalent(ours, reference, trivial_ok=True)
    vanished = [index for index, logits in enumerate(reference) if not (logits > 0).any()]
    assert vanished, "this checkpoint was chosen to make the object vanish on some frame"
