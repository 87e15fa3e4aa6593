"""Frames to DeAOT's input, exactly as SAM-Track composes deaotpy's evaluation transforms.

SAM-Track's tracker runs ``MultiRestrictSize(None, 1040, flip=False, [1], align_corners)``
then ``MultiToTensor`` (``aot/dataloaders/video_transforms.py``) on the RGB uint8 frame.
That module imports torchvision, which cannot be installed beside our torch, so the
same arithmetic is written here; exactness depends on each detail (measured: PIL's
resize instead of OpenCV's cubic one, or normalising in float32 instead of float64,
each change 1 to 2 % of the pixels of some masks):

* no short-edge limit; the long edge scaled down to at most ``max_long_edge`` (1040);
* sides truncated to integers, then rounded to 16k + 1 for models whose convolutions
  align corners (all DeAOT models), 16k otherwise (numpy's round-half-to-even);
* ``cv2.resize`` with ``INTER_CUBIC`` on the uint8 image, only when the size changes;
* ``/ 255``, minus the ImageNet mean, divided by its std in float64, then float32.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_LONG_EDGE = 800 * 1.3  # deaotpy's TEST_MAX_LONG_EDGE, which SAM-Track keeps
STRIDE = 16


def deaot_input_size(
    frame_size: tuple[int, int], align_corners: bool, max_long_edge: float = MAX_LONG_EDGE
) -> tuple[int, int]:
    """(height, width) of DeAOT's input for a frame of ``frame_size`` (height, width)."""
    height, width = frame_size
    scale = 1.0
    long_edge = max(height, width)
    if long_edge > max_long_edge:
        scale = float(max_long_edge) / long_edge
    new_height, new_width = int(scale * height), int(scale * width)
    offset = 1 if align_corners else 0

    def rounded(side: int) -> int:
        if (side - offset) % STRIDE == 0:
            return side
        return int(np.around((side - offset) / STRIDE) * STRIDE + offset)

    return rounded(new_height), rounded(new_width)


def deaot_pixels(
    image: np.ndarray, align_corners: bool, max_long_edge: float = MAX_LONG_EDGE
) -> torch.Tensor:
    """(1, 3, h, w) float32 network input for an (H, W, 3) uint8 RGB frame."""
    height, width = image.shape[:2]
    size = deaot_input_size((height, width), align_corners, max_long_edge)
    if size != (height, width):
        image = cv2.resize(image, dsize=(size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    normalised = image / 255.0  # float64, as deaotpy's ToTensor
    normalised -= IMAGENET_MEAN
    normalised /= IMAGENET_STD
    return torch.from_numpy(normalised.transpose((2, 0, 1))).unsqueeze(0).float()


def label_for_input(mask: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) float32 label (0 background, 1 object) at the input size, from an
    (H, W) bool mask at the frame's size, as SAM-Track hands a reference mask to the
    engine (int tensor, to float, nearest-neighbour resize)."""
    label = torch.from_numpy(mask.astype(np.int32))[None, None].float()
    return torch.nn.functional.interpolate(label, size=input_size, mode="nearest")
