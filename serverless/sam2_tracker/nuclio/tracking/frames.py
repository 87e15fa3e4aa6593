"""Frames as CVAT sends them (base64 JPEG/PNG) to SAM 2's input tensor.

Preprocessing gives exactly the official predictor's values
(``sam2.utils.misc._load_img_as_tensor`` and ``load_video_frames_from_jpg_images``):
PIL RGB, ``resize((S, S))`` with PIL's default filter, uint8 / 255.0 in float64 then
float32, minus ImageNet mean, divided by std.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# 8K UHD is the largest frame CVAT users are expected to send; anything larger is
# refused before decoding so a crafted header cannot make us allocate gigabytes.
DEFAULT_MAX_PIXELS = 7680 * 4320


@dataclass(frozen=True)
class PreparedFrame:
    """A decoded frame and the network input a backend made of it."""

    image: Image.Image  # RGB, as CVAT sent it
    pixels: torch.Tensor  # (1, 3, h, w) float32, normalised, on the backend's device

    @property
    def frame_size(self) -> tuple[int, int]:
        return (self.image.height, self.image.width)


class FrameError(ValueError):
    """The request's image cannot be used (missing, not decodable, too large)."""


class FrameTooLarge(FrameError):
    """The image has more pixels than the configured limit (refused before decoding)."""


def decode_frame(image_b64: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode CVAT's base64 frame into an RGB PIL image, refusing decompression bombs."""
    if not isinstance(image_b64, str) or not image_b64:
        raise FrameError("'image' must be a non-empty base64 string")
    try:
        data = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError) as error:
        raise FrameError(f"'image' is not valid base64: {error}") from error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise FrameTooLarge(
                    f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
                )
            return image.convert("RGB")
    except FrameError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise FrameTooLarge(f"image is too large to decode safely: {error}") from error
    except MemoryError:
        raise
    except Exception as error:
        raise FrameError(f"'image' could not be decoded as an image: {error!r}") from error


@functools.cache
def _normalisation_table() -> np.ndarray:
    """(3, 256) float32: the normalised value of each uint8 level per channel, computed
    with exactly the official arithmetic (float64 / 255, to float32, - mean, / std)."""
    levels = torch.from_numpy(np.arange(256, dtype=np.uint8) / 255.0).to(torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None]
    table = levels[None, :] - mean
    table /= std
    return table.numpy()


def preprocess_frame(image: Image.Image, image_size: int, device: torch.device) -> torch.Tensor:
    """SAM 2 input for one frame: (1, 3, image_size, image_size) float32, normalised.

    Equal bit for bit to the official float pipeline, but as a table look-up per pixel
    (a uint8 has 256 levels), which is several times faster than the float arithmetic.
    """
    resized = np.asarray(image.resize((image_size, image_size)))  # (S, S, 3) uint8
    table = _normalisation_table()
    if device.type == "cpu":
        pixels = np.empty((3, image_size, image_size), dtype=np.float32)
        for channel in range(3):
            np.take(table[channel], resized[:, :, channel], out=pixels[channel])
        return torch.from_numpy(pixels).unsqueeze(0)
    return lookup_on_device(resized, device)


def lookup_on_device(resized: np.ndarray, device: torch.device) -> torch.Tensor:
    """The table look-up done on ``device``: ships uint8 (4x fewer bytes than float32)
    to an accelerator and normalises there. (S, S, 3) uint8 -> (1, 3, S, S) float32."""
    levels = torch.tensor(resized, device=device).permute(2, 0, 1).long()
    channels = torch.arange(3, device=device)[:, None, None]
    return _device_table(device)[channels, levels].unsqueeze(0)


@functools.cache
def _device_table(device: torch.device) -> torch.Tensor:
    """The normalisation table on ``device``, copied there once, not every frame."""
    return torch.from_numpy(_normalisation_table()).to(device)
