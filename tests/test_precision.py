"""Device and precision handling (CUDA settings resolved without a GPU; bfloat16 run on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import davis_sequence, frame_paths, ground_truth, track_frames

from tracking.engine import MaskPrompt, Sam2StreamTracker
from tracking.model_loading import ModelSettings, ModelSetupError


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
