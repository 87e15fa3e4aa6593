"""Frame-by-frame SAM 2 tracking with explicit, bounded per-object state.

The engine runs SAM 2's own modules (``SAM2Base.forward_image`` and ``track_step``,
``_encode_new_memory``) on one frame at a time. For each object it rebuilds the
small ``output_dict`` SAM 2's memory read looks at (a ``MemoryView``: conditioning
frames, 6 recent memories, 15 recent object pointers; see ``tracker_state.state``) and
feeds it to ``track_step`` so the computation is the official predictor's, step for
step. ``Sam2StreamTracker.step`` serves CVAT's frame-by-frame calls (the prompt as
frame 0); ``track`` serves any view at any frame index, forward or backward, which the
keyframe video tracker (``tracking.video``) uses:

* prompt frame: ``track_step`` with the mask or box prompt and no memory encoding,
  hole filling of the low-res logits, then the prompt memory encoded from those
  logits upsampled to the input size and binarised (``propagate_in_video_preflight``);
* later frames: ``track_step`` with memory encoding, memory kept in bfloat16 and
  hole filling of the low-res logits (``_run_single_frame_inference``);
* ``num_frames`` is a large constant: a stream has no known length, and for any
  video of 16 or more frames the official predictor reads the same pointers.

Image features are computed once per frame for all objects, and so is the part of
memory attention that depends only on the frame (``tracking.memory_attention``);
objects whose memory has the same layout (same frame index) go through memory
attention and the heads as one batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sam2.sam2_video_predictor import SAM2VideoPredictor, SAM2VideoPredictorVOS
from sam2.utils.misc import fill_holes_in_mask_scores
from tracker_state.codec import SAM2_BACKEND, Sam2StateCodec
from tracker_state.state import MemoryView, ObjectState

from tracking.frames import PreparedFrame, preprocess_frame
from tracking.memory_attention import FrameSharedMemoryAttention

# Stands in for the unknown video length (only ``min(num_frames, 16)`` and
# ``t >= num_frames`` depend on it inside SAM 2).
STREAM_LENGTH = 1 << 30
DEFAULT_GPU_BATCH = 32


def split_into_passes(count: int, max_batch: int, powers_of_two: bool) -> list[int]:
    """Pass sizes for ``count`` objects: ``max_batch`` at a time (10, max 4 -> 4, 4, 2),
    or powers of two up to ``max_batch`` (11, max 8 -> 8, 2, 1)."""
    if not powers_of_two:
        full, rest = divmod(count, max_batch)
        return [max_batch] * full + ([rest] if rest else [])
    sizes = []
    while count:
        sizes.append(min(max_batch, 1 << (count.bit_length() - 1)))
        count -= sizes[-1]
    return sizes


class CallNotServed(ValueError):
    """A call a backend cannot serve for these objects (a 400 saying why): e.g. a frame
    number for an object started without one, or a keyframe a backend cannot take."""


@dataclass(frozen=True)
class MaskPrompt:
    """A binary mask on the prompt frame: (H, W) bool at the frame's size."""

    mask: torch.Tensor


@dataclass(frozen=True)
class BoxPrompt:
    """A box on the prompt frame, (x1, y1, x2, y2) in frame pixels."""

    box: tuple[float, float, float, float]


Prompt = MaskPrompt | BoxPrompt


@dataclass(frozen=True)
class FrameFeatures:
    """SAM 2's image features of one frame, computed once and shared by all objects."""

    backbone_out: dict
    frame_size: tuple[int, int]  # (height, width) of the original frame

    def expanded(self, model: SAM2VideoPredictor, batch_size: int):
        """(vision_feats, vision_pos_embeds, feat_sizes) for a batch of objects, as
        ``SAM2VideoPredictor._get_image_feature`` builds them (views, no copies)."""
        expanded = {
            "backbone_fpn": [
                f.expand(batch_size, -1, -1, -1) for f in self.backbone_out["backbone_fpn"]
            ],
            "vision_pos_enc": [
                p.expand(batch_size, -1, -1, -1) for p in self.backbone_out["vision_pos_enc"]
            ],
        }
        _, vision_feats, vision_pos_embeds, feat_sizes = model._prepare_backbone_features(expanded)
        return vision_feats, vision_pos_embeds, feat_sizes


