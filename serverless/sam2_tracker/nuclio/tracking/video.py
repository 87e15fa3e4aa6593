"""Tracking a whole video from keyframes, exactly as SAM 2's video predictor does.

For objects prompted on any set of keyframes, the masks on every frame equal those of
``SAM2VideoPredictor`` after ``add_new_mask`` (or ``add_new_points_or_box(box=...)``)
on every keyframe of every object and then:

* ``forward``: ``propagate_in_video`` from the first keyframe to the last frame;
* ``backward``: ``propagate_in_video(start_frame_idx=<last keyframe>, reverse=True)``;
* ``both``: forward as above, then ``propagate_in_video(start_frame_idx=<first
  keyframe>, reverse=True)``: frames before the first keyframe tracked backward.

How the official predictor reads memory decides what each object keeps (see
``tracker_state.state.MemoryView``): its keyframes (each an initial conditioning frame,
encoded as the stream tracker's prompt frame: the official predictor adds them before
propagating, so none reads memory), which condition every tracked frame, before and
after it (or only the ``max_cond_frames`` closest, SAM 2's ``max_cond_frames_in_attn``);
and the last 6 memories and 15 object pointers of tracked frames. Nothing grows with the
video's length: frames are read one at a time, as tracking reaches them. Every object
is tracked from the run's first frame, also before its own first keyframe (then only
its later keyframes condition it), as the official predictor does.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import torch
from PIL import Image
from tracker_state.state import MemoryView

from tracking.engine import FrameFeatures, FrameOutput, Prompt, Sam2StreamTracker

DIRECTIONS = ("forward", "backward", "both")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class VideoError(ValueError):
    """The frames or keyframes cannot be tracked (the message says why)."""


class FrameSource(Protocol):
    """Frames by index, each decoded when asked for (never all held at once)."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> Image.Image:
        """Frame ``index`` as an RGB image."""
        ...


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class FolderFrames:
    """A folder of images, in natural name order (``2.jpg`` before ``10.jpg``), as SAM 2's
    loader orders numbered JPEG frames."""

    def __init__(self, folder: Path) -> None:
        self.paths = sorted(
            (p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
            key=_natural_key,
        )
        if not self.paths:
            raise VideoError(f"no image files in {folder}")

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            return image.convert("RGB")


class VideoFileFrames(FolderFrames):
    """A video file, decoded once, frame by frame, into lossless PNG files in a temporary
    folder (so memory stays flat and backward tracking needs no re-decoding)."""

    def __init__(self, path: Path) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="sam2-frames-"))
        # The decoded frames go when this object does (or at exit at the latest).
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._folder, True)
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise VideoError(f"cannot open the video {path}")
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                cv2.imwrite(
                    str(self._folder / f"{index:07d}.png"), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]
                )
                index += 1
        finally:
            capture.release()
        if index == 0:
            self.close()
            raise VideoError(f"no frame could be decoded from {path}")
        super().__init__(self._folder)

    def close(self) -> None:
        self._cleanup()


def open_frames(path: Path) -> FolderFrames:
    """A folder of images or a video file."""
    path = Path(path)
    if path.is_dir():
        return FolderFrames(path)
    if path.is_file():
        return VideoFileFrames(path)
    raise VideoError(f"{path} is neither a folder of frames nor a video file")


@dataclass(frozen=True)
class Keyframe:
    """A prompt for one object on one frame (mask or box, at the frame's size)."""

    frame_index: int
    prompt: Prompt


@dataclass(frozen=True)
class TrackedFrame:
    """Every object's mask logits on one frame, in the order objects were given."""

    frame_index: int
    frame_size: tuple[int, int]  # (height, width)
    # (1, 256, 256) float32 low-res logits per object; ``Sam2StreamTracker.upsample``
    # brings them to the frame's size, foreground where > 0.
    low_res_logits: list[torch.Tensor]
    reverse: bool


@dataclass(frozen=True)
class _KeyframeOutput:
    memory: torch.Tensor  # (C_mem, h, w) bfloat16
    obj_ptr: torch.Tensor  # (C,) float32
    low_res_logits: torch.Tensor  # (1, 256, 256) float32


