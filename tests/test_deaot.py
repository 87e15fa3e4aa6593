"""The DeAOT backend against deaotpy's own engine, as SAM-Track drives it.

Reference: deaotpy's ``DeAOTInferEngine`` (``build_engine("deaotengine", "eval")``), one
per object, fed by the same frames through deaotpy's own transform code (read from the
installed package), ``add_reference_frame`` on the first frame, then per frame
``match_propogate_one_frame``, ``decode_current_logits`` at the frame's size, argmax,
``update_memory``. Seeded random DeAOT-T weights whose object-channel bias is shifted
(``RANDOM_OBJECT_SHIFT``), checked to give masks covering a real share of the frame.
Frames are DAVIS frames at half size (240x427): DeAOT's input then is 241x433.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import build_model, davis_sequence, frame_paths, ground_truth
from PIL import Image
from tracker_state import InMemoryStateStore, RedisStateStore, StateRef
from tracker_state.deaot_state import DEAOT_BACKEND, DeaotStateCodec
from tracking.answers import shape_prompt
from tracking.deaot_engine import DeaotTracker
from tracking.deaot_frames import deaot_input_size, deaot_pixels
from tracking.deaot_model import (
    DeaotSettings,
    checkpoint_state_dict,
    load_deaot,
    make_random_deaot_checkpoint,
)
from tracking.engine import BoxPrompt, MaskPrompt
from tracking.model_loading import ModelSettings, ModelSetupError, build_tracker
from tracking.shapes import encode_shape

SCALE = float(os.environ.get("DEAOT_SCALE", "0.5"))
# Acceptance on a sequence the tests never use: DEAOT_SEQUENCE=libby (and DEAOT_SCALE=1).
HTTP_SEQUENCE = os.environ.get("DEAOT_SEQUENCE", "blackswan")


def read_frame(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, scaled by SCALE (area averaging) like a smaller video."""
    image = np.array(Image.open(path).convert("RGB"))
    if SCALE == 1:
        return image
    return cv2.resize(image, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_AREA)


def read_mask(sequence: Path, index: int = 0) -> np.ndarray:
    mask = ground_truth(sequence, index).astype(np.uint8)
    if SCALE == 1:
        return mask > 0
    return cv2.resize(mask, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_NEAREST) > 0


def deaotpy_transforms():
    """deaotpy's own ``MultiRestrictSize`` and ``MultiToTensor``, taken from the installed
    ``aot/dataloaders/video_transforms.py`` (that module imports torchvision, which cannot
    be installed here, so its two classes are compiled on their own)."""
    import aot

    path = Path(aot.__file__).parent / "dataloaders" / "video_transforms.py"
    tree = ast.parse(path.read_text())
    wanted = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name in ("MultiRestrictSize", "MultiToTensor")
    ]
    namespace = {"cv2": cv2, "np": np, "torch": torch}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    cfg_long_edge = 800 * 1.3
    restrict = namespace["MultiRestrictSize"](None, cfg_long_edge, False, [1], True)
    to_tensor = namespace["MultiToTensor"]()
    return lambda sample: to_tensor(restrict(sample))


