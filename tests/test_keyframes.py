"""Keyframes added to tracked objects, with frame numbers, as CVAT's relay passes them
(shapes with a ``frame`` field, together with the states): equal to the official
SAM2VideoPredictor with ``add_new_mask`` on every keyframe and ``propagate_in_video`` from
the frame the run starts on, forward and backward, at 256 input. Callers that send no frame
numbers get what they always got (the other tests, unchanged)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from conftest import build_model, davis_sequence, frame_folder, frame_paths, ground_truth
from cvat_sdk.masks import decode_mask, encode_mask
from PIL import Image
from test_equivalence import extra_masks
from test_http_tracking import redis_bytes
from tracker_state import InMemoryStateStore
from tracking.engine import CallNotServed, MaskPrompt, Sam2StreamTracker
from tracking.frames import preprocess_frame
from tracking.model_loading import ModelSettings, ModelSetupError

SEQUENCE = "dog"
IMAGE_SIZE = 256
NUM_FRAMES = 20


@pytest.fixture(scope="module")
def model(present_checkpoint):
    return build_model(present_checkpoint, IMAGE_SIZE)[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return frame_folder(davis_sequence(SEQUENCE), NUM_FRAMES, tmp_path_factory.mktemp("frames"))


def official(
    model,
    folder,
    keyframes: list[dict[int, np.ndarray]],
    start: int,
    reverse: bool,
    frames: int | None = None,
):
    """Logits (objects, 1, H, W) per frame: each object's keyframes added with add_new_mask
    in the order given, then one propagation from ``start`` (``frames`` beyond it at most)."""
    state = model.init_state(str(folder))
    for obj_id, masks in enumerate(keyframes):
        for frame, mask in masks.items():
            model.add_new_mask(state, frame, obj_id, torch.from_numpy(mask))
    return {
        index: logits.clone()
        for index, _, logits in model.propagate_in_video(
            state, start_frame_idx=start, reverse=reverse, max_frame_num_to_track=frames
        )
    }


class Stream:
    """Our tracker driven frame by frame with frame numbers, every state through a store
    (serialised) between calls."""

    def __init__(self, model) -> None:
        self.tracker = Sam2StreamTracker(model, "test")
        self.store = InMemoryStateStore(codec=self.tracker.codec)
        self.paths = frame_paths(davis_sequence(SEQUENCE))
        self.refs: dict[int, object] = {}

    def features(self, frame: int):
        image = Image.open(self.paths[frame]).convert("RGB")
        pixels = preprocess_frame(image, self.tracker.image_size, self.tracker.device)
        return self.tracker.encode_frame(pixels, (image.height, image.width))

    def keyframe(self, frame: int, masks: dict[int, np.ndarray]) -> None:
        """Objects ``masks`` keys get the mask as a keyframe on ``frame`` (started there
        when new)."""
        features = self.features(frame)
        new = [k for k in masks if k not in self.refs]
        old = [k for k in masks if k in self.refs]
        prompts = {k: MaskPrompt(torch.from_numpy(masks[k])) for k in masks}
        if new:
            results = self.tracker.start(
                features,
                [prompts[k] for k in new],
                ["mask"] * len(new),
                [False] * len(new),
                [frame] * len(new),
            )
            for k, ref in zip(new, self.store.create([r.state for r in results])):
                self.refs[k] = ref
        if old:
            refs = [self.refs[k] for k in old]
            states = self.store.load(refs)
            results = self.tracker.add_keyframes(
                features, states, [prompts[k] for k in old], [frame] * len(old)
            )
            for k, ref in zip(old, self.store.commit(refs, [r.state for r in results])):
                self.refs[k] = ref

    def track(self, frame: int) -> torch.Tensor:
        """Every object onto ``frame``; (objects, 1, H, W) logits at the frame's size."""
        keys = sorted(self.refs)
        refs = [self.refs[k] for k in keys]
        features = self.features(frame)
        results = self.tracker.step(features, self.store.load(refs), [frame] * len(keys))
        for k, ref in zip(keys, self.store.commit(refs, [r.state for r in results])):
            self.refs[k] = ref
        low_res = torch.stack([r.low_res_logits for r in results])
        return self.tracker.upsample(low_res, features.frame_size)


