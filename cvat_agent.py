"""The SAM 2 tracker as a CVAT agent function (CVAT Online and Enterprise).

    cvat-cli function create-native "SAM 2.1 tracker" --function-file cvat_agent.py \\
        -p checkpoint=str:/path/to/sam2.1_hiera_tiny.pt
    cvat-cli function run-agent <ID> --function-file cvat_agent.py \\
        -p checkpoint=str:/path/to/sam2.1_hiera_tiny.pt -p device=str:cuda

cvat-cli loads this file, calls ``create(...)`` with the ``-p`` parameters, and per
request calls ``preprocess_image`` once (SAM 2's image features, shared by every object
of the request), then ``init_tracking_state`` or ``track`` per object. The computation is
the Nuclio function's engine, exactly SAM 2's video predictor; each object's state is
what SAM 2 reads back (prompt memory, 6 memories in bfloat16, 15 pointers), held in host
memory whatever the device: 3,686,400 bytes per object at the 1024 input
(``state_bytes``), the same after frame 15 as after frame 1500. cvat-cli keeps states in
its one worker process, for 8 hours after last use.
"""

# No ``from __future__ import annotations``: cvat-cli loads this file without registering
# it in sys.modules, where dataclasses would look up string annotations.
from dataclasses import dataclass, replace

import cvat_sdk.auto_annotation as cvataa
import PIL.Image
from tracker_state.state import ObjectState
from tracking.answers import answer_points, shape_prompt
from tracking.engine import BoxPrompt, FrameFeatures, Sam2StreamTracker
from tracking.model_loading import (
    ModelSettings,
    build_tracker,
    hole_filling_note,
    load_sam2,
)

SHAPE_TYPES = ["mask", "polygon", "rectangle"]


@dataclass
class AgentObject:
    """The state cvat-cli keeps for one object; ``track`` advances it in place."""

    state: ObjectState


def on_host(state: ObjectState) -> ObjectState:
    """The state with every tensor in host memory (bfloat16 memories, float32 pointers),
    so thousands of abandoned tracks hold host memory, not GPU memory."""
    return replace(
        state,
        prompt_memory=state.prompt_memory.cpu(),
        prompt_obj_ptr=state.prompt_obj_ptr.cpu(),
        memories={t: m.cpu() for t, m in state.memories.items()},
        obj_ptrs={t: p.cpu() for t, p in state.obj_ptrs.items()},
    )


def state_bytes(state: ObjectState) -> int:
    """Bytes of tensor data one object's state holds."""
    tensors = [
        state.prompt_memory,
        state.prompt_obj_ptr,
        *state.memories.values(),
        *state.obj_ptrs.values(),
    ]
    return sum(t.numel() * t.element_size() for t in tensors)


class Sam2TrackingFunction:
    """cvat-sdk's TrackingFunction protocol over the stream tracker."""

    spec = cvataa.TrackingFunctionSpec(supported_shape_types=SHAPE_TYPES)

    def __init__(self, tracker: Sam2StreamTracker) -> None:
        self.tracker = tracker

    def preprocess_image(self, context, image: PIL.Image.Image) -> FrameFeatures:
        """SAM 2's features of the frame (they carry its size), once for every object."""
        return self.tracker.encode(self.tracker.prepare(image.convert("RGB")))

    def init_tracking_state(
        self, context, pp_image: FrameFeatures, shape: cvataa.TrackableShape
    ) -> AgentObject:
        # A malformed shape raises ShapeError naming the problem (cvat-cli logs it and
        # fails the request).
        prompt = shape_prompt(shape.type, list(shape.points), pp_image.frame_size)
        [result] = self.tracker.start(pp_image, [prompt], [shape.type], [False])
        box = prompt.box if isinstance(prompt, BoxPrompt) else None
        _, state = answer_points(self.tracker, result, pp_image.frame_size, box)
        return AgentObject(on_host(state))

    def track(
        self, context, pp_image: FrameFeatures, state: AgentObject
    ) -> cvataa.TrackableShape | None:
        [result] = self.tracker.step(pp_image, [state.state])
        points, new_state = answer_points(
            self.tracker, result, pp_image.frame_size, result.state.last_box
        )
        state.state = on_host(new_state)
        if points is None:
            return None
        return cvataa.TrackableShape(type=new_state.shape_type, points=points)


def create(
    checkpoint: str | None = None,
    model_cfg: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    object_batch: int | None = None,
    image_size: int | None = None,
) -> Sam2TrackingFunction:
    """The function cvat-cli runs; unset parameters default as in the Nuclio function
    (official tiny checkpoint downloaded when none is given, CUDA when present, bfloat16
    and compiled on CUDA, float32 on CPU)."""
    defaults = ModelSettings()
    settings = ModelSettings(
        config=model_cfg or defaults.config,
        checkpoint=checkpoint,
        device=device,
        precision=precision,
        object_batch=object_batch,
        hydra_overrides=(f"++model.image_size={image_size}",) if image_size else (),
    )
    hole_filling_note()  # without sam2._C, SAM 2's per-frame warning is silenced once
    return Sam2TrackingFunction(build_tracker(load_sam2(settings, {}), settings))
