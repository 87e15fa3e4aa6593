"""Shared fixtures: DAVIS frames, seeded random checkpoints, SAM 2 models, Redis servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
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
