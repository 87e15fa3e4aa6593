"""DeAOT next to SAM 2: the same frames, in the same run, through our function, with
deaotpy's own engine as DeAOT's reference.

    python -m bench.deaot_benchmark                       # 480p, 1 and 3 objects, 12 frames
    python -m bench.deaot_benchmark --objects 1 3 --frames 12 --repeats 3

Paths (each tracks frames 1..N-1 after a mask prompt on frame 0):

* ``ours-sam2``: the function with ``TRACKER_BACKEND=sam2`` (SAM 2.1 tiny), over HTTP
  on loopback, states in Redis (the machine's, or --redis-port), as in run_benchmark;
* ``ours-deaot``: the same with ``TRACKER_BACKEND=deaot`` (DeAOT-T);
* ``deaotpy``: deaotpy's ``DeAOTInferEngine``, one per object, driven as SAM-Track
  drives it (frames decoded up front, load time reported apart), nothing stored: the
  reference our DeAOT backend equals;
* ``deaotpy-joint``: one ``DeAOTInferEngine`` holding all objects, as SAM-Track itself
  runs them (objects share one identity bank and compete per pixel, so its masks are
  not comparable: speed context only).

The first pass runs each path alone (peak resident memory of this process, which holds
all three models; state bytes per object in Redis; masks for agreement); timings come
from the later passes, run in lockstep frame by frame. Seeded random weights (speed
does not depend on their values). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import redis
import torch
from model_handler import ModelHandler
from PIL import Image
from tracker_state import CachedStateStore, RedisStateStore
from tracking.deaot_engine import DeaotTracker
from tracking.deaot_frames import deaot_pixels
from tracking.deaot_model import DeaotSettings, load_deaot, make_random_deaot_checkpoint
from tracking.model_loading import ModelSettings, build_tracker, load_sam2
from tracking.random_weights import make_random_checkpoint

import serve
from bench.run_benchmark import (
    FrameSample,
    OursPath,
    agreement,
    measure,
    object_masks,
    prepare_frames,
    print_table,
    report,
)

warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")


class DeaotpyPath:
    """deaotpy's engine as SAM-Track's tracker drives it: one per object, or (``joint``)
    one for all objects (object k is ID k + 1; later objects win overlapping pixels)."""

    def __init__(self, network, paths: list[Path], masks: list[np.ndarray], joint=False) -> None:
        self.network, self.paths, self.masks = network, paths, masks
        self.joint = joint
        self.label = "deaotpy-joint" if joint else "deaotpy"
        self.load_seconds = 0.0

    def _labels(self) -> list[tuple[np.ndarray, int]]:
        """(label map, object count) per engine."""
        if not self.joint:
            return [(mask.astype(np.int32), 1) for mask in self.masks]
        labels = np.zeros(self.masks[0].shape, np.int32)
        for index, mask in enumerate(self.masks):
            labels[mask] = index + 1
        return [(labels, len(self.masks))]

    @torch.no_grad()
    def track(self) -> Iterator[FrameSample]:
        from aot.networks.engines import build_engine

        start = time.perf_counter()
        frames = [np.array(Image.open(p).convert("RGB")) for p in self.paths]
        self.load_seconds = time.perf_counter() - start
        first = deaot_pixels(frames[0], align_corners=True)
        engines = []
        for labels, count in self._labels():
            engine = build_engine("deaotengine", phase="eval", aot_model=self.network, gpu_id=0)
            label = torch.from_numpy(labels)[None, None].float()
            label = torch.nn.functional.interpolate(label, size=first.shape[-2:], mode="nearest")
            engine.add_reference_frame(first, label, obj_nums=count, frame_step=0)
            engines.append(engine)
        for image in frames[1:]:
            start = time.perf_counter()
            pixels = deaot_pixels(image, align_corners=True)
            masks = []
            for engine in engines:
                engine.match_propogate_one_frame(pixels)
                logits = engine.decode_current_logits(image.shape[:2])
                label = torch.argmax(logits, dim=1, keepdim=True).float()
                engine.update_memory(label)
                masks.append((label[0, 0] == 1).numpy())
            yield FrameSample(time.perf_counter() - start, masks[0])

    def state_bytes(self) -> int:
        return 0  # nothing outlives the process


def serve_in_background(handler: ModelHandler):
    context = serve.make_context()
    context.user_data.model_handler = handler
    server = serve.make_server("127.0.0.1", 0, context, serve.DEFAULT_MAX_BODY_BYTES)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", default="dog")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="deaot-bench-"))
    sam2_settings = ModelSettings(
        checkpoint=str(make_random_checkpoint(work / "sam2.pt")), device="cpu"
    )
    sam2 = build_tracker(load_sam2(sam2_settings, {}), sam2_settings)
    network = load_deaot(
        DeaotSettings(checkpoint=str(make_random_deaot_checkpoint(work / "deaott.pth")))
    )
    deaot = DeaotTracker(network, "deaott", 9999, 4, box_tracker=sam2)
    client = redis.Redis(port=args.redis_port)
    prefix = f"deaotbench:{uuid.uuid4().hex}:"
    handlers = {
        label: ModelHandler(
            tracker,
            CachedStateStore(RedisStateStore(client, codec=tracker.codec, key_prefix=prefix)),
        )
        for label, tracker in (("ours-sam2", sam2), ("ours-deaot", deaot))
    }
    servers = {label: serve_in_background(handler) for label, handler in handlers.items()}

    rows = []
    paths = prepare_frames(args.sequence, args.frames, "480p", work / "480p")
    size = Image.open(paths[0]).size
    try:
        for count in args.objects:
            masks = object_masks(args.sequence, count, size)
            contenders = []
            for label, handler in handlers.items():
                path = OursPath(handler, servers[label], client, prefix, paths, masks)
                path.label = label
                contenders.append(path)
            contenders.append(DeaotpyPath(network, paths, masks))
            contenders.append(DeaotpyPath(network, paths, masks, joint=True))
            results = measure(contenders, torch.device("cpu"), args.repeats)
            summaries = {label: result.summary() for label, result in results.items()}
            ours_deaot = summaries["ours-deaot"]["seconds_per_frame"]["median"]
            for label, row in summaries.items():
                row["resolution"] = "480p"
                if label != "ours-deaot":
                    # > 1: ours-deaot is faster than this path
                    row["speed_ratio"] = row["seconds_per_frame"]["median"] / ours_deaot
                if label == "deaotpy":
                    row["worst_agreement"] = agreement(results["ours-deaot"], results[label], size)
                rows.append(row)
            print_table([r for r in rows if r["objects"] == count])
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)

    machine = {
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sam2": sam2.model_id,
        "deaot": deaot.model_id,
        "frames": args.frames,
        "sequence": args.sequence,
        "frame_size": list(size),
    }
    return report(
        machine,
        rows,
        "ratio = path s/frame / ours-deaot s/frame; agree: ours-deaot vs deaotpy, worst frame",
        args.out / "deaot-benchmark-cpu",
    )


if __name__ == "__main__":
    main()