class _ObjectMemory:
    """One object's memory during a run: its keyframes, and recent tracked frames."""

    def __init__(self, memory_window: int, pointer_window: int) -> None:
        self.memory_window = memory_window
        self.pointer_window = pointer_window
        self.keyframes: dict[int, _KeyframeOutput] = {}
        self.memories: dict[int, torch.Tensor] = {}
        self.obj_ptrs: dict[int, torch.Tensor] = {}

    def view(self) -> MemoryView:
        return MemoryView(
            {t: (k.memory, k.obj_ptr) for t, k in self.keyframes.items()},
            dict(self.memories),
            dict(self.obj_ptrs),
        )

    def record(self, frame_index: int, output: FrameOutput, reverse: bool) -> None:
        """Keep this frame's memory and pointer; drop what the next frame cannot read
        (SAM 2 reads the 6 memories and 15 pointers just behind it, in its direction)."""
        self.memories[frame_index] = output.memory
        self.obj_ptrs[frame_index] = output.obj_ptr
        step = -1 if reverse else 1
        following = frame_index + step
        self.memories = _behind(self.memories, following, step, self.memory_window)
        self.obj_ptrs = _behind(self.obj_ptrs, following, step, self.pointer_window)

    def restart_behind(self, frame_index: int, reverse: bool, saved: _ObjectMemory) -> None:
        """Windows as the official predictor's dicts hold them when it starts tracking
        from ``frame_index`` again: the tracked frames of ``saved`` behind that frame."""
        step = -1 if reverse else 1
        self.memories = _behind(saved.memories, frame_index, step, self.memory_window)
        self.obj_ptrs = _behind(saved.obj_ptrs, frame_index, step, self.pointer_window)


def _behind(entries: dict, frame_index: int, step: int, window: int) -> dict:
    """The entries 1..window frames behind ``frame_index`` when moving by ``step``."""
    return {t: v for t, v in entries.items() if 1 <= (frame_index - t) * step <= window}


@contextlib.contextmanager
def _max_cond_frames(model, count: int | None) -> Iterator[None]:
    """SAM 2's ``max_cond_frames_in_attn`` set to ``count`` for the run (None: the
    model's own setting, every keyframe in SAM 2.1's configs)."""
    previous = model.max_cond_frames_in_attn
    if count is not None:
        model.max_cond_frames_in_attn = count
    try:
        yield
    finally:
        model.max_cond_frames_in_attn = previous


def _keyframe_span(objects: list[list[Keyframe]]) -> tuple[int, int]:
    """(first, last) keyframe index over all objects: where runs start."""
    frames = [k.frame_index for keyframes in objects for k in keyframes]
    return min(frames), max(frames)


def yielded_frame_count(objects: list[list[Keyframe]], direction: str, num_frames: int) -> int:
    """How many frames ``KeyframeVideoTracker.track`` yields (a progress bar's total)."""
    first, last = _keyframe_span(objects)
    forward = num_frames - first
    return {"forward": forward, "backward": last + 1, "both": forward + first + 1}[direction]


