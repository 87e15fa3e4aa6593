"""``sam2-cvat-track`` on files: a CVAT for video 1.1 XML (written as CVAT exports it)
and a folder of DAVIS frames in, an XML out whose masks decode back to the tracked
masks; people's shapes untouched; re-runs replace their own output; memory stays flat
on a long video."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import davis_sequence, frame_folder, ground_truth
from cvat_sdk.masks import decode_mask, encode_mask
from tracking.engine import MaskPrompt, Sam2StreamTracker
from tracking.shapes import mask_to_box
from tracking.video import FolderFrames, Keyframe, KeyframeVideoTracker

from cvat_track.cli import main
from cvat_track.marker import is_marked

SEQUENCE = "dog"
NUM_FRAMES = 12
IMAGE_SIZE = 256  # the point here is the tool's logic; tests/test_video.py checks SAM 2


def mask_element(frame: int, mask: np.ndarray, outside: bool = False) -> str:
    *runs, left, top, right, bottom = (int(v) for v in encode_mask(mask))
    return (
        f'<mask frame="{frame}" keyframe="1" outside="{int(outside)}" occluded="0" '
        f'rle="{", ".join(map(str, runs))}" left="{left}" top="{top}" '
        f'width="{right - left + 1}" height="{bottom - top + 1}" z_order="0"></mask>'
    )


def cvat_xml(size: tuple[int, int], frames: int, tracks: list[str]) -> str:
    """Annotations as CVAT exports a job in CVAT for video 1.1."""
    height, width = size
    return f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <job>
      <id>7</id>
      <size>{frames}</size>
      <mode>interpolation</mode>
      <overlap>5</overlap>
      <start_frame>0</start_frame>
      <stop_frame>{frames - 1}</stop_frame>
      <labels>
        <label><name>dog</name><color>#fa3253</color><type>any</type><attributes/></label>
        <label><name>tree</name><color>#33ddff</color><type>any</type><attributes/></label>
      </labels>
    </job>
    <original_size><width>{width}</width><height>{height}</height></original_size>
  </meta>
  {"".join(tracks)}
</annotations>
"""


def cli_env(checkpoint: Path) -> dict[str, str]:
    """The tool's environment: the test checkpoint on CPU at the small input size."""
    return {
        **os.environ,
        "SAM2_CHECKPOINT": str(checkpoint),
        "SAM2_DEVICE": "cpu",
        "SAM2_HYDRA_OVERRIDES": f"++model.image_size={IMAGE_SIZE}",
    }


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, checkpoint: Path) -> CliResult:
    """``sam2-cvat-track ARGS``: its entry point in this process (torch, SAM 2 and
    cvat-sdk imported once, not per run), in the tool's environment, output captured."""
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(cli_env(checkpoint))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(list(args))
            except SystemExit as exit_:  # argparse's usage errors
                status = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return CliResult(status, out.getvalue(), err.getvalue())


def tracks_of(path: Path) -> list[ET.Element]:
    return ET.parse(path).getroot().findall("track")


def image_masks(path: Path) -> list[tuple[int, ET.Element]]:
    """(frame, <mask>) of every mask in an <image> element."""
    return [
        (int(image.get("id")), mask)
        for image in ET.parse(path).getroot().findall("image")
        for mask in image.findall("mask")
    ]


def mask_points(element: ET.Element) -> list[int]:
    """A <mask> element's points in the API's encoding (runs, then the inclusive box)."""
    left, top = int(element.get("left")), int(element.get("top"))
    runs = [int(v) for v in element.get("rle").split(",")]
    right = left + int(element.get("width")) - 1
    bottom = top + int(element.get("height")) - 1
    return [*runs, left, top, right, bottom]


def canonical(track: ET.Element) -> str:
    element = ET.fromstring(ET.tostring(track))
    element.attrib.pop("id", None)
    return ET.tostring(element, encoding="unicode").replace("\n", "").replace(" ", "")