class DeaotpyReference:
    """One deaotpy inference engine per object, driven as SAM-Track's tracker drives its
    engine. ``keep_reference_cap`` trims long-term memory after each frame to the newest
    ``cap - 1`` periodic frames plus the reference (the capped rule, written on deaotpy's
    own concatenated tensors)."""

    def __init__(self, network, gap: int, keep_reference_cap: int | None = None) -> None:
        from aot.networks.engines import build_engine

        self.build = lambda: build_engine(
            "deaotengine",
            phase="eval",
            aot_model=network,
            gpu_id=0,
            long_term_mem_gap=gap,
            short_term_mem_skip=1,
        )
        self.transform = deaotpy_transforms()
        self.cap = keep_reference_cap
        self.engines = []

    @torch.no_grad()
    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        sample = self.transform({"current_img": image, "current_label": mask.astype(np.uint8)})
        frame = sample[0]["current_img"].unsqueeze(0).float()
        label = sample[0]["current_label"].unsqueeze(0).float()
        label = torch.nn.functional.interpolate(label, size=frame.shape[-2:], mode="nearest")
        engine = self.build()
        engine.add_reference_frame(frame, label, obj_nums=1, frame_step=0)
        self.engines.append(engine)

    @torch.no_grad()
    def track(self, image: np.ndarray) -> list[tuple[torch.Tensor, np.ndarray]]:
        """Per object: (2, h/4, w/4) background/object logits, (H, W) bool mask."""
        frame = self.transform({"current_img": image})[0]["current_img"].unsqueeze(0).float()
        results = []
        for engine in self.engines:
            engine.match_propogate_one_frame(frame)
            logits = engine.decode_current_logits(image.shape[:2])
            label = torch.argmax(logits, dim=1, keepdim=True).float()
            engine.update_memory(label)
            inner = engine.aot_engines[0]
            if self.cap is not None:
                self._trim(inner)
            results.append((inner.pred_id_logits[0, :2].clone(), (label[0, 0] > 0).numpy()))
        return results

    def _trim(self, inner) -> None:
        tokens = inner.enc_hw
        for layer in inner.long_term_memories:
            for element, tensor in enumerate(layer):
                if tensor is not None and tensor.shape[0] > self.cap * tokens:
                    layer[element] = torch.cat(
                        [tensor[: (self.cap - 1) * tokens], tensor[-tokens:]], dim=0
                    )


@pytest.fixture(scope="session")
def deaot_checkpoint(checkpoint_dir) -> Path:
    return make_random_deaot_checkpoint(checkpoint_dir / "deaott_seed0.pth")


@pytest.fixture(scope="module")
def deaot_network(deaot_checkpoint):
    return load_deaot(DeaotSettings(checkpoint=str(deaot_checkpoint)))


def run_ours(tracker: DeaotTracker, frames, prompts, kinds, store=None):
    """Our tracker over frames (states through ``store`` between frames when given); per
    tracked frame the step results."""
    features = tracker.encode(tracker.prepare(Image.fromarray(frames[0])))
    results = tracker.start(features, prompts, kinds, [False] * len(prompts))
    states = [r.state for r in results]
    refs = store.create(states) if store is not None else None
    per_frame = []
    for image in frames[1:]:
        if store is not None:
            states = store.load(refs)
        features = tracker.encode(tracker.prepare(Image.fromarray(image)))
        results = tracker.step(features, states)
        states = [r.state for r in results]
        if store is not None:
            refs = store.commit(refs, states)
        per_frame.append(results)
    return per_frame


def assert_equal_to_reference(ours, reference) -> None:
    for frame, (our_results, expected) in enumerate(zip(ours, reference, strict=True), 1):
        for obj, (result, (logits, mask)) in enumerate(zip(our_results, expected, strict=True)):
            assert torch.equal(result.logits, logits), f"frame {frame}, object {obj}: logits"
            assert np.array_equal(result.mask.numpy(), mask), f"frame {frame}, object {obj}"
            share = mask.mean()
            # The random-weight trap: a reference covering nothing or everything proves
            # nothing.
            assert 0.05 < share < 0.95, f"frame {frame}: reference mask covers {share:.1%}"


def test_input_preparation_equals_deaotpy_transforms():
    transform = deaotpy_transforms()
    generator = np.random.default_rng(0)
    for height, width in ((240, 427), (480, 854), (1080, 1920), (1081, 607), (241, 433)):
        image = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = transform({"current_img": image})[0]["current_img"].unsqueeze(0).float()
        ours = deaot_pixels(image, align_corners=True)
        assert ours.shape == expected.shape
        assert deaot_input_size((height, width), True) == tuple(expected.shape[-2:])
        assert torch.equal(ours, expected), (height, width)