class KeyframeVideoTracker:
    """Tracks objects through a frame source from their keyframes (see module docstring)."""

    def __init__(self, tracker: Sam2StreamTracker) -> None:
        self.tracker = tracker

    def track(
        self,
        frames: FrameSource,
        objects: list[list[Keyframe]],
        direction: str = "forward",
        max_cond_frames: int | None = None,
    ) -> Iterator[TrackedFrame]:
        """Yield every object's logits frame by frame, in processing order. With
        ``both``, the first keyframe comes twice (forward, then backward: later wins, as
        when collecting the official predictor's outputs). Each object's keyframes are
        taken in the order given: the official predictor's results equal these when its
        ``add_new_mask`` calls come in the same order (the order moves float sums only,
        by about 1e-7)."""
        if direction not in DIRECTIONS:
            raise VideoError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if not objects or any(not keyframes for keyframes in objects):
            raise VideoError("every object needs at least one keyframe")
        if max_cond_frames is not None and max_cond_frames < 2:
            raise VideoError(
                "max_cond_frames must be at least 2 (SAM 2 reads the closest "
                "keyframe before and after a frame)"
            )
        num_frames = len(frames)
        for keyframes in objects:
            for keyframe in keyframes:
                if not 0 <= keyframe.frame_index < num_frames:
                    raise VideoError(
                        f"keyframe on frame {keyframe.frame_index}, but there are "
                        f"{num_frames} frames"
                    )
        model = self.tracker.model
        memories = [
            _ObjectMemory(model.num_maskmem - 1, model.max_obj_ptrs_in_encoder - 1) for _ in objects
        ]
        with _max_cond_frames(model, max_cond_frames):
            frame_size = self._encode_keyframes(frames, objects, memories)
            first, last = _keyframe_span(objects)
            if direction == "backward":
                yield from self._propagate(frames, memories, frame_size, last, -1)
                return
            saved = None
            if direction == "both":
                # The backward pass starts where the forward one did and reads the
                # forward pass's first tracked frames, as the official dicts hold them.
                saved = [_ObjectMemory(m.memory_window, m.pointer_window) for m in memories]
            yield from self._propagate(frames, memories, frame_size, first, num_frames, saved)
            if saved is not None:
                for memory, kept in zip(memories, saved, strict=True):
                    memory.restart_behind(first, reverse=True, saved=kept)
                yield from self._propagate(frames, memories, frame_size, first, -1)

    def _encode_keyframes(
        self, frames: FrameSource, objects: list[list[Keyframe]], memories: list[_ObjectMemory]
    ) -> tuple[int, int]:
        """Each keyframe as an initial conditioning frame: SAM 2 on the prompt, its memory
        encoded from the resulting logits (``propagate_in_video_preflight``)."""
        by_frame: dict[int, list[tuple[int, Prompt]]] = {}
        for obj, keyframes in enumerate(objects):
            for keyframe in keyframes:
                by_frame.setdefault(keyframe.frame_index, []).append((obj, keyframe.prompt))
        frame_size = None
        for frame_index in sorted(by_frame):
            features, frame_size = self._features(frames, frame_index, frame_size)
            prompts = [prompt for _, prompt in by_frame[frame_index]]
            count = len(prompts)
            results = self.tracker.start(features, prompts, ["mask"] * count, [False] * count)
            for (obj, _), result in zip(by_frame[frame_index], results, strict=True):
                memories[obj].keyframes[frame_index] = _KeyframeOutput(
                    result.state.prompt_memory, result.state.prompt_obj_ptr, result.low_res_logits
                )
        for memory, keyframes in zip(memories, objects, strict=True):
            # In the order given, as the official predictor keeps keyframes in the order
            # they were added (SAM 2 concatenates their memories in that order).
            memory.keyframes = {k.frame_index: memory.keyframes[k.frame_index] for k in keyframes}
        return frame_size

    def _features(
        self, frames: FrameSource, frame_index: int, expected: tuple[int, int] | None
    ) -> tuple[FrameFeatures, tuple[int, int]]:
        """SAM 2's features of one frame and its (height, width), which must be
        ``expected`` when given (all frames of a video share one size)."""
        image = frames.read(frame_index)
        size = (image.height, image.width)
        if expected is not None and size != expected:
            raise VideoError(
                f"frame {frame_index} is {size[1]}x{size[0]}, "
                f"other frames are {expected[1]}x{expected[0]}"
            )
        return self.tracker.encode(self.tracker.prepare(image)), size

    def _propagate(
        self,
        frames: FrameSource,
        memories: list[_ObjectMemory],
        frame_size: tuple[int, int],
        start: int,
        stop: int,
        saved: list[_ObjectMemory] | None = None,
    ) -> Iterator[TrackedFrame]:
        """Frames start, start±1, ... up to (not including) ``stop``; keyframes answer
        their own output, other objects are tracked with their memory."""
        reverse = stop < start
        num_frames = len(frames)
        for frame_index in range(start, stop, -1 if reverse else 1):
            logits: list[torch.Tensor | None] = [
                m.keyframes[frame_index].low_res_logits if frame_index in m.keyframes else None
                for m in memories
            ]
            pending = [i for i, value in enumerate(logits) if value is None]
            if pending:
                features, _ = self._features(frames, frame_index, frame_size)
                outputs = self.tracker.track(
                    features,
                    [(memories[i].view(), frame_index) for i in pending],
                    num_frames=num_frames,
                    reverse=reverse,
                )
                for i, output in zip(pending, outputs, strict=True):
                    memories[i].record(frame_index, output, reverse)
                    if saved is not None:
                        saved[i].memories[frame_index] = output.memory
                        saved[i].obj_ptrs[frame_index] = output.obj_ptr
                    logits[i] = output.low_res_logits
            if saved is not None and abs(frame_index - start) >= saved[0].pointer_window:
                saved = None  # the backward pass reads no further than this
            yield TrackedFrame(frame_index, frame_size, logits, reverse)  # type: ignore[arg-type]
