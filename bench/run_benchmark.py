"""Our full request path against the official SAM2VideoPredictor, in one process run.

    python -m bench.run_benchmark                      # CPU defaults: 480p, 1 and 3 objects
    python -m bench.run_benchmark --resolutions 480p 1080p --objects 1 3 10 30 --frames 30

Ours: HTTP over loopback to the function served in this process (serve.py's server),
base64 + JPEG decode, SAM 2, Redis state read/write (the machine's Redis, or
--redis-port), shape encoding. Official: ``SAM2VideoPredictor`` (and on CUDA also its
``vos_optimized`` variant) on the same JPEG frames, frames loaded up front as it does
(load time reported apart, not charged per frame). A first pass runs each path alone
(peak memory, state size, masks); timings come from the later passes, which run the
paths in lockstep, frame by frame. Seeded random weights: speed does not depend on
their values. Prints a table, writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import redis
import torch
from model_handler import ModelHandler
from PIL import Image
from tracker_state import CachedStateStore, RedisStateStore
from tracking.model_loading import DEFAULT_MODEL_CFG, ModelSettings, build_tracker, load_sam2
from tracking.random_weights import make_random_checkpoint
from tracking.shapes import decode_rle, encode_rle

import serve

REPO = Path(__file__).resolve().parents[1]
DAVIS = REPO.parent / "shared" / "davis2016"
RESOLUTIONS = {"480p": None, "1080p": (1920, 1080)}
MODEL_PHASES = ("image_encoder", "tracking")

warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")


# -- measurement helpers ---------------------------------------------------------


class PeakMemory:
    """Peak resident host memory (sampled) and peak CUDA memory during a block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host_peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.host_peak = max(self.host_peak, self.rss())
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.host_peak = max(self.host_peak, self.rss())
        self.gpu_peak = torch.cuda.max_memory_allocated() if self.device.type == "cuda" else 0