def test_two_objects_equal_deaotpy_at_logit_level_through_the_store(deaot_network):
    sequence = davis_sequence("dog")
    frames = [read_frame(p) for p in frame_paths(sequence)[:6]]
    second = np.zeros(frames[0].shape[:2], bool)
    second[20:120, 30:200] = True
    masks = [read_mask(sequence), second]
    reference = DeaotpyReference(deaot_network, gap=9999)
    for mask in masks:
        reference.add(frames[0], mask)
    expected = [reference.track(image) for image in frames[1:]]

    tracker = DeaotTracker(deaot_network, "deaott", 9999, 4)
    store = InMemoryStateStore(codec=tracker.codec)
    prompts = [MaskPrompt(torch.from_numpy(m)) for m in masks]
    ours = run_ours(tracker, frames, prompts, ["mask", "mask"], store)
    assert_equal_to_reference(ours, expected)


def test_periodic_long_term_memories_equal_deaotpy_below_the_cap(deaot_network):
    sequence = davis_sequence("car-shadow")
    frames = [read_frame(p) for p in frame_paths(sequence)[:8]]
    reference = DeaotpyReference(deaot_network, gap=2)
    reference.add(frames[0], read_mask(sequence))
    expected = [reference.track(image) for image in frames[1:]]

    tracker = DeaotTracker(deaot_network, "deaott", 2, 8)
    prompt = MaskPrompt(torch.from_numpy(read_mask(sequence)))
    ours = run_ours(tracker, frames, [prompt], ["mask"], InMemoryStateStore(codec=tracker.codec))
    assert_equal_to_reference(ours, expected)
    assert sorted(ours[-1][0].state.long_term) == [2, 4, 6]


def test_capped_long_term_memory_keeps_the_reference_frame(deaot_network, shared_redis):
    """Gap 1, at most 3 long-term frames: the reference and the 2 newest. deaotpy's own cap
    would drop the reference first; the reference engine here is trimmed by the rule."""
    sequence = davis_sequence("car-shadow")
    frames = [read_frame(p) for p in frame_paths(sequence)[:7]]
    reference = DeaotpyReference(deaot_network, gap=1, keep_reference_cap=3)
    reference.add(frames[0], read_mask(sequence))
    expected = [reference.track(image) for image in frames[1:]]

    tracker = DeaotTracker(deaot_network, "deaott", 1, 3)
    prefix = f"test-deaot-{os.getpid()}:"
    store = RedisStateStore(shared_redis, codec=tracker.codec, key_prefix=prefix)
    prompt = MaskPrompt(torch.from_numpy(read_mask(sequence)))
    ours = run_ours(tracker, frames, [prompt], ["mask"], store)
    assert_equal_to_reference(ours, expected)
    sizes = []
    for results in ours:
        state = results[0].state
        newest = range(max(1, state.frame_index - 1), state.frame_index + 1)
        assert set(state.long_term) == set(newest)
        sizes.append(sum(len(blob) for blob in tracker.codec.encode(state).values()))
    assert sizes[-1] == sizes[-2] == sizes[-3] > sizes[0]  # capped from frame 2 on
    keys = list(shared_redis.scan_iter(match=f"{prefix}*"))
    assert sum(shared_redis.strlen(k) for k in keys if not k.endswith(b":answer")) == sizes[-1]
    shared_redis.delete(*keys)


