"""Checkpoint resolution: official download into a cache, and clear errors."""

from __future__ import annotations

import hashlib
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest
from conftest import free_port
from tracking.model_loading import (
    OFFICIAL_CHECKPOINTS,
    OFFICIAL_CHECKSUMS,
    ModelSettings,
    ModelSetupError,
    download_official_checkpoint,
    load_sam2,
)

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


CHECKSUMS = {"sam2.1_hiera_tiny.pt": hashlib.sha256(b"weights").hexdigest()}


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on loopback, standing in for Meta's download site."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_official_checkpoint_is_downloaded_once_into_the_cache(tmp_path, served):
    folder, base = served
    (folder / "sam2.1_hiera_tiny.pt").write_bytes(b"weights")
    path = download_official_checkpoint(
        CONFIG, tmp_path / "cache", base_url=base, checksums=CHECKSUMS
    )
    assert path.read_bytes() == b"weights"
    (folder / "sam2.1_hiera_tiny.pt").unlink()  # a second call must not fetch again
    assert (
        download_official_checkpoint(CONFIG, tmp_path / "cache", base_url=base, checksums=CHECKSUMS)
        == path
    )


def test_a_download_with_another_checksum_is_refused(tmp_path, served):
    folder, base = served
    (folder / "sam2.1_hiera_tiny.pt").write_bytes(b"tampered")
    with pytest.raises(ModelSetupError, match=r"SHA-256 \w+, not the official"):
        download_official_checkpoint(CONFIG, tmp_path / "cache", base_url=base, checksums=CHECKSUMS)
    assert not any((tmp_path / "cache").iterdir())  # nothing kept


def test_the_official_checksums_cover_every_official_checkpoint():
    assert set(OFFICIAL_CHECKSUMS) == set(OFFICIAL_CHECKPOINTS.values())
    assert all(len(value) == 64 and int(value, 16) >= 0 for value in OFFICIAL_CHECKSUMS.values())


def test_unreachable_download_says_what_to_do(tmp_path):
    with pytest.raises(ModelSetupError, match="set SAM2_CHECKPOINT"):
        download_official_checkpoint(CONFIG, tmp_path, base_url=f"http://127.0.0.1:{free_port()}")
    assert not any(tmp_path.iterdir())  # nothing half-written left behind
    with pytest.raises(ModelSetupError, match="no official checkpoint"):
        download_official_checkpoint("configs/custom.yaml", tmp_path)


def test_missing_checkpoint_file_is_named(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelSetupError, match=r"nope\.pt"):
        load_sam2(ModelSettings(checkpoint=str(missing), device="cpu"), {})
