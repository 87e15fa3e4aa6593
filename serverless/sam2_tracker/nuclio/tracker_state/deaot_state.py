"""Per-object DeAOT state, exactly what deaotpy's ``DeAOTEngine`` reads back from earlier
frames, and its safetensors layout in the stores.

One engine tracks one object (in ID slot 1): an engine holding several objects
superimposes them in one identity bank, so one object's memory could not be cut out
of it. Per LSTT layer, a frame's memory is four tensors (key, value, ID key, ID value;
DeAOT has no ID key, so that one is None), over the h x w tokens of the image at
stride 16:

* long-term: the reference frame's memory, plus (when ``DEAOT_LONG_TERM_GAP`` is
  reached) a memory every ``gap`` frames; each (h * w, 1, C) float32 in sequence form.
  deaotpy concatenates them newest first, the reference last;
* short-term: the previous frame's memory, each (1, C, h, w) float32 in 2-D form.

Memories stay float32: they feed the next frame's attention as they are, and a
rounding on the way through the store would change the masks.

Store parts (each a safetensors blob; nothing is ever unpickled):

* ``head``: format, backend, model, shape type, long-term setting; frame index and
  size, input size, the layout of a memory (which of the four tensors each layer has),
  the last box (which periodic frames are kept follows from the frame index and the
  setting: ``kept_long_term_frames``);
* ``reference``: the reference frame's memory, written once;
* ``short``: the previous frame's memory, rewritten every frame;
* ``long<k>``: ring slot k of the periodic long-term memories (frame t in slot
  (t / gap - 1) % slots);
* ``answer``: the answer on the state's frame (shared with SAM 2's layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors.torch import save as save_tensors

from tracker_state.codec import ForeignState, check_backend
from tracker_state.serialization import (
    ANSWER,
    HEAD,
    Answer,
    StateFormatError,
    _expect,
    _load,
    encode_answer,
    head_metadata,
)
from tracker_state.state import SHAPE_TYPES

DEAOT_BACKEND = "deaot"
FORMAT_VERSION = "1"
REFERENCE = "reference"
SHORT_TERM = "short"
MEMORY_DTYPE = torch.float32
ELEMENTS = 4  # key, value, ID key, ID value per layer

# Per layer, the four tensors of one frame's memory (None where the model has none).
LayerMemory = tuple[torch.Tensor | None, ...]
FrameMemory = tuple[LayerMemory, ...]


def long_term_part(slot: int) -> str:
    return f"long{slot}"


@dataclass(frozen=True)
class DeaotState:
    """Everything needed to continue tracking one object with DeAOT on its next frame.

    Attributes:
        model_id: the DeAOT model, input limit and long-term settings that made it.
        shape_type, legacy, frame_size, frame_index, last_box: as in SAM 2's
            ``ObjectState`` (the reference frame is 0).
        input_size: (h, w) of the network input (``tracking.deaot_frames``).
        reference: the reference frame's long-term memory, (h/16 * w/16, 1, C) each.
        short_term: the previous frame's memory, (1, C, h/16, w/16) each.
        long_term: periodic long-term memories, frame index -> memory as ``reference``:
            the frames ``kept_long_term_frames`` names (which the gap and the cap, both
            part of the model id, decide).
    """

    model_id: str
    shape_type: str
    legacy: bool
    frame_size: tuple[int, int]
    frame_index: int
    input_size: tuple[int, int]
    reference: FrameMemory
    short_term: FrameMemory
    long_term: dict[int, FrameMemory]
    last_box: tuple[float, float, float, float] | None = None


def _memory_tensors(memory: FrameMemory) -> dict[str, torch.Tensor]:
    return {
        f"layer{layer}.{element}": tensor.to(MEMORY_DTYPE).contiguous()
        for layer, tensors in enumerate(memory)
        for element, tensor in enumerate(tensors)
        if tensor is not None
    }


def _layout(memory: FrameMemory) -> torch.Tensor:
    return torch.tensor(
        [[tensor is not None for tensor in tensors] for tensors in memory], dtype=torch.int64
    )


def kept_long_term_frames(frame_index: int, gap: int, slots: int) -> list[int]:
    """The periodic long-term frames an object holds after ``frame_index``, oldest first.
    deaotpy adds one when ``gap`` frames have passed since the last (the reference frame
    is 0), so they are the multiples of ``gap``; at most ``slots`` newest are kept."""
    made = frame_index // gap
    return [k * gap for k in range(max(1, made - slots + 1), made + 1)]


def token_grid(input_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the stride-16 token grid for an input of ``input_size``: every DeAOT
    encoder halves a side n to ceil(n / 2) four times."""
    return (-(-input_size[0] // 16), -(-input_size[1] // 16))


class DeaotStateCodec:
    """DeAOT states in the stores, for a long-term memory every ``long_term_gap`` frames
    kept in ``long_term_slots`` ring slots (``DEAOT_MAX_LONG_TERM`` - 1): periodic frame
    t sits in slot (t / gap - 1) % slots. With ``memory_channels`` (per layer, the
    channels of its four memory tensors, None where absent: the model's), decoding also
    checks that a state fits the model."""

    backend = DEAOT_BACKEND

    def __init__(
        self,
        long_term_gap: int,
        long_term_slots: int,
        memory_channels: tuple[tuple[int | None, ...], ...] | None = None,
    ) -> None:
        self.long_term_gap = long_term_gap
        self.long_term_slots = long_term_slots
        self.memory_channels = memory_channels
        self.part_names = [
            HEAD,
            REFERENCE,
            SHORT_TERM,
            *(long_term_part(k) for k in range(long_term_slots)),
            ANSWER,
        ]

    def _slot(self, frame_index: int) -> int:
        return (frame_index // self.long_term_gap - 1) % self.long_term_slots

    def _head(self, state: DeaotState) -> bytes:
        tensors = {
            "frame_index": torch.tensor([state.frame_index], dtype=torch.int64),
            "frame_size": torch.tensor(state.frame_size, dtype=torch.int64),
            "input_size": torch.tensor(state.input_size, dtype=torch.int64),
            "layout": _layout(state.reference),
        }
        if state.last_box is not None:
            tensors["last_box"] = torch.tensor(state.last_box, dtype=torch.float64)
        metadata = {
            "format_version": FORMAT_VERSION,
            "backend": DEAOT_BACKEND,
            "model_id": state.model_id,
            "shape_type": state.shape_type,
            "legacy": "1" if state.legacy else "0",
            "long_term": self._long_term_setting(),
        }
        return save_tensors(tensors, metadata=metadata)

    def _long_term_setting(self) -> str:
        return f"every {self.long_term_gap} frames, {self.long_term_slots} slots"

    @staticmethod
    def _memory(memory: FrameMemory, frame_index: int) -> bytes:
        tensors = _memory_tensors(memory)
        tensors["frame_index"] = torch.tensor([frame_index], dtype=torch.int64)
        return save_tensors(tensors)

    def encode(self, state: DeaotState) -> dict[str, bytes]:
        parts = {
            HEAD: self._head(state),
            REFERENCE: self._memory(state.reference, 0),
            SHORT_TERM: self._memory(state.short_term, state.frame_index),
        }
        for t, memory in state.long_term.items():
            parts[long_term_part(self._slot(t))] = self._memory(memory, t)
        return parts

    def changed(self, state: DeaotState, answer: Answer | None) -> dict[str, bytes]:
        """Head, short-term memory, the answer and, on a frame that made one, the new
        periodic long-term memory."""
        parts = {
            HEAD: self._head(state),
            SHORT_TERM: self._memory(state.short_term, state.frame_index),
        }
        if answer is not None:
            parts[ANSWER] = encode_answer(answer)
        if state.frame_index in state.long_term:
            parts[long_term_part(self._slot(state.frame_index))] = self._memory(
                state.long_term[state.frame_index], state.frame_index
            )
        return parts

    def decode(self, parts: dict[str, bytes | None]) -> DeaotState:
        head_blob = parts.get(HEAD)
        check_backend(head_blob, DEAOT_BACKEND)
        head = _load(head_blob, HEAD)
        metadata = head_metadata(head_blob)
        if metadata.get("format_version") != FORMAT_VERSION:
            raise StateFormatError(
                f"DeAOT state format {metadata.get('format_version')!r} is not {FORMAT_VERSION}"
            )
        shape_type = metadata.get("shape_type")
        if shape_type not in SHAPE_TYPES:
            raise StateFormatError(f"state has an unknown shape type {shape_type!r}")
        for key, shape in (
            ("frame_index", (1,)),
            ("frame_size", (2,)),
            ("input_size", (2,)),
        ):
            _expect(head, key, torch.int64, shape)
        if metadata.get("long_term") != self._long_term_setting():
            # Another DEAOT_LONG_TERM_GAP or DEAOT_MAX_LONG_TERM made it: its model id
            # says which.
            raise ForeignState(DEAOT_BACKEND, metadata.get("model_id", "unknown"))
        layout = head.get("layout")
        if (
            layout is None
            or layout.dtype != torch.int64
            or layout.dim() != 2
            or layout.shape[1] != ELEMENTS
        ):
            raise StateFormatError("state field 'layout' is malformed")
        last_box = None
        if "last_box" in head:
            _expect(head, "last_box", torch.float64, (4,))
            last_box = tuple(float(v) for v in head["last_box"])
        frame_index = int(head["frame_index"])
        input_size = tuple(int(v) for v in head["input_size"])
        if min(input_size) < 1:
            raise StateFormatError("state field 'input_size' is malformed")
        grid = token_grid(input_size)
        present = [[bool(v) for v in row] for row in layout.tolist()]
        if not present or not any(any(row) for row in present):
            raise StateFormatError("state field 'layout' is empty")
        if self.memory_channels is not None and present != [
            [c is not None for c in row] for row in self.memory_channels
        ]:
            raise StateFormatError("state's memory layout is not this model's")
        channels: dict[tuple[int, int], int] = {}
        if self.memory_channels is not None:
            channels = {
                (layer, element): c
                for layer, row in enumerate(self.memory_channels)
                for element, c in enumerate(row)
                if c is not None
            }

        def memory(name: str, expected_frame: int, two_d: bool) -> FrameMemory:
            tensors = _load(parts.get(name), name)
            _expect(tensors, "frame_index", torch.int64, (1,))
            if int(tensors["frame_index"]) != expected_frame:
                raise StateFormatError(f"state part {name!r} holds another frame than expected")
            layers = []
            for layer, row in enumerate(present):
                elements = []
                for element, has in enumerate(row):
                    tensor = tensors.get(f"layer{layer}.{element}")
                    if has != (tensor is not None):
                        raise StateFormatError(f"state part {name!r} does not match its layout")
                    if tensor is not None:
                        width = channels.setdefault(
                            (layer, element),
                            int(tensor.shape[1 if two_d else -1]) if tensor.dim() in (3, 4) else -1,
                        )
                        shape = (1, width, *grid) if two_d else (grid[0] * grid[1], 1, width)
                        if tensor.dtype != MEMORY_DTYPE or tuple(tensor.shape) != shape:
                            raise StateFormatError(
                                f"state part {name!r} has a tensor of another shape than {shape}"
                            )
                    elements.append(tensor)
                layers.append(tuple(elements))
            return tuple(layers)

        long_term = {
            t: memory(long_term_part(self._slot(t)), t, two_d=False)
            for t in kept_long_term_frames(frame_index, self.long_term_gap, self.long_term_slots)
        }
        height, width = (int(v) for v in head["frame_size"])
        reference = memory(REFERENCE, 0, two_d=False)
        return DeaotState(
            model_id=metadata.get("model_id", ""),
            shape_type=shape_type,
            legacy=metadata.get("legacy") == "1",
            frame_size=(height, width),
            frame_index=frame_index,
            input_size=input_size,
            reference=reference,
            short_term=memory(SHORT_TERM, frame_index, two_d=True),
            long_term=long_term,
            last_box=last_box,
        )