def test_a_box_becomes_the_reference_mask_through_sam2(deaot_network, present_checkpoint):
    sequence = davis_sequence("dog")
    frames = [read_frame(p) for p in frame_paths(sequence)[:4]]
    ys, xs = np.nonzero(read_mask(sequence))
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    model, settings = build_model(present_checkpoint, 256)
    sam2 = build_tracker(model, settings)
    features = sam2.encode(sam2.prepare(Image.fromarray(frames[0])))
    (sam2_result,) = sam2.start(features, [BoxPrompt(box)], ["rectangle"], [False])
    sam2_mask = sam2.frame_mask(sam2_result, frames[0].shape[:2])
    assert 0 < sam2_mask.mean() < 1

    tracker = DeaotTracker(deaot_network, "deaott", 9999, 4, box_tracker=sam2)
    features = tracker.encode(tracker.prepare(Image.fromarray(frames[0])))
    (started,) = tracker.start(features, [BoxPrompt(box)], ["rectangle"], [False])
    assert np.array_equal(started.mask.numpy(), sam2_mask)
    assert started.state.last_box == box

    reference = DeaotpyReference(deaot_network, gap=9999)
    reference.add(frames[0], sam2_mask)
    expected = [reference.track(image) for image in frames[1:]]
    ours = run_ours(tracker, frames, [BoxPrompt(box)], ["rectangle"])
    assert_equal_to_reference(ours, expected)


def test_states_name_their_backend_and_model(deaot_network):
    from test_state import random_state
    from tracker_state import ForeignState, Sam2StateCodec, StateFromAnotherModel

    tracker = DeaotTracker(deaot_network, "deaott", 9999, 4)
    sam2_store = InMemoryStateStore(memory_capacity=6)
    (ref,) = sam2_store.create([random_state(2)])
    deaot_store = InMemoryStateStore(codec=tracker.codec)
    deaot_store._entries = sam2_store._entries  # one Redis, two functions
    with pytest.raises(StateFromAnotherModel) as raised:
        deaot_store.load([StateRef(ref.token, ref.frame_index)])
    assert raised.value.model_id == "sam2.1_hiera_t@512"

    frame = (np.random.default_rng(0).integers(0, 256, (64, 96, 3))).astype(np.uint8)
    features = tracker.encode(tracker.prepare(Image.fromarray(frame)))
    mask = torch.zeros(64, 96, dtype=torch.bool)
    mask[10:40, 20:60] = True
    (result,) = tracker.start(features, [MaskPrompt(mask)], ["mask"], [False])
    parts = tracker.codec.encode(result.state)
    with pytest.raises(ForeignState, match="deaot backend, model deaott@1040:gap9999:max4"):
        Sam2StateCodec(6).decode(parts)
    with pytest.raises(ForeignState):  # another DEAOT_MAX_LONG_TERM, another ring
        DeaotStateCodec(9999, 1).decode(parts)
    with pytest.raises(ForeignState):  # another DEAOT_LONG_TERM_GAP
        DeaotStateCodec(5, 3).decode(parts)
    assert DeaotStateCodec(9999, 3).decode(parts).model_id == tracker.model_id
    assert tracker.codec.backend == DEAOT_BACKEND


def test_checkpoints_load_as_published_and_nothing_else(deaot_checkpoint, tmp_path):
    weights = checkpoint_state_dict(deaot_checkpoint)
    wrapped = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in weights.items()}}, wrapped)
    network = load_deaot(DeaotSettings(checkpoint=str(wrapped)))
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensor, weights[name]), name

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unpickled",))

    hostile = tmp_path / "hostile.pth"
    torch.save({"state_dict": weights, "extra": Payload()}, hostile)
    with pytest.raises(ModelSetupError, match="weights-only"):
        load_deaot(DeaotSettings(checkpoint=str(hostile)))
    partial = tmp_path / "partial.pth"
    torch.save({"state_dict": dict(list(weights.items())[:10])}, partial)
    with pytest.raises(ModelSetupError, match="lacks"):
        load_deaot(DeaotSettings(checkpoint=str(partial)))
    with pytest.raises(ModelSetupError, match="DEAOT_MODEL"):
        DeaotSettings.from_env({"DEAOT_MODEL": "aott"})
    with pytest.raises(ModelSetupError, match="DEAOT_MAX_LONG_TERM"):
        DeaotSettings.from_env({"DEAOT_MAX_LONG_TERM": "0"})
    assert ModelSettings.from_env({}).config  # SAM 2 settings still read beside DeAOT's


