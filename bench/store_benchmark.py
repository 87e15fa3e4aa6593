"""What a call pays to get an object's state from the store: a worker-cache hit (the
heads only, to confirm the state is current) against a miss (heads, then the whole
state read and decoded), per object, for SAM 2 and DeAOT states; and the commit.

    python -m bench.store_benchmark                 # the machine's Redis on 6379
    python -m bench.store_benchmark --redis-port 6380 --repeats 30

A miss is what every call of a replica pays when consecutive calls of one object land on
different replicas (no session affinity). The states are real: each backend (seeded
random weights) starts an object from a DAVIS mask on an 854x480 frame and tracks it
until every memory slot is filled, so the state has its full size. Each state goes
through the function's own store (``tracker_state.config.redis_store``: RESP2, the quick
probe client, the worker cache). Prints a table (medians, p10-p90), writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tracker_state import CachedStateStore
from tracker_state.config import redis_store
from tracking.deaot_engine import DeaotTracker
from tracking.deaot_model import DeaotSettings, load_deaot, make_random_deaot_checkpoint
from tracking.engine import MaskPrompt
from tracking.model_loading import ModelSettings, build_tracker, load_sam2
from tracking.random_weights import make_random_checkpoint

from bench.run_benchmark import DAVIS, REPO, report, spread

warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")


def tracked_states(tracker, frames: list[Path], mask: np.ndarray, steps: int) -> list:
    """The states of one object started on frames[0] and tracked ``steps`` frames."""
    features = tracker.encode(tracker.prepare(Image.open(frames[0]).convert("RGB")))
    [result] = tracker.start(features, [MaskPrompt(torch.from_numpy(mask))], ["mask"], [False])
    states = [result.state]
    for path in frames[1 : steps + 1]:
        features = tracker.encode(tracker.prepare(Image.open(path).convert("RGB")))
        [result] = tracker.step(features, [states[-1]])
        states.append(result.state)
    return states


def time_ms(operation) -> float:
    start = time.perf_counter()
    operation()
    return (time.perf_counter() - start) * 1000


def measure(label: str, tracker, state, advanced, port: int, repeats: int) -> dict:
    """Hit, miss (read + decode apart) and commit times for one object's state."""
    prefix = f"storebench:{uuid.uuid4().hex}:"
    inner = redis_store("127.0.0.1", port, None, tracker.codec, key_prefix=prefix)
    cached = CachedStateStore(inner)
    hits, misses, reads, commits = [], [], [], []
    try:
        for _ in range(repeats):
            [ref] = cached.create([state])
            hits.append(time_ms(lambda ref=ref: cached.load([ref])))
            cold = CachedStateStore(inner)  # another replica: nothing cached
            misses.append(time_ms(lambda ref=ref, cold=cold: cold.load([ref])))
            reads.append(time_ms(lambda ref=ref: inner._read([ref.token])))
            commits.append(time_ms(lambda ref=ref: cached.commit([ref], [advanced])))
        parts = inner._read([ref.token])[0]
        stored = sum(len(blob) for blob in parts.values() if blob)
        changed = sum(len(blob) for blob in tracker.codec.changed(advanced, None).values())
    finally:
        keys = list(inner.client.scan_iter(match=f"{prefix}*"))
        if keys:
            inner.client.delete(*keys)
    miss = spread(misses)
    read = spread(reads)
    return {
        "path": label,
        "model": tracker.model_id,
        "state_bytes_per_object": stored,
        "bytes_written_per_frame": changed,
        "hit_ms": spread(hits),
        "miss_ms": miss,
        "miss_read_ms": read,
        "miss_decode_ms": miss["median"] - read["median"],
        "commit_ms": spread(commits),
    }


def print_rows(rows: list[dict]) -> None:
    header = (
        f"{'backend':>8} {'state MiB':>9} {'write KiB':>9} {'hit ms':>8} {'miss ms':>8} "
        f"{'(p10-p90)':>13} {'read ms':>8} {'decode ms':>9} {'commit ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        miss = row["miss_ms"]
        print(
            f"{row['path']:>8} {row['state_bytes_per_object'] / 2**20:>9.2f} "
            f"{row['bytes_written_per_frame'] / 2**10:>9.0f} {row['hit_ms']['median']:>8.2f} "
            f"{miss['median']:>8.2f} {miss['p10']:>6.1f}-{miss['p90']:<6.1f} "
            f"{row['miss_read_ms']['median']:>8.2f} {row['miss_decode_ms']:>9.2f} "
            f"{row['commit_ms']['median']:>9.2f}"
        )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", default="dog")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--backends", nargs="+", default=["sam2", "deaot"])
    parser.add_argument("--image-size", type=int, default=None, help="SAM 2 input (1024)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="store-bench-"))
    frames = sorted((DAVIS / args.sequence / "frames").glob("*.jpg"))
    mask = np.array(Image.open(DAVIS / args.sequence / "masks" / "00000.png")) > 0
    overrides = (f"++model.image_size={args.image_size}",) if args.image_size else ()
    settings = ModelSettings(
        checkpoint=str(make_random_checkpoint(work / "sam2.pt")),
        device="cpu",
        hydra_overrides=overrides,
    )
    sam2 = build_tracker(load_sam2(settings, {}), settings)
    trackers = {"sam2": (sam2, sam2.memory_capacity)}
    if "deaot" in args.backends:
        checkpoint = make_random_deaot_checkpoint(work / "deaott.pth")
        network = load_deaot(DeaotSettings(checkpoint=str(checkpoint)))
        trackers["deaot"] = (DeaotTracker(network, "deaott", 9999, 4, box_tracker=sam2), 1)
    rows = []
    for label in args.backends:
        tracker, filled_after = trackers[label]
        # Every memory slot filled, and the same object one frame later (what a commit
        # writes).
        *_, state, advanced = tracked_states(tracker, frames, mask, filled_after + 1)
        rows.append(measure(label, tracker, state, advanced, args.redis_port, args.repeats))
    machine = {
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "redis": f"127.0.0.1:{args.redis_port}",
        "frame_size": list(Image.open(frames[0]).size),
        "repeats": args.repeats,
        "python": platform.python_version(),
    }
    legend = (
        "hit: heads read (worker cache holds the state); miss: heads, then the whole "
        "state read and decoded (another replica); per object, milliseconds"
    )
    return report(machine, rows, legend, args.out / "store", print_rows)


if __name__ == "__main__":
    main()
