"""``sam2-cvat-track``: track a whole CVAT job from its keyframes with SAM 2.

Two ways in:

* files: frames (a folder of images or a video file) and a CVAT for video 1.1 XML
  export; writes a new XML that CVAT imports;
* a CVAT server (``--server``): reads a task's or job's shapes and frames with
  cvat-sdk and writes the results back into it.

The model is configured like the Nuclio function (``SAM2_MODEL_CFG``,
``SAM2_CHECKPOINT``, ``SAM2_DEVICE``, ``SAM2_PRECISION``, ``SAM2_COMPILE``, ...); the
flags override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm
from tracking.model_loading import ModelSettings, ModelSetupError, build_tracker, load_sam2
from tracking.shapes import ShapeError
from tracking.video import DIRECTIONS, VideoError, VideoFileFrames, open_frames

from cvat_track.cvat_server import ServerError, connect, open_job
from cvat_track.cvat_xml import CvatVideoXml, XmlError
from cvat_track.run import PreparedRun, RunError, RunResult, prepare_run, run_prepared


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sam2-cvat-track",
        description=(
            "Track every object of a CVAT job through its frames with SAM 2, from the "
            "shapes people drew (keyframes), and write the results back as CVAT "
            "annotations. See the README section 'Tracking from keyframes' for which "
            "shapes make one object."
        ),
    )
    server = parser.add_argument_group("a CVAT server (through cvat-sdk)")
    server.add_argument("--server", help="CVAT's URL, e.g. http://localhost:8080")
    server.add_argument(
        "--auth",
        default=None,
        help="user:password, or a personal access token (default: $CVAT_AUTH)",
    )
    which = server.add_mutually_exclusive_group()
    which.add_argument("--task", type=int, help="task id")
    which.add_argument("--job", type=int, help="job id")
    server.add_argument(
        "--frame-range", help="FIRST:LAST, frame numbers to track within the task or job"
    )
    files = parser.add_argument_group("files (CVAT for video 1.1 XML)")
    files.add_argument("--frames", type=Path, help="folder of frame images, or a video file")
    files.add_argument("--annotations", type=Path, help="CVAT for video 1.1 XML to read")
    files.add_argument("--output", type=Path, help="XML to write (the input is left alone)")
    files.add_argument(
        "--first-frame",
        type=int,
        default=None,
        help="annotation frame number of the first image (default: the XML's start_frame, or 0)",
    )
    tracking = parser.add_argument_group("tracking")
    tracking.add_argument(
        "--direction",
        choices=DIRECTIONS,
        default="forward",
        help="forward from the first keyframe (default); backward from the last; both: "
        "forward, then frames before the first keyframe backward",
    )
    tracking.add_argument(
        "--labels", help="comma-separated label names to track (default: every label)"
    )
    tracking.add_argument(
        "--groups", help="comma-separated group ids: track only these objects (default: all)"
    )
    tracking.add_argument(
        "--max-cond-frames",
        type=int,
        default=None,
        help="condition each frame on the N closest keyframes only (N >= 2; default: all, "
        "SAM 2's default)",
    )
    tracking.add_argument(
        "--dry-run", action="store_true", help="track and report, but write nothing"
    )
    model = parser.add_argument_group("model (defaults from the SAM2_* environment)")
    model.add_argument("--model-cfg", help="SAM 2 config, e.g. configs/sam2.1/sam2.1_hiera_l.yaml")
    model.add_argument("--checkpoint", help="checkpoint file (default: download the official)")
    model.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    model.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        help="default: bfloat16 on CUDA, float32 (exact) on CPU",
    )
    args = parser.parse_args(argv)
    if args.server:
        args.auth = args.auth or os.environ.get("CVAT_AUTH")
        if not args.auth or not (args.task or args.job):
            parser.error("with --server give --auth (or $CVAT_AUTH) and --task or --job")
        if args.frames or args.annotations or args.output:
            parser.error("--server reads and writes the server: no --frames/--annotations/--output")
    elif not (args.frames and args.annotations and (args.output or args.dry_run)):
        parser.error("give --server, or --frames, --annotations and --output (or --dry-run)")
    if args.frame_range:
        try:
            first, last = (int(v) for v in args.frame_range.split(":"))
        except ValueError:
            parser.error("--frame-range must be FIRST:LAST, e.g. 0:99")
        args.frame_range = (first, last)
    return args


def model_settings(args: argparse.Namespace, env: dict[str, str]) -> ModelSettings:
    settings = ModelSettings.from_env(env)
    overrides = {
        "config": args.model_cfg,
        "checkpoint": args.checkpoint,
        "device": args.device,
        "precision": args.precision,
    }
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v})


def objects_text(count: int) -> str:
    return f"{count} object{'' if count == 1 else 's'}"


def summary(result: RunResult, written: str) -> str:
    plan = result.plan
    track_shapes = sum(len(t.shapes) for t in [*result.new_tracks, *result.rewritten_tracks])
    rate = result.frames_processed / result.seconds if result.seconds else 0.0
    return (
        f"tracked {objects_text(len(plan.objects))} over {result.frames_processed} frames in "
        f"{result.seconds:.1f} s ({rate:.2f} frames/s)\n"
        f"{written}: {len(result.new_shapes)} mask shapes, {len(result.new_tracks)} new "
        f"tracks, {len(result.rewritten_tracks)} tracks with new keyframes ({track_shapes} "
        f"track shapes); replacing {len(plan.replaced_shapes)} earlier output shapes and "
        f"{len(plan.replaced_tracks)} output tracks; {len(plan.regrouped)} of people's "
        "shapes/tracks given a group id"
    )


class Progress:
    """Frames done out of the run's total: a bar on a terminal, a plain line about every
    tenth of the run (and the last) otherwise, so logs hold no bar fragments."""

    def __init__(self, total: int, objects: int, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.objects = total, objects
        self.started = time.perf_counter()
        self.bar = None
        if self.stream.isatty():
            self.bar = tqdm(total=total, desc="tracking", unit="frame", file=self.stream)
            self.bar.set_postfix(objects=objects)
        else:
            self.print(0)

    def print(self, done: int) -> None:
        seconds = time.perf_counter() - self.started
        rate = f", {done / seconds:.2f} frames/s" if done and seconds else ""
        print(
            f"tracking: frame {done} of {self.total} ({objects_text(self.objects)}{rate})",
            file=self.stream,
            flush=True,
        )

    def __call__(self, done: int, total: int, objects: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif done == total or done % max(1, total // 10) == 0:
            self.print(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def filters(args: argparse.Namespace) -> tuple[set[str] | None, set[int] | None]:
    labels = {name.strip() for name in args.labels.split(",")} if args.labels else None
    groups = {int(g) for g in args.groups.split(",")} if args.groups else None
    return labels, groups


def track(args: argparse.Namespace, frames, run: PreparedRun) -> RunResult:
    """Load the model (only now: everything that needs none was checked) and track."""
    tracker = load_tracker(args)
    progress = Progress(run.total, len(run.plan.objects))
    try:
        return run_prepared(tracker, frames, run, args.max_cond_frames, progress)
    finally:
        progress.close()


def load_tracker(args: argparse.Namespace):
    env = dict(os.environ)
    settings = model_settings(args, env)
    # SAM 2 warns on every process, in a paragraph inside the progress output, that its
    # compiled extension is absent and hole filling is skipped; say it once, briefly.
    warnings.filterwarnings("ignore", message="cannot import name '_C'", category=UserWarning)
    if importlib.util.find_spec("sam2._C") is None:
        print(NO_HOLE_FILLING, file=sys.stderr)
    return build_tracker(load_sam2(settings, env), settings)


NO_HOLE_FILLING = (
    "sam2-cvat-track: note: SAM 2's compiled extension (sam2._C) is not installed, so "
    "its optional filling of tiny holes in masks is skipped, as Meta's predictor skips it "
    "without the extension"
)


def frame_namer(frames, first_frame: int):
    """Names for the ``<image>`` elements: the image files' names (as CVAT names the
    frames of a task made of them), ``frame_000123`` for a video file (as CVAT names a
    video's frames). CVAT's importer matches a frame by name, else by number."""
    if isinstance(frames, VideoFileFrames):
        return lambda frame: f"frame_{frame:06d}"
    return lambda frame: frames.paths[frame - first_frame].name


def from_files(args: argparse.Namespace) -> str:
    document = CvatVideoXml(args.annotations)
    shapes, tracks = document.read()
    frames = open_frames(args.frames)
    if isinstance(frames, VideoFileFrames):
        print(VIDEO_WARNING, file=sys.stderr)
    first_frame = document.start_frame() if args.first_frame is None else args.first_frame
    size = document.frame_size()
    image = frames.read(0)
    if size is not None and size != (image.height, image.width):
        raise RunError(
            f"the frames are {image.width}x{image.height} but the annotations are for "
            f"{size[1]}x{size[0]}"
        )
    labels, groups = filters(args)
    run = prepare_run(
        frames,
        shapes,
        tracks,
        args.direction,
        labels,
        groups,
        first_frame,
        frame_size=(image.height, image.width),
    )
    if document.is_job_export() and run.plan.regrouped:
        print(JOB_GROUPS_NOTE, file=sys.stderr)
    result = track(args, frames, run)
    if args.dry_run:
        return summary(result, "would write")
    document.apply(result, frame_namer(frames, first_frame))
    document.write(args.output)
    return summary(result, f"wrote {args.output}")


VIDEO_WARNING = (
    "sam2-cvat-track: note: frames decoded here from a video file can differ from the "
    "frames CVAT serves for it (CVAT re-encodes videos), so the masks can differ from what "
    "CVAT shows under them. For CVAT's own frames use --server, or export the task "
    "with images and give --frames that folder."
)
JOB_GROUPS_NOTE = (
    "sam2-cvat-track: note: this is a job export; new group ids are unique in this file "
    "but another job of the task may use them too. Export the task, or use --server, "
    "when the task has several jobs."
)


def from_server(args: argparse.Namespace) -> str:
    client = connect(args.server, args.auth)
    job = open_job(client, args.task, args.job, args.frame_range)
    shapes, tracks = job.read()
    image = job.frames.read(0)
    if (image.height, image.width) != job.frame_size:
        raise RunError(
            f"{job.name}: frame {job.first_frame} is {image.width}x{image.height}, the task "
            f"says {job.frame_size[1]}x{job.frame_size[0]}"
        )
    labels, groups = filters(args)
    run = prepare_run(
        job.frames,
        shapes,
        tracks,
        args.direction,
        labels,
        groups,
        job.first_frame,
        used_groups=job.task_groups(),
        segments=job.segments,
        frame_size=job.frame_size,
    )
    result = track(args, job.frames, run)
    if args.dry_run:
        return summary(result, f"would write to {job.name}")
    job.write(result)
    return summary(result, f"wrote to {job.name}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(from_server(args) if args.server else from_files(args))
    except (XmlError, RunError, VideoError, ModelSetupError, ServerError, ShapeError) as error:
        print(f"sam2-cvat-track: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
