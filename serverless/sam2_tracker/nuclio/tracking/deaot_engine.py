"""Frame-by-frame DeAOT tracking with explicit, bounded per-object state (the ``deaot``
backend of ``tracking.backend.FrameTracker``), computed as SAM-Track computes it.

SAM-Track drives deaotpy's engine with ``add_reference_frame`` on the first frame, then
per frame ``match_propogate_one_frame``, ``decode_current_logits`` at the frame's
size, argmax, and ``update_memory`` with that label. Here each object has an engine
of its own (object in ID slot 1; see ``tracker_state.deaot_state``), rebuilt for
each call from the object's stored memories, so any worker can continue any object:

* the image encoder runs once per frame for all objects (deaotpy's engines reuse it
  the same way across their sub-engines);
* the mask is taken from the background and object channels only: deaotpy sets every
  unused ID channel to -1e10 before the bilinear upsampling, so argmax over all of
  them picks the same pixels as "object logit > background logit", without a
  full-size tensor of 11 channels per object;
* long-term memory: the reference frame's, kept for the whole track, plus (with
  ``DEAOT_LONG_TERM_GAP``) one every ``gap`` frames; at most ``DEAOT_MAX_LONG_TERM``
  frames in all, the oldest periodic one dropped first. deaotpy's own cap
  (``max_len_long_term``) would drop the oldest, which is the reference: the user's
  annotation. Below the cap both give the same memory, newest first, reference last.

Boxes are no masks: a rectangle is turned into the reference mask by SAM 2's box
prompt (the prompt frame of ``tracking.engine``), not by SAM 1 as in SAM-Track
(``segment-anything`` imports torchvision; SAM 2's box prompt is better and runs here
already). Where SAM 2 finds nothing in the box, the box itself is the mask.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tracker_state.deaot_state import (
    DEAOT_BACKEND,
    DeaotState,
    DeaotStateCodec,
    FrameMemory,
    kept_long_term_frames,
)

from tracking.backend import LoadedBackend
from tracking.deaot_frames import MAX_LONG_EDGE, deaot_pixels, label_for_input
from tracking.deaot_model import DeaotSettings, load_deaot
from tracking.engine import BoxPrompt, CallNotServed, MaskPrompt, Prompt, Sam2StreamTracker
from tracking.frames import PreparedFrame
from tracking.model_loading import InfoLogger, load_sam2_tracker

# deaotpy's own cap never applies: the cap with the reference kept is applied here.
UNBOUNDED = 1 << 30


@dataclass(frozen=True)
class DeaotFeatures:
    """One frame's encoder output, shared by all objects."""

    frame: PreparedFrame
    embeddings: list[torch.Tensor]  # multi-scale (1, C_i, h_i, w_i), the last at stride 16


@dataclass(frozen=True)
class DeaotStepResult:
    """One object's outcome on one frame."""

    state: DeaotState
    mask: torch.Tensor  # (H, W) bool at the frame's size
    # (2, h/4, w/4) float32 background and object logits from the decoder (None on the
    # reference frame, whose mask is the prompt itself).
    logits: torch.Tensor | None


def _frozen(memory) -> FrameMemory:
    """The engine's per-layer memory lists as a state's tuples, each tensor copied: the
    engine's tensors are often views of larger buffers (a key is a slice of a joint
    projection), which a kept view would keep alive in the worker cache."""
    return tuple(
        tuple(None if t is None else t.clone(memory_format=torch.contiguous_format) for t in ts)
        for ts in memory
    )