def spread(values: list[float]) -> dict:
    """Median and 10th-90th percentiles."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(array)),
        "p10": float(np.percentile(array, 10)),
        "p90": float(np.percentile(array, 90)),
        "n": len(values),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- inputs ------------------------------------------------------------------------


def prepare_frames(sequence: str, count: int, resolution: str, folder: Path) -> list[Path]:
    """JPEG frames named as the official loader wants; 1080p ones upscaled and re-encoded."""
    sources = sorted((DAVIS / sequence / "frames").glob("*.jpg"))[:count]
    if len(sources) < count:
        raise SystemExit(f"{sequence} has only {len(sources)} frames under {DAVIS}")
    size = RESOLUTIONS[resolution]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, source in enumerate(sources):
        target = folder / f"{index:05d}.jpg"
        if size is None:
            target.write_bytes(source.read_bytes())
        else:
            Image.open(source).convert("RGB").resize(size, Image.BICUBIC).save(target, quality=90)
        paths.append(target)
    return paths


def object_masks(sequence: str, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The sequence's annotated object, then seeded random boxes as further objects."""
    gt = Image.open(DAVIS / sequence / "masks" / "00000.png").resize(size, Image.NEAREST)
    masks = [np.array(gt) > 0]
    rng = np.random.default_rng(0)
    width, height = size
    while len(masks) < count:
        w, h = (
            int(rng.integers(width // 20, width // 5)),
            int(rng.integers(height // 20, height // 5)),
        )
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        mask = np.zeros((height, width), bool)
        mask[y : y + h, x : x + w] = True
        masks.append(mask)
    return masks


# -- runs --------------------------------------------------------------------------
#
# Each path is a generator yielding one FrameSample per tracked frame, timing only
# its own work. The first pass runs each path alone (peak memory, state bytes, masks
# for agreement; it also warms both up). Timings come from the later passes, which
# run the paths in lockstep, frame by frame, taking turns at going first: both see
# the machine in the same state, so drift on a shared VM cannot favour either.


@dataclass
class FrameSample:
    seconds: float
    mask: object  # the first object's mask: CVAT RLE (ours) or bool array (official)
    overhead_ms: dict | None = None  # ours: time outside the model, by phase


@dataclass
class RunResult:
    path: str  # "ours", "official" or "official-vos"
    objects: int
    frame_seconds: list[float] = field(default_factory=list)  # lockstep passes, pooled
    load_seconds: float = 0.0
    overhead_samples: list[dict] = field(default_factory=list)  # ours: ms outside the model
    state_bytes_per_object: int = 0
    peak_host_mib: float = 0.0
    peak_gpu_mib: float = 0.0
    masks: list = field(default_factory=list)  # first object's masks, for agreement

    def summary(self) -> dict:
        per_frame = spread(self.frame_seconds)
        overhead = {
            key: statistics.median(sample.get(key, 0.0) for sample in self.overhead_samples)
            for key in (self.overhead_samples[0] if self.overhead_samples else {})
        }
        return {
            "path": self.path,
            "objects": self.objects,
            "seconds_per_frame": per_frame,
            "frames_per_second": 1.0 / per_frame["median"],
            "ms_per_object": per_frame["median"] * 1e3 / self.objects,
            "load_seconds": self.load_seconds,
            "overhead_ms": overhead,
            "state_bytes_per_object": self.state_bytes_per_object,
            "peak_host_mib": self.peak_host_mib,
            "peak_gpu_mib": self.peak_gpu_mib,
        }


def serve_while(server, work):
    """``work()`` (the HTTP client and the official predictor) on a thread while the
    server answers on this one, as a Nuclio worker runs its handler on its main thread."""
    failure: list[BaseException] = []
    outcome: list = []

    def client() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # re-raised below, on the main thread
            failure.append(error)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    server.timeout = 0.1
    while thread.is_alive():
        server.handle_request()
    if failure:
        raise failure[0]
    return outcome[0]


class OursPath:
    """Our function over HTTP: one POST per frame, states carried as CVAT carries them."""

    label = "ours"
    load_seconds = 0.0  # frames arrive with the calls

    def __init__(self, handler, server, redis_client, prefix, paths, masks) -> None:
        self.handler, self.redis_client, self.prefix = handler, redis_client, prefix
        self.url = f"http://127.0.0.1:{server.server_address[1]}/"
        self.frames = [base64.b64encode(p.read_bytes()).decode() for p in paths]
        self.masks = masks
        self.shapes = [{"type": "mask", "points": encode_rle(m)} for m in masks]
        self.final_states: list[dict] = []

    def _post(self, body: dict) -> dict:
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=3600) as response:
            return json.loads(response.read())

    def track(self) -> Iterator[FrameSample]:
        states = self._post({"image": self.frames[0], "shapes": self.shapes, "states": []})[
            "states"
        ]
        for image in self.frames[1:]:
            start = time.perf_counter()
            answer = self._post({"image": image, "shapes": [None] * len(states), "states": states})
            elapsed = time.perf_counter() - start
            states = answer["states"]
            timings = dict(self.handler.last_call.seconds)
            model = sum(timings.get(phase, 0.0) for phase in MODEL_PHASES)
            overhead = {
                "total": (elapsed - model) * 1e3,
                "http_json": (elapsed - sum(timings.values())) * 1e3,
                **{
                    name: seconds * 1e3
                    for name, seconds in timings.items()
                    if name not in MODEL_PHASES
                },
            }
            yield FrameSample(
                elapsed, answer["shapes"][0]["points"] if answer["shapes"][0] else None, overhead
            )
        self.final_states = states

    def state_bytes(self) -> int:
        """Bytes in Redis of the first object's state after the run."""
        token = self.final_states[0]["sam2"]
        keys = self.redis_client.scan_iter(match=f"{self.prefix}{token}:*")
        return sum(self.redis_client.strlen(key) for key in keys)


class OfficialPath:
    """``SAM2VideoPredictor``: frames loaded up front (timed apart), then propagation."""

    def __init__(self, label, model, folder, masks, device, precision) -> None:
        self.label, self.model, self.folder, self.masks = label, model, folder, masks
        self.device = device
        self.autocast = partial(
            torch.autocast,
            device_type=device.type,
            dtype=precision,
            enabled=precision != torch.float32,
        )
        self.load_seconds = 0.0

    def track(self) -> Iterator[FrameSample]:
        with self.autocast(), torch.inference_mode():
            start = time.perf_counter()
            state = self.model.init_state(str(self.folder))
            sync(self.device)
            self.load_seconds = time.perf_counter() - start
            for obj_id, mask in enumerate(self.masks):
                self.model.add_new_mask(state, 0, obj_id, mask)
        frames = self.model.propagate_in_video(state)
        while True:
            # Autocast only around our own steps: the other path runs between them.
            with self.autocast(), torch.inference_mode():
                start = time.perf_counter()
                index, _, logits = next(frames, (None, None, None))
                if index is None:
                    break
                mask = (logits[0, 0] > 0).cpu().numpy()
                sync(self.device)
                elapsed = time.perf_counter() - start
            if index > 0:  # frame 0 is the prompt frame, answered without tracking
                yield FrameSample(elapsed, mask)
        self.model.reset_state(state)

    def state_bytes(self) -> int:
        return 0  # nothing outlives the process


def run_alone(path, device) -> tuple[list[FrameSample], PeakMemory]:
    with PeakMemory(device) as memory:
        samples = list(path.track())
    return samples, memory


def run_lockstep(paths: list, first: int) -> dict[str, list[FrameSample]]:
    """All paths frame by frame; at frame k, path (first + k) % n goes first."""
    generators = [path.track() for path in paths]
    samples: dict[str, list[FrameSample]] = {path.label: [] for path in paths}
    for frame in itertools.count():
        order = [(first + frame + k) % len(paths) for k in range(len(paths))]
        step = {i: next(generators[i], None) for i in order}
        if any(sample is None for sample in step.values()):
            break
        for i, sample in step.items():
            samples[paths[i].label].append(sample)
    return samples


def measure(paths: list, device, repeats: int) -> dict[str, RunResult]:
    """Pass 1 alone (memory, masks, warm-up); passes 2.. in lockstep (timings). With a
    single repeat the timings of the alone pass are used."""
    results = {path.label: RunResult(path.label, len(paths[0].masks)) for path in paths}
    for path in paths:
        samples, memory = run_alone(path, device)
        result = results[path.label]
        result.peak_host_mib = memory.host_peak / 2**20
        result.peak_gpu_mib = memory.gpu_peak / 2**20
        result.masks = [s.mask for s in samples]
        result.load_seconds = path.load_seconds
        result.state_bytes_per_object = path.state_bytes()
        if repeats == 1:
            result.frame_seconds = [s.seconds for s in samples]
            result.overhead_samples = [s.overhead_ms for s in samples if s.overhead_ms]
    for repeat in range(1, repeats):
        for label, samples in run_lockstep(paths, first=repeat).items():
            results[label].frame_seconds += [s.seconds for s in samples]
            results[label].overhead_samples += [s.overhead_ms for s in samples if s.overhead_ms]
    return results


def agreement(ours: RunResult, official: RunResult, size: tuple[int, int]) -> float:
    """Worst per-frame pixel agreement of the first object's masks."""
    width, height = size
    worst = 1.0
    for points, theirs in zip(ours.masks, official.masks, strict=True):
        mine = decode_rle(points, height, width) if points else np.zeros((height, width), bool)
        worst = min(worst, float((mine == theirs).mean()))
    return worst


# -- report ------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'res':>6} {'obj':>4} {'path':>13} {'s/frame':>9} {'p10-p90':>15} {'fps':>7} "
        f"{'ms/obj':>8} {'ratio':>6} {'outside ms':>10} {'state MiB':>9} "
        f"{'host MiB':>9} {'gpu MiB':>8} {'agree':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        sp = row["seconds_per_frame"]
        outside = row["overhead_ms"].get("total")
        print(
            f"{row['resolution']:>6} {row['objects']:>4} {row['path']:>13} "
            f"{sp['median']:>9.3f} {sp['p10']:>7.3f}-{sp['p90']:<7.3f} "
            f"{row['frames_per_second']:>7.2f} {row['ms_per_object']:>8.1f} "
            f"{row.get('speed_ratio', float('nan')):>6.2f} "
            f"{outside if outside is not None else float('nan'):>10.1f} "
            f"{row['state_bytes_per_object'] / 2**20:>9.2f} {row['peak_host_mib']:>9.0f} "
            f"{row['peak_gpu_mib']:>8.0f} {row.get('worst_agreement', float('nan')):>8.5f}"
        )


def report(machine: dict, rows: list[dict], legend: str, prefix: Path, table=print_table) -> Path:
    """Print the machine and the whole table (``table`` prints the rows), and write both
    as JSON to ``<prefix>-<timestamp>.json``; returns that path."""
    print()
    print(f"machine: {machine}")
    print(legend)
    table(rows)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.parent / f"{prefix.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    json_path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"wrote {json_path}")
    return json_path


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["resolution"], r["objects"]) for r in rows})
    paths = sorted({r["path"] for r in rows})
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / len(paths)
    for offset, name in enumerate(paths):
        values = []
        for group in groups:
            match = [
                r for r in rows if (r["resolution"], r["objects"]) == group and r["path"] == name
            ]
            values.append(match[0]["seconds_per_frame"]["median"] if match else 0)
        xs = np.arange(len(groups)) + offset * width
        axis.bar(xs, values, width, label=name)
    axis.set_xticks(np.arange(len(groups)) + width * (len(paths) - 1) / 2)
    axis.set_xticklabels([f"{res}\n{obj} obj" for res, obj in groups])
    axis.set_ylabel("seconds per frame (median)")
    axis.legend()
    axis.set_title("SAM 2 tracking: this function vs the official predictor")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# -- main --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_MODEL_CFG)
    parser.add_argument("--sequence", default="car-shadow")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--resolutions", nargs="+", default=["480p"], choices=list(RESOLUTIONS))
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--precision", default=None, help="float32 or bfloat16 (CUDA default)")
    parser.add_argument("--compile", default=None, help="1/0: SAM 2's compiled components")
    parser.add_argument("--image-size", type=int, default=None, help="SAM 2 input (1024)")
    parser.add_argument("--repeats", type=int, default=2, help="passes: 1 alone, then lockstep")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--object-batch", type=int, default=None, help="objects per pass")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = (f"++model.image_size={args.image_size}",) if args.image_size else ()
    settings = ModelSettings(
        hydra_overrides=overrides,
        config=args.config,
        device=args.device,
        compile=None if args.compile is None else args.compile == "1",
        precision=args.precision,
        object_batch=args.object_batch,
    )
    device = settings.resolved_device()
    precision = settings.resolved_precision()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as SAM 2's own benchmark does
        torch.backends.cudnn.allow_tf32 = True
    work = Path(tempfile.mkdtemp(prefix="sam2-bench-"))
    checkpoint = make_random_checkpoint(work / "random.pt", config=args.config)
    settings = ModelSettings(**{**asdict(settings), "checkpoint": str(checkpoint)})

    # Eager model shared by our path and the official predictor; compiled ones apart.
    eager = load_sam2(ModelSettings(**{**asdict(settings), "compile": False}), {})
    ours_model = load_sam2(settings, {}) if settings.resolved_compile() else eager
    tracker = build_tracker(ours_model, settings)
    client = redis.Redis(port=args.redis_port)
    prefix = f"sam2bench:{uuid.uuid4().hex}:"
    store = CachedStateStore(RedisStateStore(client, tracker.memory_capacity, key_prefix=prefix))
    handler = ModelHandler(tracker, store)
    context = serve.make_context()
    context.user_data.model_handler = handler
    server = serve.make_server("127.0.0.1", 0, context, serve.DEFAULT_MAX_BODY_BYTES)

    officials = [("official", eager)]
    if device.type == "cuda":
        from sam2.build_sam import build_sam2_video_predictor

        vos = build_sam2_video_predictor(
            settings.config, str(checkpoint), device=device, vos_optimized=True
        )
        officials.append(("official-vos", vos))

    rows = []
    try:
        for resolution in args.resolutions:
            folder = work / resolution
            paths = prepare_frames(args.sequence, args.frames, resolution, folder)
            size = Image.open(paths[0]).size
            for count in args.objects:
                masks = object_masks(args.sequence, count, size)
                contenders = [
                    OursPath(handler, server, client, prefix, paths, masks),
                    *(
                        OfficialPath(label, model, folder, masks, device, precision)
                        for label, model in officials
                    ),
                ]
                results = serve_while(server, partial(measure, contenders, device, args.repeats))
                ours = results["ours"].summary()
                for label, result in results.items():
                    row = result.summary()
                    row["resolution"] = resolution
                    if label != "ours":
                        row["speed_ratio"] = (
                            row["seconds_per_frame"]["median"] / ours["seconds_per_frame"]["median"]
                        )
                        row["worst_agreement"] = agreement(results["ours"], result, size)
                    rows.append(row)
                print_table(
                    [r for r in rows if r["resolution"] == resolution and r["objects"] == count]
                )
    finally:
        server.server_close()
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)

    machine = {
        "device": (
            torch.cuda.get_device_name(0)
            if device.type == "cuda"
            else f"{platform.machine()} CPU, {os.cpu_count()} cores"
        ),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": str(precision),
        "compiled": tracker.compiled,
        "config": args.config,
        "frames": args.frames,
        "sequence": args.sequence,
    }
    json_path = report(
        machine,
        rows,
        "ratio = official s/frame / ours s/frame (>1: ours is faster); frames 1..N-1 tracked",
        args.out / f"benchmark-{device.type}",
    )
    plot(rows, json_path.with_suffix(".png"))
    print(f"wrote {json_path.with_suffix('.png')}")
    return json_path


if __name__ == "__main__":
    main()
