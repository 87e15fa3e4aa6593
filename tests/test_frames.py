"""Frame decoding and preprocessing against SAM 2's own frame loader."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from conftest import davis_sequence, frame_folder, png_claiming_size
from PIL import Image
from sam2.utils.misc import load_video_frames_from_jpg_images
from tracking.frames import (
    FrameError,
    FrameTooLarge,
    decode_frame,
    lookup_on_device,
    preprocess_frame,
)


@pytest.mark.parametrize("image_size", [256, 1024])
def test_preprocessing_equals_the_official_loader(tmp_path, image_size):
    folder = frame_folder(davis_sequence("dog"), 2, tmp_path)
    official, height, width = load_video_frames_from_jpg_images(
        str(folder), image_size, offload_video_to_cpu=True, compute_device=torch.device("cpu")
    )
    for index, path in enumerate(sorted(folder.iterdir())):
        image = decode_frame(base64.b64encode(path.read_bytes()).decode())
        assert (image.height, image.width) == (height, width)
        ours = preprocess_frame(image, image_size, torch.device("cpu"))
        assert ours.dtype == torch.float32 and ours.shape == (1, 3, image_size, image_size)
        assert torch.equal(ours[0], official[index])
        # The accelerator path (uint8 shipped, looked up on the device), run on CPU here.
        resized = np.asarray(image.resize((image_size, image_size)))
        assert torch.equal(lookup_on_device(resized, torch.device("cpu")), ours)


def test_frames_too_large_are_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(path)
    data = base64.b64encode(path.read_bytes()).decode()
    assert decode_frame(data, max_pixels=400 * 300).size == (400, 300)
    with pytest.raises(FrameError, match="exceeds"):
        decode_frame(data, max_pixels=400 * 300 - 1)
    bomb = base64.b64encode(png_claiming_size(100_000, 100_000)).decode()
    with pytest.raises(FrameTooLarge):  # beyond PIL's own decompression-bomb limit too
        decode_frame(bomb, max_pixels=10**12)
    with pytest.raises(FrameError, match="base64"):
        decode_frame("not base64!")
    with pytest.raises(FrameError, match="decoded"):
        decode_frame(base64.b64encode(b"\x89PNG\r\n\x1a\n broken").decode())