@pytest.fixture(scope="module")
def job(tmp_path_factory, present_checkpoint):
    """A job: 'dog' drawn as masks on frames 0 and 6 (group 3, manual, exported with the
    closing outside element as CVAT does), 'dog' as a rectangle track from frame 2
    (no group), and another tool's auto rectangle of 'tree' that must stay as it is."""
    sequence = davis_sequence(SEQUENCE)
    root = tmp_path_factory.mktemp("job")
    frames = frame_folder(sequence, NUM_FRAMES, root)
    size = ground_truth(sequence).shape
    tracks = [
        f'<track id="{i}" label="dog" source="manual" group_id="3">'
        f"{mask_element(f, ground_truth(sequence, f))}"
        f"{mask_element(f + 1, ground_truth(sequence, f), outside=True)}</track>"
        for i, f in enumerate((0, 6))
    ]
    box = mask_to_box(ground_truth(sequence, 2))
    tracks.append(
        '<track id="2" label="dog" source="manual">'
        f'<box frame="2" keyframe="1" outside="0" occluded="0" xtl="{box[0]:.2f}" '
        f'ytl="{box[1]:.2f}" xbr="{box[2]:.2f}" ybr="{box[3]:.2f}" z_order="0"></box></track>'
    )
    tracks.append(
        '<track id="3" label="tree" source="auto" group_id="3">'
        '<box frame="1" keyframe="1" outside="0" occluded="0" xtl="1.00" ytl="2.00" '
        'xbr="30.00" ybr="40.00" z_order="0"></box></track>'
    )
    annotations = root / "in.xml"
    annotations.write_text(cvat_xml(size, NUM_FRAMES, tracks))
    output = root / "out.xml"
    result = run_cli(
        "--frames",
        str(frames),
        "--annotations",
        str(annotations),
        "--output",
        str(output),
        checkpoint=present_checkpoint,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sequence, frames, annotations, output, result


def test_masks_decode_back_to_the_tracked_masks(job, present_checkpoint):
    sequence, frames, _, output, result = job
    assert "tracked 2 objects over 12 frames" in result.stdout
    from conftest import build_model

    model, _ = build_model(present_checkpoint, IMAGE_SIZE)
    tracker = Sam2StreamTracker(model, "test")
    keyframes = [
        Keyframe(f, MaskPrompt(torch.from_numpy(ground_truth(sequence, f)))) for f in (0, 6)
    ]
    expected = {}
    for tracked in KeyframeVideoTracker(tracker).track(FolderFrames(frames), [keyframes]):
        logits = tracker.upsample(tracked.low_res_logits[0][None], tracked.frame_size)
        expected[tracked.frame_index] = (logits[0, 0] > 0).numpy()

    height, width = ground_truth(sequence).shape
    written = {}
    for frame, element in image_masks(output):
        if element.get("source") != "auto" or element.get("label") != "dog":
            continue
        assert element.get("group_id") == "3"
        points = mask_points(element)
        assert is_marked("mask", points)
        written[frame] = decode_mask(points, image_width=width, image_height=height)
    # People's masks moved to the <image> form, which keeps their group through an
    # upload, unchanged otherwise (and unmarked).
    people = {f: e for f, e in image_masks(output) if e.get("source") == "manual"}
    assert sorted(people) == [0, 6]
    for frame, element in people.items():
        assert element.get("group_id") == "3" and not is_marked("mask", mask_points(element))
        expected_rle = encode_mask(ground_truth(sequence, frame))
        assert mask_points(element) == [int(v) for v in expected_rle]
    assert sorted(written) == [f for f in range(NUM_FRAMES) if f not in (0, 6)]
    for frame, mask in written.items():
        assert 0.01 < mask.mean() < 0.99, f"frame {frame}: trivial mask"
        assert np.array_equal(mask, expected[frame]), f"frame {frame}"


def test_the_rectangle_track_gets_marked_keyframes_and_other_tracks_stay(job):
    _, _, annotations, output, _ = job
    before = {t.get("id"): t for t in tracks_of(annotations)}
    after = {t.get("id"): t for t in tracks_of(output)}
    # The masks' tracks became <image> masks; the rectangle track and the tree stay.
    assert sorted(after) == ["2", "3"]
    assert canonical(after["3"]) == canonical(before["3"])
    rectangle = after["2"]
    assert int(rectangle.get("group_id")) > 3  # the ungrouped track got a group id
    boxes = {int(b.get("frame")): b for b in rectangle.findall("box")}
    # As SAM 2's predictor does, the run starts at the first keyframe of any object (the
    # masks' frame 0): the rectangle is tracked from there, conditioned on its keyframe.
    # The person's box on frame 2 stays as it was; every other frame has a marked one.
    assert sorted(boxes) == list(range(NUM_FRAMES))
    [person] = before["2"].findall("box")
    assert canonical(boxes[2]) == canonical(person)
    for frame, box in boxes.items():
        points = [float(box.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]
        assert box.get("keyframe") == "1"
        assert is_marked("rectangle", points) == (frame != 2), frame
    assert "tracks with new keyframes" in job[4].stdout


def test_a_rerun_replaces_its_own_output_only(job, present_checkpoint, tmp_path):
    _, frames, _, output, _ = job
    again = tmp_path / "again.xml"
    result = run_cli(
        "--frames",
        str(frames),
        "--annotations",
        str(output),
        "--output",
        str(again),
        checkpoint=present_checkpoint,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replacing 10 earlier output shapes and 0 output tracks" in result.stdout
    assert sorted(map(canonical, tracks_of(again))) == sorted(map(canonical, tracks_of(output)))
    assert sorted((f, canonical(e)) for f, e in image_masks(again)) == sorted(
        (f, canonical(e)) for f, e in image_masks(output)
    )


def test_clear_errors_before_any_model_loads(job, tmp_path):
    """The checks that need no model come first: with a checkpoint that does not exist,
    the run still ends with the real problem."""
    frames = job[1]
    empty = tmp_path / "empty.xml"
    empty.write_text(cvat_xml((480, 854), NUM_FRAMES, []))
    wrong_size = tmp_path / "wrong.xml"
    wrong_size.write_text(cvat_xml((100, 100), NUM_FRAMES, []))
    for xml, message in [
        (empty, "no keyframes found"),
        (wrong_size, "the frames are 854x480 but the annotations are for 100x100"),
    ]:
        result = run_cli(
            "--frames",
            str(frames),
            "--annotations",
            str(xml),
            "--dry-run",
            checkpoint=tmp_path / "no-such-checkpoint.pt",
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_video_file_is_named_as_a_source_of_other_pixels_and_output_is_quiet(
    tmp_path, present_checkpoint
):
    video = tmp_path / "video.mp4"
    mask = synthetic_video(video, 6)
    annotations = tmp_path / "in.xml"
    annotations.write_text(
        cvat_xml(
            mask.shape,
            6,
            [f'<track id="0" label="dog" source="manual">{mask_element(0, mask)}</track>'],
        )
    )
    args = ("--frames", str(video), "--annotations", str(annotations), "--dry-run")
    result = run_cli(*args, checkpoint=present_checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "can differ from the frames CVAT serves" in result.stderr
    assert "use --server, or export the task with images" in result.stderr
    # Without a terminal: plain progress lines with the total from the first one; SAM
    # 2's missing-extension warning once, in one line of ours.
    lines = result.stderr.splitlines()
    progress = [line for line in lines if line.startswith("tracking: ")]
    assert progress[0] == "tracking: frame 0 of 6 (1 object)"
    assert progress[-1].startswith("tracking: frame 6 of 6 (1 object, ")
    assert "Skipping the post-processing" not in result.stderr
    assert "UserWarning" not in result.stderr
    assert sum("sam2._C" in line for line in lines) <= 1
    notes = [line for line in lines if line.startswith("sam2-cvat-track: note: ")]
    assert len(lines) == len(progress) + len(notes)


def synthetic_video(path: Path, frames: int) -> np.ndarray:
    """A square drifting over noise, 160x120, as an MP4; returns frame 0's square mask."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (160, 120))
    for index in range(frames):
        frame = background.copy()
        x = 20 + (index % 60)
        frame[40:80, x : x + 40] = (255, 200, 0)
        writer.write(frame)
    writer.release()
    mask = np.zeros((120, 160), bool)
    mask[40:80, 20:60] = True
    return mask


def peak_rss_kib(*args: str, checkpoint: Path) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "cvat_track.cli", *args],
        env=cli_env(checkpoint),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0
    return usage.ru_maxrss


def test_peak_memory_is_flat_in_video_length(tmp_path, present_checkpoint):
    """A 40- and a 240-frame video file: the tool's peak memory is the same within 10%
    (frames are decoded one at a time; memory per object is bounded)."""
    peaks = {}
    for frames in (40, 240):
        video = tmp_path / f"video-{frames}.mp4"
        mask = synthetic_video(video, frames)
        annotations = tmp_path / f"in-{frames}.xml"
        annotations.write_text(
            cvat_xml(
                mask.shape,
                frames,
                [f'<track id="0" label="dog" source="manual">{mask_element(0, mask)}</track>'],
            )
        )
        peaks[frames] = peak_rss_kib(
            "--frames",
            str(video),
            "--annotations",
            str(annotations),
            "--output",
            str(tmp_path / f"out-{frames}.xml"),
            checkpoint=present_checkpoint,
        )
    print("peak RSS (KiB):", peaks)
    assert peaks[240] <= peaks[40] * 1.10