def assert_equal_logits(ours: torch.Tensor, theirs: torch.Tensor, frame: int) -> None:
    foreground = (theirs > 0).float().mean(dim=(1, 2, 3))
    assert torch.all((foreground > 0.01) & (foreground < 0.99)), (frame, foreground)
    assert torch.equal(ours, theirs), (
        f"frame {frame}: logits differ by {(ours - theirs).abs().max()}"
    )


def test_a_correction_keeps_the_first_keyframe_forward(model, folder):
    """Started on frame 0, tracked to 12, corrected on 6, re-run 7..19: the official
    predictor with masks on 0 and 6, propagating from 6."""
    sequence = davis_sequence(SEQUENCE)
    first, fix = ground_truth(sequence, 0), ground_truth(sequence, 6)
    stream = Stream(model)
    stream.keyframe(0, {0: first})
    for frame in range(1, 13):
        stream.track(frame)
    stream.keyframe(6, {0: fix})
    expected = official(model, folder, [{0: first, 6: fix}], start=6, reverse=False)
    for frame in range(7, NUM_FRAMES):
        assert_equal_logits(stream.track(frame), expected[frame], frame)


def test_a_correction_keeps_the_first_keyframe_backward(model, folder):
    """Started on 19, tracked back to 14, corrected on 12, re-run 11..0: masks on 19 and 12,
    propagating from 12 in reverse."""
    sequence = davis_sequence(SEQUENCE)
    last, fix = ground_truth(sequence, 19), ground_truth(sequence, 12)
    stream = Stream(model)
    stream.keyframe(19, {0: last})
    for frame in range(18, 13, -1):
        stream.track(frame)
    stream.keyframe(12, {0: fix})
    expected = official(model, folder, [{19: last, 12: fix}], start=12, reverse=True)
    for frame in range(11, -1, -1):
        assert_equal_logits(stream.track(frame), expected[frame], frame)


def test_three_objects_with_different_keyframes_in_one_call(model, folder):
    """A: keyframes 6 and 0; B: 0; C: 4 and 0 (each run starts on 0, its last keyframe);
    all three tracked 1..9 in one call per frame."""
    sequence = davis_sequence(SEQUENCE)
    gt = ground_truth(sequence)
    left, patch = extra_masks(gt)
    a6, c4 = ground_truth(sequence, 6), extra_masks(ground_truth(sequence, 4))[0]
    stream = Stream(model)
    stream.keyframe(4, {2: c4})
    stream.keyframe(6, {0: a6})
    stream.keyframe(0, {0: gt, 1: patch, 2: left})
    expected = official(
        model,
        folder,
        [{6: a6, 0: gt}, {0: patch}, {4: c4, 0: left}],
        start=0,
        reverse=False,
        frames=9,
    )
    for frame in range(1, 10):
        assert_equal_logits(stream.track(frame), expected[frame], frame)


def test_only_the_closest_keyframes_condition_a_frame_when_capped(model, folder):
    """SAM2_MAX_COND_FRAMES=2: keyframes 0 and 15, a run started on 8 (added last), tracked
    9..12: the official predictor with the same cap; and the cap changes the result."""
    sequence = davis_sequence(SEQUENCE)
    masks = {frame: ground_truth(sequence, frame) for frame in (0, 15, 8)}
    uncapped = official(model, folder, [masks], start=8, reverse=False, frames=4)
    previous = model.max_cond_frames_in_attn
    model.max_cond_frames_in_attn = 2
    try:
        stream = Stream(model)
        for frame, mask in masks.items():
            stream.keyframe(frame, {0: mask})
        expected = official(model, folder, [masks], start=8, reverse=False, frames=4)
        for frame in range(9, 13):
            assert_equal_logits(stream.track(frame), expected[frame], frame)
    finally:
        model.max_cond_frames_in_attn = previous
    assert not torch.equal(uncapped[12], expected[12])
    settings = ModelSettings.from_env({"SAM2_MAX_COND_FRAMES": "3"})
    assert settings.max_cond_frames == 3
    with pytest.raises(ModelSetupError, match="must be a whole number >= 2"):
        ModelSettings.from_env({"SAM2_MAX_COND_FRAMES": "1"})


