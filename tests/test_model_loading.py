"""Checkpoint resolution: official download into a cache, and clear errors."""

from __future__ import annotations

import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest
from conftest import free_port
from tracking.model_loading import (
    ModelSettings,
    ModelSetupError,
    download_official_checkpoint,
    load_sam2,
)

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def test_official_checkpoint_is_downloaded_once_into_the_cache(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "sam2.1_hiera_tiny.pt").write_bytes(b"weights")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        path = download_official_checkpoint(CONFIG, tmp_path / "cache", base_url=base)
        assert path.read_bytes() == b"weights"
        (served / "sam2.1_hiera_tiny.pt").unlink()  # a second call must not fetch again
        assert download_official_checkpoint(CONFIG, tmp_path / "cache", base_url=base) == path
    finally:
        server.shutdown()
        server.server_close()


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
