"""Safe, versioned serialisation of ObjectState into a few independent parts.

A state is stored as named parts, each a safetensors blob (tensors plus a small
string header; nothing is ever unpickled):

* ``head``: format version, model id, shape type, frame index and size, the
  prompt's object pointer and a fixed ring of ``pointer_capacity`` recent
  pointers (unused rows have frame index -1). Fixed size, so the bytes held per
  object do not grow with the video.
* ``prompt``: the prompt frame's memory, written when tracking starts (and again when a
  keyframe replaces the prompt).
* ``keys``: the memories of keyframes added later (frame-numbered states only), written
  when a keyframe is added; their pointers are in the head.
* ``mem<k>``: ring slot k = frame_index % memory_capacity, one recent memory with
  the frame index it belongs to (checked against the head on load, which also
  catches a torn or mixed-up write).
* ``answer``: what the function answered for this object on the state's frame
  (JSON: frame index, SHA-256 of the frame CVAT sent, the shape), so a replayed
  call gets the same answer without tracking the frame again. Not part of the
  ObjectState: a few bytes to a few KiB, no tensors.

Per tracked frame only ``head``, one ``mem<k>`` and ``answer`` change (see
``changed_parts``); a keyframe call writes ``head``, ``prompt``, ``keys`` and ``answer``.
Format 3 added frame-numbered states (the prompt's frame, the direction, later
keyframes); format 2 the head's optional ``last_box``; formats 1 and 2 are still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from tracker_state.state import SHAPE_TYPES, ObjectState

FORMAT_VERSION = "3"
READABLE_VERSIONS = ("1", "2", "3")
ANSWER_FORMAT = "2"  # stored answers: frame index, frame digest, shape (+ the frame before)
HEAD = "head"
PROMPT = "prompt"
KEYS = "keys"
ANSWER = "answer"
MEMORY_DTYPE = torch.bfloat16
POINTER_DTYPE = torch.float32
LOGITS_DTYPE = torch.float32  # keyframes' low-res mask logits, (1, image_size/4, image_size/4)


class StateFormatError(ValueError):
    """Stored bytes are not a state this version can read."""


def memory_part(slot: int) -> str:
    return f"mem{slot}"


def part_names(memory_capacity: int) -> list[str]:
    """Every part a state may have, for a model reading ``memory_capacity`` memories."""
    return [HEAD, PROMPT, KEYS, *(memory_part(k) for k in range(memory_capacity)), ANSWER]


@dataclass(frozen=True)
class Answer:
    """What was answered for one object on one frame.

    Attributes:
        frame_index: the state's frame index after that call.
        frame_digest: SHA-256 (hex) of the ``image`` string CVAT sent for that frame.
        shape: the JSON value answered for the object (a shape, bare points or None).
        from_frame_index: the state's frame index before that call (None: one frame
            earlier, as answers written before frame-numbered states say implicitly).
    """

    frame_index: int
    frame_digest: str
    shape: object
    from_frame_index: int | None = None

    @property
    def previous_frame_index(self) -> int:
        if self.from_frame_index is None:
            return self.frame_index - 1
        return self.from_frame_index


def encode_answer(answer: Answer) -> bytes:
    data = {
        "format_version": ANSWER_FORMAT,
        "frame_index": answer.frame_index,
        "frame_digest": answer.frame_digest,
        "shape": answer.shape,
    }
    if answer.from_frame_index is not None:
        data["from_frame_index"] = answer.from_frame_index
    return json.dumps(data).encode()


def decode_answer(blob: bytes | None) -> Answer | None:
    """The stored answer, or None when there is none or it is not one this version wrote
    (a replay is then refused as a conflict, never answered wrongly)."""
    if not blob:
        return None
    try:
        data = json.loads(bytes(blob))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("format_version") != ANSWER_FORMAT
        or not isinstance(data.get("frame_index"), int)
        or not isinstance(data.get("frame_digest"), str)
        or not isinstance(data.get("from_frame_index", 0), int)
    ):
        return None
    return Answer(
        data["frame_index"], data["frame_digest"], data.get("shape"), data.get("from_frame_index")
    )


def _encode_head(state: ObjectState) -> bytes:
    channels = state.prompt_obj_ptr.shape[0]
    ring = torch.zeros(state.pointer_capacity, channels, dtype=POINTER_DTYPE)
    ring_frames = torch.full((state.pointer_capacity,), -1, dtype=torch.int64)
    for t, ptr in state.obj_ptrs.items():
        ring[t % state.pointer_capacity] = ptr
        ring_frames[t % state.pointer_capacity] = t
    memory_frames = torch.full((state.memory_capacity,), -1, dtype=torch.int64)
    for t in state.memories:
        memory_frames[t % state.memory_capacity] = t
    tensors = {
        "frame_index": torch.tensor([state.frame_index], dtype=torch.int64),
        "frame_size": torch.tensor(state.frame_size, dtype=torch.int64),
        "prompt_obj_ptr": state.prompt_obj_ptr.to(POINTER_DTYPE).contiguous(),
        "obj_ptrs": ring,
        "obj_ptr_frames": ring_frames,
        "memory_frames": memory_frames,
        "memory_shape": torch.tensor(tuple(state.prompt_memory.shape), dtype=torch.int64),
        "prompt_frame": torch.tensor([state.prompt_frame], dtype=torch.int64),
        "direction": torch.tensor([state.direction], dtype=torch.int64),
    }
    if state.keyframes:
        tensors["keyframe_frames"] = torch.tensor(list(state.keyframes), dtype=torch.int64)
        tensors["keyframe_ptrs"] = torch.stack(
            [ptr.to(POINTER_DTYPE) for _, ptr in state.keyframes.values()]
        ).contiguous()
    if state.last_box is not None:
        tensors["last_box"] = torch.tensor(state.last_box, dtype=torch.float64)
    metadata = {
        "format_version": FORMAT_VERSION,
        "backend": "sam2",
        "model_id": state.model_id,
        "shape_type": state.shape_type,
        "legacy": "1" if state.legacy else "0",
        "numbered": "1" if state.numbered else "0",
    }
    return save_tensors(tensors, metadata=metadata)


def _encode_memory(
    memory: torch.Tensor, frame_index: int, logits: torch.Tensor | None = None
) -> bytes:
    tensors = {
        "memory": memory.to(MEMORY_DTYPE).contiguous(),
        "frame_index": torch.tensor([frame_index], dtype=torch.int64),
    }
    if logits is not None:  # a keyframe's answer (frame-numbered states)
        tensors["logits"] = logits.to(LOGITS_DTYPE).contiguous()
    return save_tensors(tensors)


def _encode_keyframes(state: ObjectState) -> bytes:
    tensors = {}
    for i, (frame, (memory, _)) in enumerate(state.keyframes.items()):
        tensors[f"memory_{i}"] = memory.to(MEMORY_DTYPE).contiguous()
        tensors[f"logits_{i}"] = state.keyframe_logits[frame].to(LOGITS_DTYPE).contiguous()
    tensors["frames"] = torch.tensor(list(state.keyframes), dtype=torch.int64)
    return save_tensors(tensors)


def _keyframe_parts(state: ObjectState) -> dict[str, bytes]:
    logits = state.keyframe_logits.get(state.prompt_frame)
    parts = {PROMPT: _encode_memory(state.prompt_memory, state.prompt_frame, logits)}
    if state.keyframes:
        parts[KEYS] = _encode_keyframes(state)
    return parts


def encode_state(state: ObjectState) -> dict[str, bytes]:
    """All parts of a state (used when tracking starts and in tests)."""
    parts = {HEAD: _encode_head(state), **_keyframe_parts(state)}
    for t, memory in state.memories.items():
        parts[memory_part(t % state.memory_capacity)] = _encode_memory(memory, t)
    return parts


def just_keyed(state: ObjectState) -> bool:
    """Whether the state was made by a keyframe call (a run starts on its keyframe)."""
    return state.direction == 0 and not state.memories


def changed_parts(state: ObjectState, answer: Answer | None = None) -> dict[str, bytes]:
    """The parts that differ from the state one call earlier: the head, the newest memory
    (or, after a keyframe call, the keyframes) and, when given, the answer on that frame."""
    parts = {HEAD: _encode_head(state)}
    if answer is not None:
        parts[ANSWER] = encode_answer(answer)
    if just_keyed(state):
        parts.update(_keyframe_parts(state))
    newest = state.frame_index
    if newest in state.memories:
        parts[memory_part(newest % state.memory_capacity)] = _encode_memory(
            state.memories[newest], newest
        )
    return parts


def _load(blob: bytes | None, name: str) -> dict[str, torch.Tensor]:
    if not isinstance(blob, bytes | bytearray) or len(blob) < 8:
        raise StateFormatError(f"state part {name!r} is missing or truncated")
    try:
        return load_tensors(bytes(blob))
    except (SafetensorError, ValueError) as error:
        raise StateFormatError(f"state part {name!r} is not readable: {error}") from error


def head_metadata(head: bytes | None) -> dict[str, str]:
    """The string metadata of a part (safetensors: an 8-byte little-endian header length,
    then the JSON header); empty when the bytes hold no readable header."""
    if not isinstance(head, bytes | bytearray) or len(head) < 8:
        return {}
    length = int.from_bytes(head[:8], "little")
    try:
        header = json.loads(bytes(head[8 : 8 + length]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def _expect(tensors: dict[str, torch.Tensor], key: str, dtype: torch.dtype, shape: tuple) -> None:
    tensor = tensors.get(key)
    if tensor is None or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
        raise StateFormatError(f"state field {key!r} has an unexpected type or shape")


def stored_frame_index(head: bytes) -> int:
    """Frame index recorded in a stored head part, without decoding the whole state."""
    tensors = _load(head, HEAD)
    _expect(tensors, "frame_index", torch.int64, (1,))
    return int(tensors["frame_index"])


def decode_state(parts: dict[str, bytes | None]) -> ObjectState:
    """Rebuild a state from its parts, validating every field; raises StateFormatError."""
    head_blob = parts.get(HEAD)
    head = _load(head_blob, HEAD)
    metadata = head_metadata(head_blob)
    if metadata.get("format_version") not in READABLE_VERSIONS:
        raise StateFormatError(
            f"state format {metadata.get('format_version')!r} is not one of {READABLE_VERSIONS}"
        )
    shape_type = metadata.get("shape_type")
    if shape_type not in SHAPE_TYPES:
        raise StateFormatError(f"state has an unknown shape type {shape_type!r}")
    _expect(head, "memory_shape", torch.int64, (3,))
    memory_shape = tuple(int(v) for v in head["memory_shape"])
    ring = head.get("obj_ptrs")
    if ring is None or ring.dim() != 2:
        raise StateFormatError("state field 'obj_ptrs' is malformed")
    pointer_capacity, channels = ring.shape
    memory_frames = head.get("memory_frames")
    if memory_frames is None or memory_frames.dim() != 1 or memory_frames.numel() == 0:
        raise StateFormatError("state field 'memory_frames' is malformed")
    memory_capacity = memory_frames.numel()
    _expect(head, "frame_index", torch.int64, (1,))
    _expect(head, "frame_size", torch.int64, (2,))
    _expect(head, "prompt_obj_ptr", POINTER_DTYPE, (channels,))
    _expect(head, "obj_ptrs", POINTER_DTYPE, (pointer_capacity, channels))
    _expect(head, "obj_ptr_frames", torch.int64, (pointer_capacity,))
    _expect(head, "memory_frames", torch.int64, (memory_capacity,))
    last_box = None
    if "last_box" in head:
        _expect(head, "last_box", torch.float64, (4,))
        last_box = tuple(float(v) for v in head["last_box"])
    prompt_frame, direction = 0, 1  # format 1 and 2: steps since a prompt on frame 0
    if metadata.get("format_version") == FORMAT_VERSION:
        _expect(head, "prompt_frame", torch.int64, (1,))
        _expect(head, "direction", torch.int64, (1,))
        prompt_frame, direction = int(head["prompt_frame"]), int(head["direction"])
        if direction not in (-1, 0, 1):
            raise StateFormatError("state field 'direction' is malformed")

    keyframe_logits: dict[int, torch.Tensor] = {}

    def load_memory(name: str, frame_index: int) -> torch.Tensor:
        tensors = _load(parts.get(name), name)
        _expect(tensors, "memory", MEMORY_DTYPE, memory_shape)
        _expect(tensors, "frame_index", torch.int64, (1,))
        if int(tensors["frame_index"]) != frame_index:
            raise StateFormatError(f"state part {name!r} holds another frame than expected")
        if "logits" in tensors:
            if tensors["logits"].dtype != LOGITS_DTYPE or tensors["logits"].dim() != 3:
                raise StateFormatError(f"state part {name!r} holds malformed logits")
            keyframe_logits[frame_index] = tensors["logits"]
        return tensors["memory"]

    frame_index = int(head["frame_index"])
    memories = {
        int(t): load_memory(memory_part(slot), int(t))
        for slot, t in enumerate(memory_frames.tolist())
        if t >= 0
    }
    obj_ptrs = {
        int(t): head["obj_ptrs"][slot].clone()
        for slot, t in enumerate(head["obj_ptr_frames"].tolist())
        if t >= 0
    }
    keyframes = _decode_keyframes(parts.get(KEYS), head, memory_shape, channels, keyframe_logits)
    height, width = (int(v) for v in head["frame_size"])
    return ObjectState(
        model_id=metadata.get("model_id", ""),
        shape_type=shape_type,
        legacy=metadata.get("legacy") == "1",
        frame_size=(height, width),
        frame_index=frame_index,
        prompt_memory=load_memory(PROMPT, prompt_frame),
        prompt_obj_ptr=head["prompt_obj_ptr"],
        memory_capacity=memory_capacity,
        pointer_capacity=pointer_capacity,
        memories=memories,
        obj_ptrs=obj_ptrs,
        last_box=last_box,
        prompt_frame=prompt_frame,
        keyframes=keyframes,
        numbered=metadata.get("numbered") == "1",
        direction=direction,
        keyframe_logits=keyframe_logits,
    )


def _decode_keyframes(
    blob: bytes | None,
    head: dict[str, torch.Tensor],
    memory_shape: tuple,
    channels: int,
    logits: dict[int, torch.Tensor],
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The later keyframes: frames and pointers from the head, memories (and their logits,
    into ``logits``) from ``keys``."""
    if "keyframe_frames" not in head:
        return {}
    frames = head["keyframe_frames"]
    if frames.dtype != torch.int64 or frames.dim() != 1 or frames.numel() == 0:
        raise StateFormatError("state field 'keyframe_frames' is malformed")
    count = frames.numel()
    _expect(head, "keyframe_ptrs", POINTER_DTYPE, (count, channels))
    tensors = _load(blob, KEYS)
    _expect(tensors, "frames", torch.int64, (count,))
    if not torch.equal(tensors["frames"], frames):
        raise StateFormatError("state part 'keys' holds other keyframes than the head")
    keyframes = {}
    for i, t in enumerate(frames.tolist()):
        _expect(tensors, f"memory_{i}", MEMORY_DTYPE, memory_shape)
        keyframes[int(t)] = (tensors[f"memory_{i}"], head["keyframe_ptrs"][i].clone())
        key_logits = tensors.get(f"logits_{i}")
        if key_logits is None or key_logits.dtype != LOGITS_DTYPE or key_logits.dim() != 3:
            raise StateFormatError("state part 'keys' holds malformed logits")
        logits[int(t)] = key_logits
    return keyframes
