"""ObjectState windows and its safetensors serialisation."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from tracker_state import ObjectState, StateFormatError, decode_state, encode_state
from tracker_state.serialization import (
    ANSWER,
    HEAD,
    PROMPT,
    Answer,
    changed_parts,
    decode_answer,
    encode_answer,
    memory_part,
)

MEMORY_SHAPE = (64, 32, 32)


def random_state(frames: int = 0, shape_type: str = "mask", seed: int = 0) -> ObjectState:
    """A state after ``frames`` tracked frames past the prompt, with random tensors."""
    generator = torch.Generator().manual_seed(seed)
    state = ObjectState(
        model_id="sam2.1_hiera_t@512",
        shape_type=shape_type,
        legacy=False,
        frame_size=(480, 854),
        frame_index=0,
        prompt_memory=torch.randn(MEMORY_SHAPE, generator=generator).to(torch.bfloat16),
        prompt_obj_ptr=torch.randn(256, generator=generator),
        memory_capacity=6,
        pointer_capacity=15,
    )
    for _ in range(frames):
        state = state.advanced(
            torch.randn(MEMORY_SHAPE, generator=generator).to(torch.bfloat16),
            torch.randn(256, generator=generator),
        )
    return state


def assert_same_state(a: ObjectState, b: ObjectState) -> None:
    assert (a.model_id, a.shape_type, a.legacy, a.frame_size, a.frame_index) == (
        b.model_id,
        b.shape_type,
        b.legacy,
        b.frame_size,
        b.frame_index,
    )
    assert (a.memory_capacity, a.pointer_capacity) == (b.memory_capacity, b.pointer_capacity)
    assert torch.equal(a.prompt_memory, b.prompt_memory)
    assert a.prompt_memory.dtype == b.prompt_memory.dtype == torch.bfloat16
    assert torch.equal(a.prompt_obj_ptr, b.prompt_obj_ptr)
    assert sorted(a.memories) == sorted(b.memories)
    assert sorted(a.obj_ptrs) == sorted(b.obj_ptrs)
    for t in a.memories:
        assert torch.equal(a.memories[t], b.memories[t])
    for t in a.obj_ptrs:
        assert torch.equal(a.obj_ptrs[t], b.obj_ptrs[t])
    assert a.last_box == b.last_box


@pytest.mark.parametrize("frames", [0, 1, 5, 6, 7, 15, 16, 40])
def test_windows_hold_exactly_what_sam2_reads(frames):
    state = random_state(frames)
    assert state.frame_index == frames
    assert sorted(state.memories) == list(range(max(1, frames - 5), frames + 1))
    assert sorted(state.obj_ptrs) == list(range(max(1, frames - 14), frames + 1))


def test_advancing_leaves_the_old_state_unchanged():
    before = random_state(3)
    memories = dict(before.memories)
    after = before.advanced(torch.zeros(MEMORY_SHAPE, dtype=torch.bfloat16), torch.zeros(256))
    assert before.frame_index == 3 and after.frame_index == 4
    assert before.memories == memories


@pytest.mark.parametrize("frames", [0, 2, 9, 23])
@pytest.mark.parametrize("shape_type", ["mask", "polygon", "rectangle"])
def test_serialisation_round_trip(frames, shape_type):
    state = random_state(frames, shape_type)
    assert_same_state(decode_state(encode_state(state)), state)


def test_changed_parts_applied_to_the_previous_parts_give_the_new_state():
    state = random_state(8)
    parts = encode_state(state)
    nxt = state.advanced(torch.ones(MEMORY_SHAPE, dtype=torch.bfloat16), torch.ones(256))
    changes = changed_parts(nxt)
    assert set(changes) == {HEAD, memory_part(9 % 6)}
    parts.update(changes)
    assert_same_state(decode_state(parts), nxt)
    answer = Answer(9, "ab" * 32, {"type": "rectangle", "points": [0.5, 1.0, 30.0, 2e-7]})
    assert set(changed_parts(nxt, answer)) == {HEAD, memory_part(9 % 6), ANSWER}


def test_last_box_round_trips_and_follows_the_state():
    box = (12.0, 7.5, 300.0, 200.25)
    state = replace(random_state(2, "rectangle"), last_box=box)
    assert decode_state(encode_state(state)).last_box == box
    assert (
        state.advanced(torch.zeros(MEMORY_SHAPE, dtype=torch.bfloat16), torch.zeros(256)).last_box
        == box
    )
    assert decode_state(encode_state(random_state(2))).last_box is None


def test_format_1_heads_are_still_read():
    """States written before ``last_box`` existed (format 1) stay usable after an upgrade."""
    parts = encode_state(random_state(4, "rectangle"))
    head = parts[HEAD]
    length = int.from_bytes(head[:8], "little")
    header = head[8 : 8 + length].replace(b'"format_version":"2"', b'"format_version":"1"')
    assert len(header) == length
    old = {**parts, HEAD: head[:8] + header + head[8 + length :]}
    assert_same_state(decode_state(old), random_state(4, "rectangle"))


def test_answers_round_trip_exactly_and_refuse_anything_else():
    shape = {"type": "polygon", "points": [0.1, 0.2, 1 / 3, 1e300, 5.0, 6.5]}
    answer = Answer(12, "cd" * 32, shape)
    decoded = decode_answer(encode_answer(answer))
    assert decoded == answer
    # The replayed JSON is byte-identical to the first answer's.
    assert json.dumps(decoded.shape) == json.dumps(shape)
    assert decode_answer(None) is None
    for junk in (b"\x80\x04\x95pickle", b"[1, 2]", b'{"frame_index": "3"}', b"\xff"):
        assert decode_answer(junk) is None


def test_stored_size_stops_growing_once_windows_are_full():
    def size(frames):
        return sum(len(blob) for blob in encode_state(random_state(frames)).values())

    assert size(3) < size(6)  # memories accumulate up to the 6 SAM 2 reads ...
    assert size(6) == size(8) == size(12) == size(16) == size(60)  # ... then nothing grows
    # The head keeps a fixed-size pointer ring, so it never grows either.
    assert len(encode_state(random_state(1))[HEAD]) == len(encode_state(random_state(30))[HEAD])


def test_corrupt_or_foreign_bytes_are_refused():
    parts = encode_state(random_state(7))
    with pytest.raises(StateFormatError):
        decode_state({**parts, HEAD: b"not a safetensors blob"})
    with pytest.raises(StateFormatError):
        decode_state({**parts, PROMPT: None})
    with pytest.raises(StateFormatError):  # a slot holding another frame than the head says
        decode_state({**parts, memory_part(7 % 6): parts[memory_part(6 % 6)]})
    with pytest.raises(StateFormatError):
        decode_state({**parts, HEAD: b"\xff" * 8 + b"{}"})
    pickled = b"\x80\x04\x95" + b"\x00" * 40  # a pickle header is just unreadable bytes here
    with pytest.raises(StateFormatError):
        decode_state({**parts, HEAD: pickled})