class DeaotTracker:
    """Runs DeAOT one frame at a time for many objects, one engine per object."""

    backend = DEAOT_BACKEND

    def __init__(
        self,
        network: torch.nn.Module,
        model_name: str,
        long_term_gap: int,
        max_long_term: int,
        box_tracker: Sam2StreamTracker | None = None,
    ) -> None:
        from aot.networks.engines import DeAOTEngine

        self._engine_class = DeAOTEngine
        self.network = network
        self.model_name = model_name
        self.device = next(network.parameters()).device
        self.align_corners: bool = network.cfg.MODEL_ALIGN_CORNERS
        self.max_long_edge = MAX_LONG_EDGE
        self.long_term_gap = long_term_gap
        self.max_long_term = max_long_term
        self.box_tracker = box_tracker
        # The settings that change what a state holds are part of its model's name.
        self.model_id = f"{model_name}@{self.max_long_edge:g}:gap{long_term_gap}:max{max_long_term}"
        self._pos_emb: dict[tuple[int, int], torch.Tensor] = {}
        self.memory_channels = self._read_memory_channels()

    @torch.no_grad()
    def _read_memory_channels(self) -> tuple[tuple[int | None, ...], ...]:
        """Per LSTT layer, the channels of its four memory tensors (None where the model
        has none), read off a reference frame on a blank 33x33 input."""
        pixels = torch.zeros(1, 3, 33, 33, device=self.device)
        engine = self._new_engine()
        engine.add_reference_frame(
            pixels, torch.zeros(1, 1, 33, 33, device=self.device), frame_step=0, obj_nums=[1]
        )
        return tuple(
            tuple(None if t is None else int(t.shape[-1]) for t in layer)
            for layer in engine.long_term_memories
        )

    @property
    def codec(self) -> DeaotStateCodec:
        return DeaotStateCodec(self.long_term_gap, self.max_long_term - 1, self.memory_channels)

    def describe(self) -> str:
        return (
            f"DeAOT tracker ready: model {self.model_name} (long edge up to "
            f"{self.max_long_edge:g}px) on {self.device}, float32, long-term memory: the "
            f"reference frame{self._long_term_text()}"
        )

    def _long_term_text(self) -> str:
        if self.max_long_term == 1:
            return " only"
        return f" and one every {self.long_term_gap} frames, {self.max_long_term} at most"

    # -- image -----------------------------------------------------------------

    def prepare(self, image: Image.Image) -> PreparedFrame:
        pixels = deaot_pixels(np.asarray(image), self.align_corners, self.max_long_edge)
        return PreparedFrame(image, pixels.to(self.device))

    @torch.no_grad()
    def encode(self, frame: PreparedFrame) -> DeaotFeatures:
        return DeaotFeatures(frame, self.network.encode_image(frame.pixels))

    # -- engines ---------------------------------------------------------------

    def _new_engine(self):
        engine = self._engine_class(
            self.network,
            long_term_mem_gap=self.long_term_gap,
            short_term_mem_skip=1,
            max_len_long_term=UNBOUNDED,
        )
        return engine.eval()

    def _positions(self, features: DeaotFeatures) -> torch.Tensor:
        """(h * w, 1, C) positional embedding of the stride-16 grid, as the engine builds
        it on the reference frame (it depends only on the grid's size)."""
        last = features.embeddings[-1]
        size = tuple(last.shape[-2:])
        if size not in self._pos_emb:
            pos_emb = self.network.get_pos_emb(last).expand(1, -1, -1, -1)
            self._pos_emb[size] = pos_emb.view(1, -1, size[0] * size[1]).permute(2, 0, 1)
        return self._pos_emb[size]

    def _restored_engine(self, features: DeaotFeatures, state: DeaotState):
        """A fresh engine holding exactly ``state``'s memories, as deaotpy's engine holds
        them after tracking the state's frame."""
        engine = self._new_engine()
        engine.obj_nums = [1]
        engine.frame_step = state.frame_index
        # deaotpy's frame of the last long-term memory: a multiple of the gap.
        engine.last_mem_step = state.frame_index // self.long_term_gap * self.long_term_gap
        engine.update_size(state.input_size, tuple(features.embeddings[-1].shape[-2:]))
        engine.pos_emb = self._positions(features)
        newest_first = [state.long_term[t] for t in sorted(state.long_term, reverse=True)]
        frames = [*newest_first, state.reference]

        # States read from the store are on the host; the memories join this device's
        # frame features.
        def joined(tensors: list[torch.Tensor]) -> torch.Tensor:
            # With the reference alone (the default) there is nothing to concatenate:
            # no copy of the largest memory on every frame.
            tensor = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
            return tensor.to(self.device, non_blocking=True)

        engine.long_term_memories = [
            [
                None
                if state.reference[layer][element] is None
                else joined([memory[layer][element] for memory in frames])
                for element in range(len(state.reference[layer]))
            ]
            for layer in range(len(state.reference))
        ]
        short_term = [
            [None if t is None else t.to(self.device, non_blocking=True) for t in tensors]
            for tensors in state.short_term
        ]
        engine.short_term_memories = short_term
        engine.short_term_memories_list = [short_term]
        return engine

    # -- reference frame -------------------------------------------------------

    def _prompt_masks(self, features: DeaotFeatures, prompts: list[Prompt]) -> list[np.ndarray]:
        """(H, W) bool reference mask per prompt: masks as given; boxes through SAM 2's
        box prompt, its image encoder run once for all the boxes of the call."""
        masks: list[np.ndarray | None] = [
            p.mask.cpu().numpy().astype(bool) if isinstance(p, MaskPrompt) else None
            for p in prompts
        ]
        boxes = [(i, p) for i, p in enumerate(prompts) if isinstance(p, BoxPrompt)]
        if boxes:
            if self.box_tracker is None:
                raise ValueError("rectangles need SAM 2 for their masks, and none is loaded")
            sam2 = self.box_tracker
            sam2_features = sam2.encode(sam2.prepare(features.frame.image))
            count = len(boxes)
            results = sam2.start(
                sam2_features, [p for _, p in boxes], ["rectangle"] * count, [False] * count
            )
            for (index, prompt), result in zip(boxes, results, strict=True):
                mask = sam2.frame_mask(result, features.frame.frame_size)
                if not mask.any():
                    x1, y1, x2, y2 = prompt.box
                    mask[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
                masks[index] = mask
        return masks  # type: ignore[return-value]

    @torch.no_grad()
    def start(
        self,
        features: DeaotFeatures,
        prompts: list[Prompt],
        shape_types: list[str],
        legacy_flags: list[bool],
        frames: list[int | None] | None = None,
    ) -> list[DeaotStepResult]:
        """Reference frames of new objects: each prompt's mask (a box's from SAM 2) is
        the object's reference memory and its answer on this frame. Frame numbers are
        not needed: DeAOT's memory does not encode time."""
        results = []
        masks = self._prompt_masks(features, prompts)
        for prompt, mask, shape_type, legacy in zip(
            prompts, masks, shape_types, legacy_flags, strict=True
        ):
            pixels = features.frame.pixels
            input_size = tuple(pixels.shape[-2:])
            engine = self._new_engine()
            engine.add_reference_frame(
                pixels,
                label_for_input(mask, input_size).to(self.device),
                frame_step=0,
                obj_nums=[1],
                img_embs=features.embeddings,
            )
            state = DeaotState(
                model_id=self.model_id,
                shape_type=shape_type,
                legacy=legacy,
                frame_size=features.frame.frame_size,
                frame_index=0,
                input_size=input_size,
                reference=_frozen(engine.long_term_memories),
                short_term=_frozen(engine.short_term_memories),
                long_term={},
                last_box=prompt.box if isinstance(prompt, BoxPrompt) else None,
            )
            results.append(DeaotStepResult(state, torch.from_numpy(mask), None))
        return results

    # -- later frames ----------------------------------------------------------

    @torch.no_grad()
    def step(
        self,
        features: DeaotFeatures,
        states: list[DeaotState],
        frames: list[int | None] | None = None,
    ) -> list[DeaotStepResult]:
        """Each object's next frame in the caller's order (frame numbers, forward or
        backward, need nothing else), one engine per object over the shared features."""
        return [self._step_one(features, state) for state in states]

    def add_keyframes(self, features, states, prompts, frames) -> list[DeaotStepResult]:
        """Refused: a DeAOT object's reference memory is the frame it started on, as in
        SAM-Track; a correction starts the object again from the corrected shape."""
        raise CallNotServed(
            "DeAOT takes no keyframes on a tracked object: start it again from the corrected "
            "shape (send the shape without its state)"
        )

    def _step_one(self, features: DeaotFeatures, state: DeaotState) -> DeaotStepResult:
        engine = self._restored_engine(features, state)
        engine.match_propogate_one_frame(None, img_embs=features.embeddings)
        logits = engine.decode_current_logits()[:, :2]  # (1, 2, h/4, w/4)
        full = F.interpolate(
            logits,
            size=state.frame_size,
            mode="bilinear",
            align_corners=self.align_corners,
        )
        mask = full[0, 1] > full[0, 0]  # argmax over background and object; ties: background
        engine.update_short_term_memory(
            F.interpolate(mask[None, None].float(), size=state.input_size)
        )
        frame_index = state.frame_index + 1
        long_term = dict(state.long_term)
        if engine.last_mem_step == frame_index:  # this frame became a long-term memory
            long_term[frame_index] = _frozen(engine.curr_lstt_output[1])
        kept = kept_long_term_frames(frame_index, self.long_term_gap, self.max_long_term - 1)
        new_state = replace(
            state,
            frame_index=frame_index,
            short_term=_frozen(engine.short_term_memories),
            long_term={t: long_term[t] for t in kept},
        )
        return DeaotStepResult(new_state, mask.cpu(), logits[0])

    # -- outputs ---------------------------------------------------------------

    def frame_mask(self, result: DeaotStepResult, frame_size: tuple[int, int]) -> np.ndarray:
        return result.mask.numpy()


def load_deaot_tracker(env: dict[str, str], logger: InfoLogger) -> LoadedBackend:
    """The ``deaot`` backend: DeAOT from the ``DEAOT_*`` variables, and SAM 2 (the
    ``SAM2_*`` variables) for turning rectangles into reference masks."""
    settings = DeaotSettings.from_env(env)
    # deaotpy's position encoding calls torch.meshgrid without ``indexing``: a
    # deprecation notice on the first frame of every worker, nothing to act on.
    warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
    network = load_deaot(settings)
    sam2 = load_sam2_tracker(env, logger)  # the sam2 backend, for its box prompt
    box_tracker = sam2.tracker
    tracker = DeaotTracker(
        network, settings.model, settings.long_term_gap, settings.max_long_term, box_tracker
    )
    notes = (
        f"rectangles become masks through SAM 2's box prompt ({box_tracker.model_id}; "
        f"{sam2.notes[0]})",
        "correlation: deaotpy's pure-PyTorch fallback"
        if not _correlation_extension()
        else "correlation: spatial-correlation-sampler",
    )
    return LoadedBackend(tracker, notes)


def _correlation_extension() -> bool:
    try:
        import spatial_correlation_sampler  # noqa: F401
    except ImportError:
        return False
    return True
