"""Shared fixtures: DAVIS frames, seeded random checkpoints, SAM 2 models, Redis servers."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tracking.model_loading import ModelSettings, load_sam2  # noqa: E402
from tracking.random_weights import make_random_checkpoint  # noqa: E402

DAVIS = Path(os.environ.get("DAVIS_DIR", REPO.parent / "shared" / "davis2016"))
# Tests use these sequences only; the others stay unseen for acceptance checks.
TEST_SEQUENCES = ("car-shadow", "dog", "blackswan")
SMALL_IMAGE_SIZE = 512  # unit tests run SAM 2 at 512 input (4x fewer pixels); HTTP tests at 1024

warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
torch.set_num_threads(max(1, os.cpu_count() or 1))


def davis_sequence(name: str) -> Path:
    path = DAVIS / name
    if not (path / "frames").is_dir():
        pytest.skip(f"DAVIS sequence {name} not found under {DAVIS} (see shared/davis2016)")
    return path


def frame_paths(sequence: Path) -> list[Path]:
    return sorted((sequence / "frames").glob("*.jpg"))


def ground_truth(sequence: Path, index: int = 0) -> np.ndarray:
    return np.array(Image.open(sequence / "masks" / f"{index:05d}.png")) > 0


def frame_folder(sequence: Path, count: int, root: Path) -> Path:
    """A folder holding the first ``count`` frames (as the official loader wants them)."""
    folder = root / f"{sequence.name}-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for path in frame_paths(sequence)[:count]:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path)
    return folder


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def present_checkpoint(checkpoint_dir) -> Path:
    """Seeded random SAM 2.1 tiny weights with the object score shifted so objects stay present."""
    return make_random_checkpoint(checkpoint_dir / "sam2.1_tiny_seed0_present.pt", seed=0)


@pytest.fixture(scope="session")
def absent_checkpoint(checkpoint_dir) -> Path:
    """Seeded random weights with the object score shifted down: tracked objects vanish
    after the prompt frame (the "not visible" path)."""
    return make_random_checkpoint(
        checkpoint_dir / "sam2.1_tiny_seed0_absent.pt", seed=0, present_shift=-2.0
    )


def build_model(checkpoint: Path, image_size: int):
    overrides = () if image_size == 1024 else (f"++model.image_size={image_size}",)
    settings = ModelSettings(checkpoint=str(checkpoint), device="cpu", hydra_overrides=overrides)
    return load_sam2(settings, {}), settings


@pytest.fixture(scope="session")
def small_model(present_checkpoint):
    return build_model(present_checkpoint, SMALL_IMAGE_SIZE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test may stop and restart."""

    def __init__(self, persistent: bool = True) -> None:
        # Persistent like Kvrocks (cvat_redis_ondisk): states survive a restart.
        self.persistent = persistent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                executable,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "yes" if self.persistent else "no"),
                *("--appendfsync", "always", "--dir", str(self.dir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture
def own_redis():
    server = RedisServer()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def shared_redis() -> redis.Redis:
    """The machine's Redis on 6379 (CI shares it: tests use fresh random keys, never stop it)."""
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis server on 127.0.0.1:6379")
    return client


class FunctionServer:
    """``serve.py`` in its own process, reached over a real socket like CVAT reaches Nuclio."""

    def __init__(
        self,
        checkpoint: Path,
        image_size: int = 1024,
        redis_port: int | None = None,
        extra_env: dict[str, str] | None = None,
        script: Path | None = None,
    ) -> None:
        self.script = script or REPO / "serve.py"  # or a test's wrapper around serve.run()
        self.port = free_port()
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "SAM2_CHECKPOINT": str(checkpoint),
            "SAM2_DEVICE": "cpu",
            **(extra_env or {}),
        }
        for variable in ("CVAT_FUNCTIONS_REDIS_HOST", "CVAT_REDIS_HOST"):
            self.env.pop(variable, None)
        if image_size != 1024:
            self.env["SAM2_HYDRA_OVERRIDES"] = f"++model.image_size={image_size}"
        if redis_port is not None:
            self.env["CVAT_FUNCTIONS_REDIS_HOST"] = "127.0.0.1"
            self.env["CVAT_FUNCTIONS_REDIS_PORT"] = str(redis_port)
        self.process: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="serve-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 120) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(self.script)],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("server did not become ready")

    def kill(self) -> None:
        """Kill -9: nothing gets a chance to flush or clean up."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def post(self, body: object, raw: bytes | None = None, timeout: float = 300):
        """(status, parsed JSON answer) for a JSON body (or raw bytes as the body)."""
        status, answer = self.post_raw(body, raw, timeout)
        return status, json.loads(answer)

    def post_raw(
        self, body: object, raw: bytes | None = None, timeout: float = 300
    ) -> tuple[int, bytes]:
        """(status, the answer's bytes exactly as sent)."""
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@pytest.fixture
def function_server_factory():
    servers: list[FunctionServer] = []

    def factory(*args, **kwargs) -> FunctionServer:
        server = FunctionServer(*args, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.kill()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8  # signature, then the IHDR chunk: length, type, data, crc
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def counted_encoder(tracker) -> dict[str, int]:
    """Counts the tracker's image encoder runs (``runs["encode_frame"]``): a check that an
    answer came before any model work."""
    runs = {"encode_frame": 0}
    encode = tracker.encode_frame

    def counting_encode(*args, **kwargs):
        runs["encode_frame"] += 1
        return encode(*args, **kwargs)

    tracker.encode_frame = counting_encode
    return runs


def track_frames(tracker, paths, prompts, store=None):
    """Drive a Sam2StreamTracker over frame files as the handler does, yielding per frame
    (logits (objects, 1, H, W) at the frame's size, states). With a ``store`` every state
    goes through it (serialised, bfloat16 memories) between frames."""
    from tracking.engine import MaskPrompt
    from tracking.frames import preprocess_frame

    refs, states = None, []
    for index, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        frame_size = (image.height, image.width)
        pixels = preprocess_frame(image, tracker.image_size, tracker.device)
        features = tracker.encode_frame(pixels, frame_size)
        if index == 0:
            kinds = ["mask" if isinstance(p, MaskPrompt) else "rectangle" for p in prompts]
            results = tracker.start(features, prompts, kinds, [False] * len(prompts))
        else:
            if store is not None:
                states = store.load(refs)
            results = tracker.step(features, states)
        states = [r.state for r in results]
        if store is not None:
            refs = store.create(states) if index == 0 else store.commit(refs, states)
        low_res = torch.stack([r.low_res_logits for r in results])
        yield tracker.upsample(low_res, frame_size), states


def official_logits(model, folder, prompts, num_frames: int) -> list[torch.Tensor]:
    """Video-resolution logits (objects, 1, H, W) per frame from the official predictor."""
    state = model.init_state(str(folder))
    from tracking.engine import MaskPrompt

    for obj_id, prompt in enumerate(prompts):
        if isinstance(prompt, MaskPrompt):
            model.add_new_mask(state, 0, obj_id, prompt.mask)
        else:
            model.add_new_points_or_box(state, 0, obj_id, box=list(prompt.box))
    frames = {}
    for index, _, logits in model.propagate_in_video(state, max_frame_num_to_track=num_frames - 1):
        frames[index] = logits.clone()
    return [frames[i] for i in range(num_frames)]