def test_frame_numbers_are_checked(model):
    sequence = davis_sequence(SEQUENCE)
    stream = Stream(model)
    stream.keyframe(3, {0: ground_truth(sequence, 3)})
    stream.track(4)
    with pytest.raises(CallNotServed, match=r"tracked forward .* frame 2 is the other way"):
        stream.track(2)
    with pytest.raises(CallNotServed, match="already on frame 4"):
        stream.track(4)
    stream.track(6)  # a skipped (deleted) frame is a gap, as in SAM 2's memory read
    plain = stream.tracker.start(
        stream.features(0),
        [MaskPrompt(torch.from_numpy(ground_truth(sequence)))],
        ["mask"],
        [False],
    )[0].state
    with pytest.raises(CallNotServed, match="started without a frame number"):
        stream.tracker.step(stream.features(1), [plain], [1])
    with pytest.raises(CallNotServed, match="needs an object tracked by frame numbers"):
        stream.tracker.add_keyframes(
            stream.features(1),
            [plain],
            [MaskPrompt(torch.from_numpy(ground_truth(sequence)))],
            [1],
        )


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_over_http_as_cvats_relay_sends_it(
    present_checkpoint, own_redis, function_server_factory, folder, model
):
    """The same correction flow as the relay passes it: ``{"type", "points", "frame"}`` to
    start, ``{"type", "frame": n}`` with the state to continue (CVAT's relay reads every
    shape's type), a whole shape with its frame and the state to add a keyframe. Redis
    holds one more keyframe's memory, then stays flat."""
    sequence = davis_sequence(SEQUENCE)
    paths = frame_paths(sequence)
    first, fix = ground_truth(sequence, 0), ground_truth(sequence, 6)
    height, width = first.shape
    server = function_server_factory(
        present_checkpoint, image_size=IMAGE_SIZE, redis_port=own_redis.port
    )
    client = own_redis.client()

    def call(frame: int, shape: dict | None, states: list) -> dict:
        status, answer = server.post(
            {"image": b64(paths[frame]), "shapes": [shape], "states": states}
        )
        assert status == 200, answer
        return answer

    answer = call(0, {"type": "mask", "points": encode_mask(first), "frame": 0}, [])
    sizes = {}
    for frame in range(1, 13):
        answer = call(frame, {"type": "mask", "frame": frame}, answer["states"])
        assert answer["states"][0]["frame"] == frame
        sizes[frame] = redis_bytes(client)[0]
    answer = call(6, {"type": "mask", "points": encode_mask(fix), "frame": 6}, answer["states"])
    assert answer["states"][0]["frame"] == 6
    expected = official(model, folder, [{0: first, 6: fix}], start=6, reverse=False)
    for frame in range(7, NUM_FRAMES):
        answer = call(frame, {"frame": frame}, answer["states"])  # the type is not needed
        ours = decode_mask(answer["shapes"][0]["points"], image_width=width, image_height=height)
        theirs = (expected[frame][0, 0] > 0).numpy()
        assert (ours == theirs).mean() >= 0.99999, f"frame {frame}"
        sizes[frame + 100] = redis_bytes(client)[0]
    keyframe_bytes = sizes[119] - sizes[12]
    # One more keyframe: its memory (64x16x16 bfloat16 at 256 input), its answer's logits
    # (64x64 float32) and its pointer, no more.
    one_keyframe = 64 * 16 * 16 * 2 + 64 * 64 * 4
    assert one_keyframe <= keyframe_bytes < one_keyframe + 4096
    assert sizes[113] == sizes[119]  # flat once the memory window refilled

    # The same frame again, or a frame the other way, is a 400 naming why.
    again = server.post(
        {"image": b64(paths[19]), "shapes": [{"frame": 19}], "states": answer["states"]}
    )
    assert again[0] == 400 and "already on frame 19" in again[1]["error"]
    status, refused = server.post(
        {"image": b64(paths[3]), "shapes": [{"frame": 3}], "states": answer["states"]}
    )
    assert status == 400 and "the other way" in refused["error"]