# -- over HTTP, as CVAT drives the function -------------------------------------------


def png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def state_bytes(client, token: str) -> int:
    keys = [k for k in client.scan_iter(match=f"*{token}:*") if not k.endswith(b":answer")]
    return sum(client.strlen(k) for k in keys)


@pytest.mark.parametrize("objects", [1, 3])
def test_cvat_flow_equals_deaotpy_and_survives_restart(
    objects, deaot_checkpoint, deaot_network, present_checkpoint, own_redis, function_server_factory
):
    """serve.py with TRACKER_BACKEND=deaot over a real socket, states in a real Redis, the
    server killed and restarted mid-track: every answer equals the shape made from
    deaotpy's mask (mask, polygon, rectangle), and Redis bytes per object stay flat."""
    sequence = davis_sequence(HTTP_SEQUENCE)
    frames = [read_frame(p) for p in frame_paths(sequence)[:13]]
    height, width = frames[0].shape[:2]
    gt = read_mask(sequence)
    ys, xs = np.nonzero(gt)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    polygon = [20.0, 20.0, width / 2, 30.0, width / 2, height / 2, 25.0, height / 2 - 10]
    shapes = [
        {"type": "mask", "points": encode_shape("mask", gt)},
        {"type": "polygon", "points": polygon},
        {"type": "rectangle", "points": box},
    ][:objects]

    server = function_server_factory(
        present_checkpoint,
        image_size=256,
        redis_port=own_redis.port,
        extra_env={"TRACKER_BACKEND": "deaot", "DEAOT_CHECKPOINT": str(deaot_checkpoint)},
    )
    status, answer = server.post({"image": png_b64(frames[0]), "shapes": shapes, "states": []})
    assert status == 200, answer
    states = json.loads(json.dumps(answer["states"]))

    # The reference starts from the masks the function started from: the prompt's own
    # mask, the rasterised polygon, SAM 2's mask for the box (the first answer's box).
    sam2 = build_tracker(*build_model(present_checkpoint, 256))
    sam2_features = sam2.encode(sam2.prepare(Image.fromarray(frames[0])))
    reference = DeaotpyReference(deaot_network, gap=9999)
    for shape in shapes:
        if shape["type"] == "rectangle":
            (result,) = sam2.start(sam2_features, [BoxPrompt(tuple(box))], ["rectangle"], [False])
            mask = sam2.frame_mask(result, (height, width))
            assert answer["shapes"][2]["points"] == encode_shape("rectangle", mask)
        else:
            mask = shape_prompt(shape["type"], shape["points"], (height, width)).mask.numpy()
        reference.add(frames[0], mask)

    sizes: dict[int, list[int]] = {}
    for index in range(1, len(frames)):
        if index == 7:
            server.kill()
            server.start()
        expected = reference.track(frames[index])
        status, answer = server.post(
            {"image": png_b64(frames[index]), "shapes": [None] * objects, "states": states}
        )
        assert status == 200, answer
        states = json.loads(json.dumps(answer["states"]))
        for obj, (shape, (_, mask)) in enumerate(zip(answer["shapes"], expected, strict=True)):
            kind = shapes[obj]["type"]
            assert shape == {"type": kind, "points": encode_shape(kind, mask)}, (index, obj)
            assert 0.05 < mask.mean() < 0.95
            sizes.setdefault(obj, []).append(state_bytes(own_redis.client(), states[obj]["sam2"]))
    for obj, per_frame in sizes.items():
        assert per_frame[7] == per_frame[11] > 0, (obj, per_frame)
    log = server.log.read_text()
    assert "DeAOT tracker ready: model deaott" in log


