"""How many objects one call may carry on CPU, per SAM 2.1 size: the image encoder's time
per frame and each object's tracking time, measured at the threads one worker gets.

    python -m bench.call_budget                    # all four sizes, 1 thread per worker
    python -m bench.call_budget --sizes tiny large --threads 2 --budget 60

A call costs about ``encoder + objects x per_object`` seconds (decoding, shapes and the
store add tens of milliseconds). CVAT waits 120 s for a call; the budget (default 60 s,
half of that) leaves room for larger frames, a busy node and the state store. The
default of 1 thread is one worker's share of a 2-core replica with 2 workers (the CPU
specs' ``numWorkers``), the slowest setting the specs allow. Per object: the step time
of 3 objects minus 1 object, halved, with the memory full (7 frames tracked first, on
one frame's features: timing does not depend on the pixels). Seeded random weights.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tracking.engine import MaskPrompt
from tracking.model_loading import OFFICIAL_CHECKPOINTS, ModelSettings, build_tracker, load_sam2
from tracking.random_weights import make_random_checkpoint

from bench.run_benchmark import DAVIS, REPO, object_masks, report, spread

warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")

SIZES = {
    name.removeprefix("sam2.1_hiera_").removesuffix(".pt"): config
    for config, name in OFFICIAL_CHECKPOINTS.items()
}
CVAT_TIMEOUT_SECONDS = 120.0


def step_seconds(tracker, features, masks: list[np.ndarray], repeats: int) -> list[float]:
    """Seconds of one tracking step for ``len(masks)`` objects whose memory is full."""
    prompts = [MaskPrompt(torch.from_numpy(mask)) for mask in masks]
    results = tracker.start(features, prompts, ["mask"] * len(masks), [False] * len(masks))
    states = [r.state for r in results]
    for _ in range(tracker.memory_capacity + 1):
        states = [r.state for r in tracker.step(features, states)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tracker.step(features, states)
        times.append(time.perf_counter() - start)
    return times


def measure(size: str, frame: Path, masks: list[np.ndarray], repeats: int, work: Path) -> dict:
    config = SIZES[size]
    checkpoint = make_random_checkpoint(work / f"{size}.pt", config=config)
    settings = ModelSettings(config=config, checkpoint=str(checkpoint), device="cpu")
    tracker = build_tracker(load_sam2(settings, {}), settings)
    image = Image.open(frame).convert("RGB")
    encoder = []
    for _ in range(repeats):
        start = time.perf_counter()
        features = tracker.encode(tracker.prepare(image))
        encoder.append(time.perf_counter() - start)
    one = spread(step_seconds(tracker, features, masks[:1], repeats))
    three = spread(step_seconds(tracker, features, masks[:3], repeats))
    per_object = (three["median"] - one["median"]) / 2
    return {
        "size": size,
        "model": tracker.model_id,
        "encoder_s": spread(encoder),
        "step_1_object_s": one,
        "step_3_objects_s": three,
        "per_object_s": per_object,
    }


def with_limits(rows: list[dict], budget: float) -> list[dict]:
    """Each size's most objects whose call fits the budget, and that call's estimated time.

    The per-object part (memory attention, heads, memory encoder) is the same network in
    every SAM 2.1 size, so its median over the sizes measured stands for all of them
    (single sizes differ by noise); the fixed part is each size's own encoder and the
    rest of a one-object step."""
    per_object = float(np.median([row["per_object_s"] for row in rows]))
    limited = []
    for row in rows:
        fixed = row["encoder_s"]["median"] + row["step_1_object_s"]["median"] - per_object
        objects = max(1, math.floor((budget - fixed) / per_object))
        limited.append(
            {
                **row,
                "pooled_per_object_s": per_object,
                "fixed_s": fixed,
                "max_objects": objects,
                "call_s_at_max": fixed + objects * per_object,
            }
        )
    return limited


def print_rows(rows: list[dict]) -> None:
    header = (
        f"{'size':>10} {'encoder s':>9} {'1 obj s':>8} {'3 obj s':>8} {'s/object':>8} "
        f"{'pooled':>7} {'max objects':>11} {'call s':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['size']:>10} {row['encoder_s']['median']:>9.2f} "
            f"{row['step_1_object_s']['median']:>8.2f} {row['step_3_objects_s']['median']:>8.2f} "
            f"{row['per_object_s']:>8.2f} {row['pooled_per_object_s']:>7.2f} "
            f"{row['max_objects']:>11} {row['call_s_at_max']:>7.1f}"
        )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of one worker")
    parser.add_argument("--budget", type=float, default=CVAT_TIMEOUT_SECONDS / 2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequence", default="dog")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="call-budget-"))
    frame = sorted((DAVIS / args.sequence / "frames").glob("*.jpg"))[0]
    masks = object_masks(args.sequence, 3, Image.open(frame).size)
    rows = with_limits(
        [measure(size, frame, masks, args.repeats, work) for size in args.sizes], args.budget
    )
    machine = {
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "frame_size": list(Image.open(frame).size),
        "budget_s": args.budget,
    }
    legend = (
        f"seconds per call on CPU at {args.threads} thread(s); max objects: the most whose "
        f"call (fixed + objects x s/object) fits {args.budget:g} s"
    )
    return report(machine, rows, legend, args.out / "call-budget", print_rows)


if __name__ == "__main__":
    main()