@dataclass(frozen=True)
class FrameOutput:
    """One object's SAM 2 output on a tracked (non-conditioning) frame."""

    memory: torch.Tensor  # (C_mem, h, w) bfloat16, as the official predictor stores it
    obj_ptr: torch.Tensor  # (C,) float32
    low_res_logits: torch.Tensor  # (1, 256, 256) float32, holes filled


@dataclass(frozen=True)
class StepResult:
    """One object's outcome on one frame."""

    state: ObjectState
    # (1, 256, 256) float32 mask logits at image_size / 4; when SAM 2's object score says
    # "not visible" they are all a large negative constant, so the mask comes out empty.
    low_res_logits: torch.Tensor


class Sam2StreamTracker:
    """Runs SAM 2 one frame at a time for many objects, each with explicit state (the
    ``sam2`` backend of ``tracking.backend.FrameTracker``)."""

    backend = SAM2_BACKEND

    def __init__(
        self,
        model: SAM2VideoPredictor,
        model_id: str,
        precision: torch.dtype = torch.float32,
        max_batch: int | None = None,
    ) -> None:
        if model.memory_temporal_stride_for_eval != 1:
            raise ValueError("memory_temporal_stride_for_eval must be 1 for streaming")
        self.model = model
        self.model_id = model_id
        self.device = model.device
        self.image_size: int = model.image_size
        self.memory_capacity: int = model.num_maskmem - 1
        self.pointer_capacity: int = model.max_obj_ptrs_in_encoder - 1
        self.precision = precision
        # Objects per forward pass. On GPUs batching fills the device; on CPUs it was
        # measured slower than one object at a time (larger working set, same FLOPs),
        # and one at a time is also bit-identical to the official predictor.
        if max_batch is None:
            max_batch = DEFAULT_GPU_BATCH if self.device.type == "cuda" else 1
        max_batch = max(1, max_batch)
        # SAM 2's vos_optimized mode compiles the heads and the memory encoder for fixed
        # shapes: each new batch size is a new compilation (minutes with max-autotune)
        # and past torch's recompile limit runs eagerly. Compiled, passes therefore
        # take power-of-two sizes, all of which ``warm_up`` builds.
        self.compiled = isinstance(model, SAM2VideoPredictorVOS)
        if self.compiled:
            max_batch = 1 << (max_batch.bit_length() - 1)
        self.max_batch = max_batch
        self._maskmem_pos_enc: list[torch.Tensor] | None = None
        # Memory attention's frame-only part once per frame, not once per object.
        self._memory_attention = FrameSharedMemoryAttention(
            model.memory_attention, compile_parts=self.compiled
        )

    def _autocast(self):
        """bfloat16 autocast as SAM 2's examples run it on GPU; a no-op for float32."""
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.precision,
            enabled=self.precision != torch.float32,
        )

    @property
    def codec(self) -> Sam2StateCodec:
        return Sam2StateCodec(self.memory_capacity)

    def describe(self) -> str:
        precision = str(self.precision).removeprefix("torch.")
        return (
            f"SAM 2 tracker ready: model {self.model_id} (input {self.image_size}px) "
            f"on {self.device}, {precision}, "
            f"{'compiled' if self.compiled else 'not compiled'}, "
            f"up to {self.max_batch} objects per pass, keyframes: {self._keyframes_read()}"
        )

    def _keyframes_read(self) -> str:
        count = self.model.max_cond_frames_in_attn
        return "all condition each frame" if count < 0 else f"the {count} closest condition a frame"

    # -- image -----------------------------------------------------------------

    def prepare(self, image: Image.Image) -> PreparedFrame:
        """SAM 2's input for a decoded RGB frame (``tracking.frames.preprocess_frame``)."""
        return PreparedFrame(image, preprocess_frame(image, self.image_size, self.device))

    def encode(self, frame: PreparedFrame) -> FrameFeatures:
        return self.encode_frame(frame.pixels, frame.frame_size)

    @torch.inference_mode()
    def encode_frame(self, pixels: torch.Tensor, frame_size: tuple[int, int]) -> FrameFeatures:
        """Image encoder on one preprocessed frame (1, 3, S, S)."""
        with self._autocast():
            return FrameFeatures(self.model.forward_image(pixels), frame_size)

    # -- prompt frame ----------------------------------------------------------

    @torch.inference_mode()
    def start(
        self,
        features: FrameFeatures,
        prompts: list[Prompt],
        shape_types: list[str],
        legacy_flags: list[bool],
        frames: list[int | None] | None = None,
    ) -> list[StepResult]:
        """Track the prompt frame of new objects, one per prompt. Each prompt runs on its
        own, as the official predictor does (prompts differ in kind). With a frame number
        the object is tracked by frame numbers from there (``ObjectState.numbered``);
        without, its prompt frame is 0 and each continuation the next step."""
        frames = frames or [None] * len(prompts)
        with self._autocast():
            results = [
                self._start_one(features, prompt, shape_type, legacy)
                for prompt, shape_type, legacy in zip(
                    prompts, shape_types, legacy_flags, strict=True
                )
            ]
        return [
            result
            if frame is None
            else StepResult(
                replace(
                    result.state,
                    numbered=True,
                    frame_index=frame,
                    prompt_frame=frame,
                    direction=0,
                    keyframe_logits={frame: result.low_res_logits},
                ),
                result.low_res_logits,
            )
            for result, frame in zip(results, frames, strict=True)
        ]

    @torch.inference_mode()
    def add_keyframes(
        self,
        features: FrameFeatures,
        states: list[ObjectState],
        prompts: list[Prompt],
        frames: list[int],
    ) -> list[StepResult]:
        """One more conditioning frame per object, exactly as ``add_new_mask`` (or a box)
        adds one before propagating: the prompt alone decides the keyframe's output (no
        memory is read), its memory is encoded from the consolidated logits, and from
        then on it conditions the object with its other keyframes (``with_keyframe``)."""
        for state in states:
            if not state.numbered:
                raise CallNotServed(
                    "a keyframe needs an object tracked by frame numbers: start it with "
                    "the frame number in its shape"
                )
        results = []
        with self._autocast():
            for state, prompt, frame in zip(states, prompts, frames, strict=True):
                keyed = self._start_one(features, prompt, state.shape_type, state.legacy)
                box = prompt.box if isinstance(prompt, BoxPrompt) else None
                new_state = state.with_keyframe(
                    frame,
                    keyed.state.prompt_memory,
                    keyed.state.prompt_obj_ptr,
                    keyed.low_res_logits,
                    box,
                )
                results.append(StepResult(new_state, keyed.low_res_logits))
        return results

    def _prompt_inputs(self, prompt: Prompt, frame_size: tuple[int, int]):
        """(point_inputs, mask_inputs) as add_new_points_or_box / add_new_mask build them."""
        size = self.image_size
        if isinstance(prompt, MaskPrompt):
            mask = prompt.mask[None, None].float().to(self.device)
            if mask.shape[-2:] != (size, size):
                mask = F.interpolate(
                    mask, size=(size, size), align_corners=False, mode="bilinear", antialias=True
                )
                mask = (mask >= 0.5).float()
            return None, mask
        height, width = frame_size
        box = torch.tensor(prompt.box, dtype=torch.float32).reshape(1, 2, 2)
        coords = box / torch.tensor([width, height]) * size
        labels = torch.tensor([[2, 3]], dtype=torch.int32)
        return {
            "point_coords": coords.to(self.device),
            "point_labels": labels.to(self.device),
        }, None

    def _start_one(
        self, features: FrameFeatures, prompt: Prompt, shape_type: str, legacy: bool
    ) -> StepResult:
        point_inputs, mask_inputs = self._prompt_inputs(prompt, features.frame_size)
        out, vision_feats, feat_sizes = self._track_step(
            features,
            batch_size=1,
            frame_index=0,
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
            prompt=(point_inputs, mask_inputs),
        )
        low_res = self._fill_holes(out["pred_masks"])
        # The prompt memory is encoded from the consolidated low-res logits, as
        # propagate_in_video_preflight does, not from the full-size prompt.
        high_res = F.interpolate(
            low_res, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        memory, _ = self.model._encode_new_memory(
            current_vision_feats=vision_feats,
            feat_sizes=feat_sizes,
            pred_masks_high_res=high_res,
            object_score_logits=out["object_score_logits"],
            is_mask_from_pts=True,
        )
        state = ObjectState(
            model_id=self.model_id,
            shape_type=shape_type,
            legacy=legacy,
            frame_size=features.frame_size,
            frame_index=0,
            prompt_memory=memory[0].to(torch.bfloat16),
            # float32 whatever the autocast dtype: the stored format is fixed.
            prompt_obj_ptr=out["obj_ptr"][0].float(),
            memory_capacity=self.memory_capacity,
            pointer_capacity=self.pointer_capacity,
        )
        return StepResult(state, low_res[0])

    # -- later frames ----------------------------------------------------------

    @torch.inference_mode()
    def step(
        self,
        features: FrameFeatures,
        states: list[ObjectState],
        frames: list[int | None] | None = None,
    ) -> list[StepResult]:
        """Track every object onto this frame: the frame number given, or each state's next
        frame; results are in ``states`` order. Objects going backward are tracked as SAM
        2 propagates in reverse."""
        targets = [
            self._target(state, frame)
            for state, frame in zip(states, frames or [None] * len(states), strict=True)
        ]
        results: list[StepResult | None] = [None] * len(states)
        for i, (state, target) in enumerate(zip(states, targets, strict=True)):
            if target in state.keyframe_logits:
                # One of its keyframes: SAM 2 answers the keyframe's output, tracks nothing.
                results[i] = StepResult(state.passed(target), state.keyframe_logits[target])
        for reverse in (False, True):
            chosen = [
                i
                for i, t in enumerate(targets)
                if results[i] is None and (t < states[i].frame_index) == reverse
            ]
            if not chosen:
                continue
            outputs = self.track(
                features,
                [(states[i].memory_view(), targets[i]) for i in chosen],
                reverse=reverse,
            )
            for i, out in zip(chosen, outputs, strict=True):
                new_state = states[i].advanced(out.memory, out.obj_ptr, targets[i])
                results[i] = StepResult(new_state, out.low_res_logits)
        return results  # type: ignore[return-value]

    @staticmethod
    def _target(state: ObjectState, frame: int | None) -> int:
        """The frame a state is tracked onto, checked against how it was started."""
        if frame is None:
            return state.next_frame()
        if not state.numbered:
            raise CallNotServed(
                "this object was started without a frame number, so it is continued without "
                "one (leave 'frame' out, or start it again with one)"
            )
        if frame == state.frame_index:
            raise CallNotServed(f"this object is already on frame {frame}")
        if state.direction and (frame - state.frame_index) * state.direction < 0:
            way = "forward" if state.direction > 0 else "backward"
            raise CallNotServed(
                f"this object is being tracked {way} (last on frame {state.frame_index}); "
                f"frame {frame} is the other way: add a keyframe there, or start again"
            )
        return frame

    @torch.inference_mode()
    def track(
        self,
        features: FrameFeatures,
        objects: list[tuple[MemoryView, int]],
        num_frames: int = STREAM_LENGTH,
        reverse: bool = False,
    ) -> list[FrameOutput]:
        """SAM 2's tracking step on one frame for objects given as (memory view, frame
        index), as ``_run_single_frame_inference`` runs it during propagation (memory
        encoded, holes filled). Objects with the same frame index and memory layout go
        through SAM 2 together, ``max_batch`` at a time. Results are in ``objects`` order.

        ``num_frames`` is the video's length (the official predictor's
        ``inference_state["num_frames"]``); ``reverse`` tracks backward in time."""
        layouts: dict[tuple, list[int]] = defaultdict(list)
        for index, (view, frame_index) in enumerate(objects):
            layouts[(frame_index, view.signature())].append(index)
        batches = []
        for indices in layouts.values():
            start = 0
            for size in self.pass_sizes(len(indices)):
                batches.append(indices[start : start + size])
                start += size
        results: list[FrameOutput | None] = [None] * len(objects)
        vision_feats, vision_pos_embeds, _ = features.expanded(self.model, 1)
        with (
            self._autocast(),
            self._memory_attention.frame(self.model, vision_feats[-1], vision_pos_embeds[-1]),
        ):
            for indices in batches:
                views = [objects[i][0] for i in indices]
                frame_index = objects[indices[0]][1]
                batch = self._track_batch(features, views, frame_index, num_frames, reverse)
                for index, result in zip(indices, batch, strict=True):
                    results[index] = result
        return results  # type: ignore[return-value]

    def pass_sizes(self, count: int) -> list[int]:
        """Objects per forward pass for ``count`` objects with the same memory layout."""
        return split_into_passes(count, self.max_batch, powers_of_two=self.compiled)

    def _maskmem_pos(self, batch_size: int) -> list[torch.Tensor]:
        """Memory positional encoding: the same for every frame and object, so computed
        once (by the memory encoder on a blank input) and never stored."""
        if self._maskmem_pos_enc is None:
            model = self.model
            side = self.image_size // model.backbone_stride
            blank_feats = [torch.zeros(side * side, 1, model.hidden_dim, device=self.device)]
            blank_masks = torch.zeros(1, 1, self.image_size, self.image_size, device=self.device)
            _, pos_enc = model._encode_new_memory(
                current_vision_feats=blank_feats,
                feat_sizes=[(side, side)],
                pred_masks_high_res=blank_masks,
                object_score_logits=torch.ones(1, 1, device=self.device),
                is_mask_from_pts=False,
            )
            self._maskmem_pos_enc = [p[0:1].clone() for p in pos_enc]
        return [p.expand(batch_size, -1, -1, -1) for p in self._maskmem_pos_enc]

    def _memory_bank(self, views: list[MemoryView]) -> dict:
        """The ``output_dict`` SAM 2 reads memory from, for a batch of objects whose views
        have the same layout: conditioning outputs, and recent frames as non-conditioning
        outputs (pointer-only entries beyond the memory window)."""
        pos_enc = self._maskmem_pos(len(views))

        def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(tensors).to(self.device, non_blocking=True)

        def stack_memories(tensors: list[torch.Tensor]) -> torch.Tensor:
            # SAM 2 concatenates the bfloat16 memories with the float32 object pointers,
            # which makes the memory float32. Without any pointer (a frame before every
            # keyframe of its object) it would stay bfloat16 and break float32 linear
            # layers (the official predictor fails there outside autocast); widening
            # exactly beforehand gives the same numbers everywhere else.
            return stack(tensors).float()

        first = views[0]
        cond = {
            t: {
                "maskmem_features": stack_memories([v.cond[t][0] for v in views]),
                "maskmem_pos_enc": pos_enc,
                "obj_ptr": stack([v.cond[t][1] for v in views]),
            }
            # In the view's order: SAM 2 concatenates the conditioning memories in the
            # order they were added, and the order moves the float sums.
            for t in first.cond
        }
        non_cond: dict[int, dict] = {}
        for t in sorted(set(first.obj_ptrs) | set(first.memories)):
            entry: dict = {"obj_ptr": stack([v.obj_ptrs[t] for v in views])}
            if t in first.memories:
                entry["maskmem_features"] = stack_memories([v.memories[t] for v in views])
                entry["maskmem_pos_enc"] = pos_enc
            non_cond[t] = entry
        return {"cond_frame_outputs": cond, "non_cond_frame_outputs": non_cond}

    def _track_batch(
        self,
        features: FrameFeatures,
        views: list[MemoryView],
        frame_index: int,
        num_frames: int,
        reverse: bool,
    ) -> list[FrameOutput]:
        out, _, _ = self._track_step(
            features,
            batch_size=len(views),
            frame_index=frame_index,
            output_dict=self._memory_bank(views),
            num_frames=num_frames,
            reverse=reverse,
        )
        memories = out["maskmem_features"].to(torch.bfloat16)
        low_res = self._fill_holes(out["pred_masks"])
        obj_ptrs = out["obj_ptr"].float()
        return [FrameOutput(memories[i], obj_ptrs[i], low_res[i]) for i in range(len(views))]

    def warm_up(self, frame_size: tuple[int, int] = (1080, 1920), frames: int = 8) -> None:
        """Run synthetic tracks so compiled kernels are built before the first call: both
        prompt kinds (mask and box), every pass size, and memory attention over every
        memory count up to a full bank."""
        pixels = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
        # Twice: SAM 2's position encodings are cached on the first call, and the
        # compiled image encoder is specialised on that cache.
        self.encode_frame(pixels, frame_size)
        features = self.encode_frame(pixels, frame_size)
        height, width = frame_size
        mask = torch.zeros(frame_size, dtype=torch.bool)
        mask[height // 4 : height * 3 // 4, width // 4 : width * 3 // 4] = True
        prompts = [
            MaskPrompt(mask),
            BoxPrompt((width * 0.25, height * 0.25, width * 0.75, height * 0.75)),
        ]
        self.start(features, prompts, ["mask", "rectangle"], [False, False])
        sizes = {size for count in range(1, self.max_batch + 1) for size in self.pass_sizes(count)}
        for size in sorted(sizes):
            results = self.start(features, prompts[:1] * size, ["mask"] * size, [False] * size)
            states = [result.state for result in results]
            for _ in range(frames):
                states = [result.state for result in self.step(features, states)]

    def _track_step(
        self,
        features: FrameFeatures,
        batch_size: int,
        frame_index: int,
        output_dict: dict,
        prompt: tuple[dict | None, torch.Tensor | None] | None = None,
        num_frames: int = STREAM_LENGTH,
        reverse: bool = False,
    ):
        """SAM 2's ``track_step`` for a batch: a prompt frame (``prompt`` = (point_inputs,
        mask_inputs); no memory read, memory encoded later from the consolidated logits)
        or a tracked frame (memory read and encoded now). Returns (outputs, vision_feats,
        feat_sizes)."""
        is_prompt = prompt is not None
        point_inputs, mask_inputs = prompt if is_prompt else (None, None)
        vision_feats, vision_pos_embeds, feat_sizes = features.expanded(self.model, batch_size)
        out = self.model.track_step(
            frame_idx=frame_index,
            is_init_cond_frame=is_prompt,
            current_vision_feats=vision_feats,
            current_vision_pos_embeds=vision_pos_embeds,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=output_dict,
            num_frames=num_frames,
            track_in_reverse=reverse,
            run_mem_encoder=not is_prompt,
        )
        return out, vision_feats, feat_sizes

    # -- outputs ---------------------------------------------------------------

    def _fill_holes(self, low_res: torch.Tensor) -> torch.Tensor:
        if self.model.fill_hole_area > 0:
            return fill_holes_in_mask_scores(low_res, self.model.fill_hole_area)
        return low_res

    def frame_mask(self, result: StepResult, frame_size: tuple[int, int]) -> np.ndarray:
        """(H, W) bool mask of one object's result (``logits_mask``)."""
        return self.logits_mask(result.low_res_logits, frame_size)

    def logits_mask(self, low_res_logits: torch.Tensor, frame_size: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: one object's (1, h, w) low-res logits upsampled, above 0, as the
        official predictor's masks. One object at a time: full-size float logits of many
        objects on 4K frames would take gigabytes."""
        return (self.upsample(low_res_logits[None], frame_size)[0, 0] > 0).cpu().numpy()

    @staticmethod
    def upsample(low_res_logits: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
        """Mask logits at the frame's size: (N, 1, h, w) -> (N, 1, H, W), bilinear like the
        official ``_get_orig_video_res_output``; foreground where > 0."""
        return F.interpolate(low_res_logits, size=frame_size, mode="bilinear", align_corners=False)