def test_malformed_stored_states_are_refused_not_tracked(deaot_network):
    """Stored parts that decode as safetensors but do not fit together or the model are
    StateFormatError (the handler's 410), never a crash inside the model."""
    from dataclasses import replace

    from tracker_state import StateFormatError

    tracker = DeaotTracker(deaot_network, "deaott", 1, 3)
    frame = np.random.default_rng(0).integers(0, 256, (64, 96, 3)).astype(np.uint8)
    features = tracker.encode(tracker.prepare(Image.fromarray(frame)))
    mask = torch.zeros(64, 96, dtype=torch.bool)
    mask[10:40, 20:60] = True
    (started,) = tracker.start(features, [MaskPrompt(mask)], ["mask"], [False])
    (stepped,) = tracker.step(features, [started.state])
    state = stepped.state
    assert sorted(state.long_term) == [1]
    codec = tracker.codec
    decoded = codec.decode(codec.encode(state))
    assert decoded.long_term.keys() == state.long_term.keys()
    # Kept tensors own their memory (no view into a larger buffer of the engine).
    for tensor in (
        t for layer in state.reference + state.short_term for t in layer if t is not None
    ):
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()

    def shrunk(memory, sizes):
        return tuple(
            tuple(None if t is None else t[tuple(slice(0, n) for n in sizes)] for t in layer)
            for layer in memory
        )

    broken = {
        "another input size": replace(state, input_size=(17, 17)),
        "fewer tokens": replace(state, reference=shrunk(state.reference, (5,))),
        "fewer channels": replace(state, short_term=shrunk(state.short_term, (1, 7))),
        "an empty layout": replace(
            state,
            reference=((None,) * 4,),
            short_term=((None,) * 4,),
            long_term={1: ((None,) * 4,)},
        ),
    }
    for what, bad in broken.items():
        with pytest.raises(StateFormatError):
            codec.decode(codec.encode(bad))
            pytest.fail(f"a state with {what} was decoded")
    # The periodic long-term memory a state at frame 1 with gap 1 must hold: frame 1.
    parts = codec.encode(state)
    tampered = {
        "a long-term part of another frame": {**parts, "long0": parts["reference"]},
        "no long-term part": {k: v for k, v in parts.items() if k != "long0"},
    }
    for what, bad_parts in tampered.items():
        with pytest.raises(StateFormatError):
            codec.decode(bad_parts)
            pytest.fail(f"a state with {what} was decoded")


def test_a_keyframe_on_a_deaot_object_is_a_clear_400_and_frame_numbers_are_taken(deaot_network):
    """DeAOT keeps SAM-Track's rule (the reference is the frame an object started on): a
    shape with its frame sent with a state is refused, naming what to do; frame numbers on
    starts and continuations are accepted (DeAOT's memory does not encode time)."""
    from model_handler import ModelHandler
    from tracking.protocol import RequestError

    tracker = DeaotTracker(deaot_network, "deaott", 9999, 4)
    handler = ModelHandler(tracker, InMemoryStateStore(codec=tracker.codec))
    sequence = davis_sequence("dog")
    frames = [png_b64(read_frame(p)) for p in frame_paths(sequence)[:3]]
    mask = {"type": "mask", "points": encode_shape("mask", read_mask(sequence)), "frame": 0}
    started = handler.infer({"image": frames[0], "shapes": [mask], "states": []})
    moved = handler.infer(
        {"image": frames[1], "shapes": [{"type": "mask", "frame": 1}], "states": started["states"]}
    )
    assert moved["shapes"][0] is not None
    with pytest.raises(RequestError) as raised:
        handler.infer(
            {"image": frames[2], "shapes": [{**mask, "frame": 2}], "states": moved["states"]}
        )
    assert raised.value.status == 400
    assert "DeAOT takes no keyframes" in raised.value.message
    # Nothing changed: the object goes on from frame 1.
    assert handler.infer({"image": frames[2], "shapes": [None], "states": moved["states"]})[
        "shapes"
    ]
