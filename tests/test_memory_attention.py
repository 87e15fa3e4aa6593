"""Memory attention with its frame-only part shared by the objects of a frame."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import SMALL_IMAGE_SIZE
from tracking.engine import BoxPrompt, Sam2StreamTracker
from tracking.memory_attention import FrameSharedMemoryAttention

TOKENS = (SMALL_IMAGE_SIZE // 16) ** 2
CHANNELS, MEMORY_CHANNELS = 256, 64
POINTER_TOKENS = 16


def attention_inputs(batch_size: int, memories: int = 3, shared_frame: bool = True) -> dict:
    """Arguments as ``_prepare_memory_conditioned_features`` passes them: frame tokens
    (expanded views of one frame when ``shared_frame``) and (M, B, 64) memory tokens."""
    generator = torch.Generator().manual_seed(batch_size * 10 + memories)
    columns = 1 if shared_frame else batch_size
    curr, curr_pos = (
        torch.randn(TOKENS, columns, CHANNELS, generator=generator).expand(-1, batch_size, -1)
        for _ in range(2)
    )
    length = memories * TOKENS + POINTER_TOKENS
    memory, memory_pos = (
        torch.randn(length, batch_size, MEMORY_CHANNELS, generator=generator) for _ in range(2)
    )
    return {
        "curr": [curr],
        "curr_pos": [curr_pos],
        "memory": memory,
        "memory_pos": memory_pos,
        "num_obj_ptr_tokens": POINTER_TOKENS,
    }


def in_frame(shared: FrameSharedMemoryAttention, model, inputs: dict) -> torch.Tensor:
    """``shared`` called as the engine calls it: inside ``frame()`` of column 0's frame."""
    (curr,), (curr_pos,) = inputs["curr"], inputs["curr_pos"]
    with shared.frame(model, curr[:, :1], curr_pos[:, :1]):
        return shared(**inputs)


@torch.inference_mode()
def test_one_object_is_bit_identical_and_batches_agree(small_model):
    original = small_model.memory_attention
    shared = FrameSharedMemoryAttention(original)
    single = attention_inputs(1)
    assert torch.equal(in_frame(shared, small_model, single), original(**single))
    batch = attention_inputs(3)
    expected = original(**batch)
    assert (in_frame(shared, small_model, batch) - expected).abs().max() <= 1e-5
    # Different frames per column (not SAM 2's call pattern): plain SAM 2, exactly.
    mixed = attention_inputs(2, shared_frame=False)
    assert torch.equal(in_frame(shared, small_model, mixed), original(**mixed))


@torch.inference_mode()
def test_frame_part_runs_once_per_frame_whatever_the_object_count(small_model):
    tracker = Sam2StreamTracker(small_model, "m", max_batch=1)
    calls = {"layer 0": 0, "layer 1": 0}
    layers = small_model.memory_attention.layers
    hooks = [
        layers[0].self_attn.register_forward_hook(
            lambda *_: calls.update({"layer 0": calls["layer 0"] + 1})
        ),
        layers[1].self_attn.register_forward_hook(
            lambda *_: calls.update({"layer 1": calls["layer 1"] + 1})
        ),
    ]
    try:
        features = tracker.encode_frame(
            torch.rand(1, 3, SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE), (480, 854)
        )
        boxes = [BoxPrompt((100.0 + 50 * i, 100.0, 300.0 + 50 * i, 400.0)) for i in range(3)]
        states = [r.state for r in tracker.start(features, boxes, ["mask"] * 3, [False] * 3)]
        for _ in range(2):
            states = [r.state for r in tracker.step(features, states)]
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"layer 0": 2, "layer 1": 6}
    # Outside a frame the model is SAM 2's own again and nothing is cached.
    assert small_model.memory_attention is tracker._memory_attention.attention
    assert tracker._memory_attention._shared is None
    with (
        pytest.raises(ValueError, match="another model"),
        tracker._memory_attention.frame(
            SimpleNamespace(memory_attention=torch.nn.Identity()), None, None
        ),
    ):
        pass


@torch.inference_mode()
def test_compiled_parts_match_eager(small_model):
    """The parts compiled as SAM 2's vos_optimized mode compiles memory attention
    (the CUDA default) compile as one graph each and compute the same (CPU inductor)."""
    original = small_model.memory_attention
    compiled = FrameSharedMemoryAttention(original, compile_parts=True)
    inputs = attention_inputs(3, memories=2)
    assert (in_frame(compiled, small_model, inputs) - original(**inputs)).abs().max() <= 1e-5
