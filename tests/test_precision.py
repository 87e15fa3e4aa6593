"""Device and precision handling (CUDA settings resolved without a GPU; bfloat16 run on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import davis_sequence, frame_paths, ground_truth, track_frames
from torch._dynamo.utils import counters
from tracking.engine import BoxPrompt, MaskPrompt, Sam2StreamTracker, split_into_passes
from tracking.model_loading import ModelSettings, ModelSetupError, load_sam2


def test_cuda_defaults_to_compiled_bfloat16_and_cpu_to_exact_float32():
    cuda = ModelSettings(device="cuda")
    assert cuda.resolved_compile() and cuda.resolved_precision() == torch.bfloat16
    cpu = ModelSettings(device="cpu")
    assert not cpu.resolved_compile() and cpu.resolved_precision() == torch.float32
    env = {
        "SAM2_DEVICE": "cuda",
        "SAM2_COMPILE": "0",
        "SAM2_PRECISION": "float32",
        "SAM2_OBJECT_BATCH": "4",
    }
    chosen = ModelSettings.from_env(env)
    assert not chosen.resolved_compile() and chosen.resolved_precision() == torch.float32
    assert chosen.object_batch == 4 and ModelSettings.from_env({}).object_batch is None
    with pytest.raises(ModelSetupError, match="SAM2_PRECISION"):
        ModelSettings(precision="float8").resolved_precision()


def track(tracker: Sam2StreamTracker, paths, mask: np.ndarray) -> list[np.ndarray]:
    masks = []
    for logits, states in track_frames(tracker, paths, [MaskPrompt(torch.from_numpy(mask))]):
        assert states[0].prompt_memory.dtype == torch.bfloat16
        assert states[0].prompt_obj_ptr.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in states[0].obj_ptrs.values())
        masks.append((logits[0, 0] > 0).numpy())
    return masks


def test_bfloat16_autocast_stays_close_to_float32(small_model):
    sequence = davis_sequence("car-shadow")
    paths = frame_paths(sequence)[:4]
    gt = ground_truth(sequence)
    exact = track(Sam2StreamTracker(small_model, "m"), paths, gt)
    fast_tracker = Sam2StreamTracker(small_model, "m", precision=torch.bfloat16)
    fast_tracker.warm_up((480, 854), frames=2)
    fast = track(fast_tracker, paths, gt)
    for index, (a, b) in enumerate(zip(exact, fast, strict=True)):
        iou = (a & b).sum() / (a | b).sum()
        assert iou >= 0.98, f"frame {index}: bfloat16 IoU {iou:.4f}"


@pytest.mark.parametrize(
    ("count", "max_batch", "powers_of_two", "sizes"),
    [
        (1, 1, False, [1]),
        (10, 4, False, [4, 4, 2]),
        (10, 32, False, [10]),
        (11, 8, True, [8, 2, 1]),
        (40, 32, True, [32, 8]),
        (7, 32, True, [4, 2, 1]),
    ],
)
def test_objects_split_into_passes(count, max_batch, powers_of_two, sizes):
    assert split_into_passes(count, max_batch, powers_of_two) == sizes


def test_compiled_tracker_compiles_everything_in_warm_up(present_checkpoint):
    """SAM 2's vos_optimized compilation (the CUDA default), run on CPU: after warm_up,
    tracking masks and boxes with any object count compiles nothing new."""
    settings = ModelSettings(
        checkpoint=str(present_checkpoint),
        device="cpu",
        compile=True,
        hydra_overrides=("++model.image_size=256",),
    )
    tracker = Sam2StreamTracker(load_sam2(settings, {}), "m", max_batch=4)
    graphs = counters["stats"]
    before = graphs["unique_graphs"]
    tracker.warm_up((240, 320), frames=3)
    warmed = graphs["unique_graphs"]
    assert warmed > before
    sequence = davis_sequence("car-shadow")
    gt = torch.from_numpy(ground_truth(sequence))
    prompts = [MaskPrompt(gt), BoxPrompt((300.0, 150.0, 500.0, 350.0)), MaskPrompt(~gt)]
    for count in (3, 1):  # passes of 2 + 1, then 1
        masks = list(track_frames(tracker, frame_paths(sequence)[:4], prompts[:count]))
        assert len(masks) == 4
    assert graphs["unique_graphs"] == warmed
