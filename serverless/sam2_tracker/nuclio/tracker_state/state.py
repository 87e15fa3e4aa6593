"""Per-object SAM 2 tracking state: exactly what SAM 2 reads back from earlier frames.

SAM 2's memory read (``SAM2Base._prepare_memory_conditioned_features``) looks at
three things from the past of one object, and nothing else:

* the prompt ("conditioning") frame's memory and object pointer;
* the memories of the ``num_maskmem - 1`` (= 6) frames just before the current one;
* the object pointers of the ``max_obj_ptrs_in_encoder - 1`` (= 15) frames just
  before the current one.

So an object's state is bounded however long the video is. Frame indices count
frames since the prompt unless the caller names frames: the prompt frame is 0, and
CVAT's calls are consecutive frames, so each continuation call is ``frame_index + 1``.
A caller that sends frame numbers (``numbered`` states, docs/protocol.md) tracks by them:
its keyframes (the prompt and any later ones) condition every frame as SAM 2's
conditioning frames do, at their real temporal distances, forward or backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

SHAPE_TYPES = ("mask", "polygon", "rectangle")


@dataclass(frozen=True)
class MemoryView:
    """What SAM 2's memory read looks at for one object (the parts of ``output_dict``
    that ``_prepare_memory_conditioned_features`` reads), keyed by frame index.

    Attributes:
        cond: conditioning (prompt or keyframe) frames, in the order they were added:
            frame index -> ((C_mem, h, w) bfloat16 memory, (C,) float32 object pointer).
        memories: recent non-conditioning frames -> (C_mem, h, w) bfloat16 memory.
        obj_ptrs: recent non-conditioning frames -> (C,) float32 object pointer.
    """

    cond: dict[int, tuple[torch.Tensor, torch.Tensor]]
    memories: dict[int, torch.Tensor]
    obj_ptrs: dict[int, torch.Tensor]

    def signature(self) -> tuple:
        """Views with equal signatures have the same layout and can be batched (the
        conditioning frames in their order, which SAM 2's concatenation keeps)."""
        return (
            tuple(self.cond),
            tuple(sorted(self.memories)),
            tuple(sorted(self.obj_ptrs)),
        )


@dataclass(frozen=True)
class ObjectState:
    """Everything needed to continue tracking one object on its next frame.

    Attributes:
        model_id: identifies the SAM 2 model (config and input size) whose memory this is;
            a state is only valid for the model that made it.
        shape_type: the CVAT shape type the user started with; answers are in kind.
        legacy: True when the object came from an old CVAT server (bare point arrays).
        frame_size: (height, width) in pixels of the frames of this track.
        frame_index: index of the last frame tracked (the prompt frame is 0).
        prompt_memory: (C_mem, h, w) bfloat16 memory of the prompt frame, C_mem = 64 and
            h = w = image_size / 16 for SAM 2.1.
        prompt_obj_ptr: (C,) float32 object pointer of the prompt frame, C = 256.
        memories: frame index -> (C_mem, h, w) bfloat16 memory, for at most
            ``memory_capacity`` most recent non-prompt frames.
        obj_ptrs: frame index -> (C,) float32 object pointer, for at most
            ``pointer_capacity`` most recent non-prompt frames.
        memory_capacity: how many recent memories SAM 2 reads (num_maskmem - 1).
        pointer_capacity: how many recent object pointers SAM 2 reads
            (max_obj_ptrs_in_encoder - 1).
        last_box: for rectangle objects, the last box answered where the object was seen,
            (x1, y1, x2, y2) in frame pixels: the answer while SAM 2 says it is not visible
            (CVAT's rectangle panel cannot take ``null``). None for masks and polygons.
        prompt_frame: the frame index of the prompt (0 unless ``numbered``).
        keyframes: further conditioning frames, in the order they were added: frame index
            -> ((C_mem, h, w) bfloat16 memory, (C,) float32 object pointer).
        numbered: frame indices are the caller's frame numbers (not steps since the
            prompt), so frames may be skipped and keyframes added.
        direction: +1 tracking forward, -1 backward, 0 not yet moving (on a keyframe).
        keyframe_logits: frame-numbered states: each keyframe's mask logits, (1,
            image_size / 4, image_size / 4) float32: its answer when tracking reaches it
            again (SAM 2 then answers the keyframe's own output and adds no memory).
    """

    model_id: str
    shape_type: str
    legacy: bool
    frame_size: tuple[int, int]
    frame_index: int
    prompt_memory: torch.Tensor
    prompt_obj_ptr: torch.Tensor
    memory_capacity: int
    pointer_capacity: int
    memories: dict[int, torch.Tensor] = field(default_factory=dict)
    obj_ptrs: dict[int, torch.Tensor] = field(default_factory=dict)
    last_box: tuple[float, float, float, float] | None = None
    prompt_frame: int = 0
    keyframes: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    numbered: bool = False
    direction: int = 1
    keyframe_logits: dict[int, torch.Tensor] = field(default_factory=dict)

    def is_keyframe(self, frame_index: int) -> bool:
        return frame_index == self.prompt_frame or frame_index in self.keyframes

    def next_frame(self) -> int:
        """The frame a continuation without a frame number tracks: the next one in the
        run's direction (forward on a keyframe)."""
        return self.frame_index + (self.direction or 1)

    def advanced(
        self, memory: torch.Tensor, obj_ptr: torch.Tensor, frame_index: int | None = None
    ) -> ObjectState:
        """The state after tracking ``frame_index`` (default: ``next_frame()``), given that
        frame's memory and pointer.

        Entries farther behind than SAM 2 reads fall out of the windows; ``self`` is left
        unchanged, so a call that fails later never alters the state it started from.
        """
        moved = self.passed(self.next_frame() if frame_index is None else frame_index)
        return replace(
            moved,
            memories={**moved.memories, moved.frame_index: memory},
            obj_ptrs={**moved.obj_ptrs, moved.frame_index: obj_ptr},
        )

    def passed(self, frame_index: int) -> ObjectState:
        """The state moved onto ``frame_index`` without a memory of it (one of its
        keyframes, where SAM 2 adds none): entries farther behind than SAM 2 reads fall
        out of the windows."""
        direction = 1 if frame_index > self.frame_index else -1

        def window(entries: dict, capacity: int) -> dict:
            return {t: v for t, v in entries.items() if (frame_index - t) * direction < capacity}

        return replace(
            self,
            frame_index=frame_index,
            direction=direction,
            memories=window(self.memories, self.memory_capacity),
            obj_ptrs=window(self.obj_ptrs, self.pointer_capacity),
        )

    def with_keyframe(
        self,
        frame_index: int,
        memory: torch.Tensor,
        obj_ptr: torch.Tensor,
        logits: torch.Tensor,
        last_box: tuple[float, float, float, float] | None = None,
    ) -> ObjectState:
        """The state with one more conditioning frame, as ``add_new_mask`` (or a box) on an
        object that has prompts: a run starts there, so memories of earlier tracked
        frames are dropped (as in SAM 2 propagating afresh from its keyframes). A keyframe
        on a frame that already is one replaces it in place."""
        changes: dict = {}
        if frame_index == self.prompt_frame:
            changes = {"prompt_memory": memory, "prompt_obj_ptr": obj_ptr}
        else:
            changes = {"keyframes": {**self.keyframes, frame_index: (memory, obj_ptr)}}
        return replace(
            self,
            **changes,
            frame_index=frame_index,
            direction=0,
            memories={},
            obj_ptrs={},
            keyframe_logits={**self.keyframe_logits, frame_index: logits},
            last_box=last_box if last_box is not None else self.last_box,
        )

    def memory_view(self) -> MemoryView:
        """SAM 2's view of this object: the prompt, then the later keyframes, as its
        conditioning outputs (in the order they were added)."""
        cond = {self.prompt_frame: (self.prompt_memory, self.prompt_obj_ptr), **self.keyframes}
        return MemoryView(cond, self.memories, self.obj_ptrs)
