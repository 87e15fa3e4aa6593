"""sam2-cvat-track's tracking from keyframes against the official SAM2VideoPredictor,
on the same frames and keyframes, in one run.

    python -m bench.keyframe_benchmark                         # 20 frames of car-shadow
    python -m bench.keyframe_benchmark --frames 40 --keyframes 0 20 --repeats 2

Ours: the tool's own run (``cvat_track.run.track_job``): frames read and decoded one at
a time from the folder, keyframes from CVAT mask shapes, every frame's result encoded
as CVAT RLE. Official: ``init_state`` on the same folder (it loads every frame up
front: reported apart, not charged per frame), ``add_new_mask`` on each keyframe,
``propagate_in_video``. Passes alternate which goes first. Seeded random weights
(speed does not depend on their values); masks are compared as a check. Prints a
table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from cvat_sdk.masks import encode_mask
from PIL import Image
from tracking.model_loading import DEFAULT_MODEL_CFG, ModelSettings, build_tracker, load_sam2
from tracking.random_weights import make_random_checkpoint
from tracking.shapes import decode_rle
from tracking.video import FolderFrames

from cvat_track.objects import Shape
from cvat_track.run import track_job

REPO = Path(__file__).resolve().parents[1]
DAVIS = REPO.parent / "shared" / "davis2016"

warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")


def ground_truth(sequence: Path, frame: int) -> np.ndarray:
    return np.array(Image.open(sequence / "masks" / f"{frame:05d}.png")) > 0


def run_ours(tracker, folder: Path, shapes: list[Shape]) -> tuple[float, dict[int, np.ndarray]]:
    start = time.perf_counter()
    result = track_job(tracker, FolderFrames(folder), shapes, [])
    seconds = time.perf_counter() - start
    height, width = FolderFrames(folder).read(0).size[::-1]
    masks = {s.frame: decode_rle(s.points, height, width) for s in result.new_shapes}
    return seconds, masks


def run_official(model, folder: Path, shapes: list[Shape]) -> tuple[float, float, dict]:
    start = time.perf_counter()
    state = model.init_state(str(folder))
    loaded = time.perf_counter()
    height, width = state["video_height"], state["video_width"]
    for shape in shapes:
        model.add_new_mask(state, shape.frame, 0, decode_rle(shape.points, height, width))
    masks = {}
    for index, _, logits in model.propagate_in_video(state):
        masks[index] = (logits[0, 0] > 0).cpu().numpy()
    return loaded - start, time.perf_counter() - loaded, masks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_MODEL_CFG)
    parser.add_argument("--sequence", default="car-shadow")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--keyframes", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--image-size", type=int, default=None, help="SAM 2 input (1024)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    sequence = DAVIS / args.sequence
    work = Path(tempfile.mkdtemp(prefix="sam2-keyframe-bench-"))
    folder = work / "frames"
    folder.mkdir()
    for path in sorted((sequence / "frames").glob("*.jpg"))[: args.frames]:
        (folder / path.name).symlink_to(path)
    shapes = [
        Shape("mask", f, encode_mask(ground_truth(sequence, f)), "object", group=1)
        for f in args.keyframes
    ]
    overrides = (f"++model.image_size={args.image_size}",) if args.image_size else ()
    checkpoint = make_random_checkpoint(work / "random.pt", config=args.config)
    # Eager float32 on CPU (exact); SAM 2's GPU defaults (bfloat16, compiled) on CUDA.
    settings = ModelSettings(
        config=args.config,
        checkpoint=str(checkpoint),
        device=args.device,
        hydra_overrides=overrides,
        compile=False,
    )
    model = load_sam2(settings, {})
    tracker = build_tracker(model, settings)
    tracked = args.frames - min(args.keyframes)

    ours_seconds, official_seconds, loads, agreement = [], [], [], []
    for repeat in range(args.repeats):
        order = ["ours", "official"] if repeat % 2 == 0 else ["official", "ours"]
        for path in order:
            if path == "ours":
                seconds, ours_masks = run_ours(tracker, folder, shapes)
                ours_seconds.append(seconds)
            else:
                load, seconds, official_masks = run_official(model, folder, shapes)
                loads.append(load)
                official_seconds.append(seconds)
        agreement.append(
            min(float((ours_masks[f] == official_masks[f]).mean()) for f in ours_masks)
        )

    ours_fps = tracked / statistics.median(ours_seconds)
    official_fps = tracked / statistics.median(official_seconds)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, device {tracker.device}",
        "config": args.config,
        "image_size": tracker.image_size,
        "sequence": args.sequence,
        "frames": args.frames,
        "keyframes": args.keyframes,
        "frames_tracked": tracked,
        "ours_seconds": ours_seconds,
        "official_seconds": official_seconds,
        "official_load_seconds": loads,
        "ours_frames_per_second": ours_fps,
        "official_frames_per_second": official_fps,
        "ratio": ours_fps / official_fps,
        "min_pixel_agreement": min(agreement),
    }
    print(
        f"| frames | keyframes | ours frames/s | official frames/s | ratio | official load s |\n"
        f"|---|---|---|---|---|---|\n"
        f"| {tracked} | {' '.join(map(str, args.keyframes))} | {ours_fps:.3f} | "
        f"{official_fps:.3f} | {ours_fps / official_fps:.2f} | "
        f"{statistics.median(loads):.2f} |\n"
        f"min pixel agreement with the official masks: {min(agreement):.6%}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "keyframes.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
