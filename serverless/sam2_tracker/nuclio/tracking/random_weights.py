"""Seeded random SAM 2 checkpoints, saved like official ones (for tests and benchmarks).

No official weights can be fetched on machines without internet; equivalence with
the official predictor on the same random weights is the proof of fidelity, and
speed does not depend on weight values.

    python -m tracking.random_weights out.pt [--config CFG] [--seed N] [--no-present-shift]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sam2.build_sam import build_sam2

from tracking.model_loading import DEFAULT_MODEL_CFG

# Random weights often give a negative object score on every frame, so every mask
# would be empty and an equivalence test would test nothing. Shifting the score
# head's output bias keeps objects "present"; a checkpoint without the shift
# exercises the "not visible" path.
PRESENT_SHIFT = 1.0


def make_random_checkpoint(
    path: Path, config: str = DEFAULT_MODEL_CFG, seed: int = 0, present_shift: float = PRESENT_SHIFT
) -> Path:
    torch.manual_seed(seed)
    model = build_sam2(config, ckpt_path=None, device="cpu")
    if present_shift:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += present_shift
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--config", default=DEFAULT_MODEL_CFG)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-present-shift", action="store_true")
    args = parser.parse_args()
    shift = 0.0 if args.no_present_shift else PRESENT_SHIFT
    print(make_random_checkpoint(args.path, args.config, args.seed, shift))


if __name__ == "__main__":
    main()
