"""Per-object SAM 2 tracking state: exactly what SAM 2 reads back from earlier frames.

SAM 2's memory read (``SAM2Base._prepare_memory_conditioned_features``) looks at
three things from the past of one object, and nothing else:

* the prompt ("conditioning") frame's memory and object pointer;
* the memories of the ``num_maskmem - 1`` (= 6) frames just before the current one;
* the object pointers of the ``max_obj_ptrs_in_encoder - 1`` (= 15) frames just
  before the current one.

So an object's state is bounded however long the video is. Frame indices count
frames since the prompt: the prompt frame is 0, and CVAT's calls are consecutive
frames, so each continuation call is ``frame_index + 1``.
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

    def advanced(self, memory: torch.Tensor, obj_ptr: torch.Tensor) -> ObjectState:
        """The state after tracking the next frame, given that frame's memory and pointer.

        Older entries fall out of the windows SAM 2 reads; ``self`` is left unchanged,
        so a call that fails later never alters the state it started from.
        """
        frame_index = self.frame_index + 1
        memories = {
            t: m for t, m in self.memories.items() if t > frame_index - self.memory_capacity
        }
        memories[frame_index] = memory
        obj_ptrs = {
            t: p for t, p in self.obj_ptrs.items() if t > frame_index - self.pointer_capacity
        }
        obj_ptrs[frame_index] = obj_ptr
        return replace(self, frame_index=frame_index, memories=memories, obj_ptrs=obj_ptrs)

    def memory_view(self) -> MemoryView:
        """SAM 2's view of this object: the prompt as frame 0's conditioning output."""
        return MemoryView(
            {0: (self.prompt_memory, self.prompt_obj_ptr)}, self.memories, self.obj_ptrs
        )
