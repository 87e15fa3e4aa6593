"""``sam2-cvat-track`` as real CVAT behaves: re-runs after CVAT's own "Upload
annotations" (its importer resets sources and mask groups), objects across jobs, a
write-back that never leaves half of it, one visible shape per object per frame.

CVAT cannot run in CI: tests/fake_cvat.py serves its REST API and exports/imports CVAT
1.1 XML as CVAT 2.73.0 does in the fields that decide re-runs (see its docstring; the
same was seen on a real CVAT 2.73.0 server from source, README "Tracking whole videos").
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_model, davis_sequence, frame_folder, frame_paths, ground_truth
from cvat_sdk.masks import encode_mask
from fake_cvat import FakeCvat
from test_keyframe_cli import IMAGE_SIZE, run_cli
from tracking.engine import Sam2StreamTracker
from tracking.shapes import mask_to_box, mask_to_polygon

from cvat_track.cvat_server import ServerError, connect, open_job
from cvat_track.marker import is_marked
from cvat_track.run import prepare_run, run_prepared

SEQUENCE = "dog"
AUTH = ("--auth", "annotator:secret-password")


@pytest.fixture
def cli(present_checkpoint):
    """``sam2-cvat-track ARGS`` (in this process, as tests/test_keyframe_cli.py runs it):
    (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        result = run_cli(*args, checkpoint=present_checkpoint)
        return result.returncode, result.stdout, result.stderr

    return run


def content(fake: FakeCvat) -> list:
    """The annotations as CVAT shows them, without ids and sources (an upload turns every
    source into "file" or "manual"): standalone shapes, and tracks with their shapes."""

    def shape(s: dict) -> tuple:
        return (s["type"], s["frame"], tuple(s["points"]), s.get("outside", False))

    shapes = [("shape", s["label_id"], s["group"], shape(s)) for s in fake.shapes]
    tracks = [
        ("track", t["label_id"], t["group"], tuple(sorted(map(shape, t["shapes"]))))
        for t in fake.tracks
    ]
    return sorted(shapes + tracks)


def assert_one_visible_shape_per_object(fake: FakeCvat, frames: range, objects: int) -> None:
    for frame in frames:
        counts = fake.visible(frame)
        assert len(counts) == objects, (frame, counts)
        assert set(counts.values()) == {1}, (frame, counts)


def people_shapes(fake: FakeCvat) -> list:
    """People's shapes (unmarked), wherever they are (standalone or in a track)."""
    found = [(s["type"], s["frame"], tuple(s["points"])) for s in fake.shapes]
    found += [(s["type"], s["frame"], tuple(s["points"])) for t in fake.tracks for s in t["shapes"]]
    return sorted(item for item in found if not is_marked(item[0], list(item[2])))


@pytest.fixture
def three_objects():
    """Six dog frames (one job). People drew, in no group: the dog as a mask on frame 0,
    a 'person' polygon (standalone) on frame 0 and a 'person' rectangle track from
    frame 1: three objects."""
    sequence = davis_sequence(SEQUENCE)
    fake = FakeCvat(frame_paths(sequence)[:6], ["dog", "person"], job_size=6)
    mask = [float(v) for v in encode_mask(ground_truth(sequence, 0))]
    fake.add("shapes", {"type": "mask", "frame": 0, "label_id": 11, "points": mask})
    polygon = mask_to_polygon(ground_truth(sequence, 0))
    fake.add("shapes", {"type": "polygon", "frame": 0, "label_id": 12, "points": polygon})
    box = mask_to_box(ground_truth(sequence, 1))
    fake.add(
        "tracks",
        {"frame": 1, "label_id": 12, "shapes": [{"type": "rectangle", "frame": 1, "points": box}]},
    )
    server, url = fake.serve()
    yield sequence, fake, url
    server.shutdown()


def track_file(fake: FakeCvat, folder, tmp_path, name: str, cli, *more: str) -> tuple[str, str]:
    """Export -> sam2-cvat-track on the file -> Upload annotations (CVAT 1.1)."""
    exported = tmp_path / f"{name}-in.xml"
    exported.write_text(fake.export_video_xml())
    output = tmp_path / f"{name}-out.xml"
    args = ("--frames", str(folder), "--annotations", str(exported), "--output", str(output))
    status, stdout, stderr = cli(*args, *more)
    assert status == 0, stderr[-3000:]
    fake.import_xml(output.read_text())
    return stdout, stderr


def test_a_rerun_after_cvats_import_replaces_its_own_output_only(three_objects, cli, tmp_path):
    sequence, fake, url = three_objects
    folder = frame_folder(sequence, 6, tmp_path)
    people_before = people_shapes(fake)

    stdout, stderr = track_file(fake, folder, tmp_path, "first", cli)
    assert "tracked 3 objects over 6 frames" in stdout
    assert "frame 0 of 6 (3 objects)" in stderr  # the total from the first line on
    uploaded = content(fake)
    assert_one_visible_shape_per_object(fake, range(6), objects=3)
    assert people_shapes(fake) == people_before
    # After the upload nothing says "auto" any more: the mark is what is left.
    assert {s["source"] for s in fake.shapes} <= {"manual", "file"}
    output_masks = [
        s for s in fake.shapes if s["type"] == "mask" and is_marked("mask", s["points"])
    ]
    assert len(output_masks) == 5  # frames 1-5; the person's mask is frame 0's
    # Three groups: the dog's masks keep theirs through the upload (<image> form).
    groups = [s["group"] for s in fake.shapes] + [t["group"] for t in fake.tracks]
    assert len(set(groups)) == 3 and 0 not in groups

    # Polygon and rectangle output went into the tracks: a marked keyframe on every frame
    # without the person's own (the exporter's interpolated copies are not keyframes).
    for track in fake.tracks:
        marked = {s["frame"] for s in track["shapes"] if is_marked(s["type"], s["points"])}
        people = {s["frame"] for s in track["shapes"]} - marked
        assert len(people) == 1 and marked == set(range(6)) - people, track

    stdout, _ = track_file(fake, folder, tmp_path, "again", cli)
    assert "tracked 3 objects over 6 frames" in stdout
    assert "replacing 5 earlier output shapes and 0 output tracks" in stdout
    assert content(fake) == uploaded
    assert_one_visible_shape_per_object(fake, range(6), objects=3)

    # A run of other objects moves the dog's masks to the <image> form too, so an upload
    # keeps their group.
    stdout, _ = track_file(fake, folder, tmp_path, "persons", cli, "--labels", "person")
    assert "tracked 2 objects over 6 frames" in stdout
    assert content(fake) == uploaded

    status, stdout, stderr = cli("--server", url, *AUTH, "--job", "1")
    assert status == 0, stderr[-3000:]
    assert "tracked 3 objects over 6 frames" in stdout
    assert "not compatible" not in stderr  # cvat-sdk's version warning (2.73 vs 2.80)
    assert content(fake) == uploaded
    assert people_shapes(fake) == people_before


def test_objects_of_two_jobs_keep_their_groups_apart(cli):
    """A dog mask in no group in each job, and a 'person' rectangle track in job 1:
    tracking job 1, then job 2, then the task, gives three objects in three groups
    (group ids are read across the whole task), each written job by job."""
    sequence = davis_sequence(SEQUENCE)
    fake = FakeCvat(frame_paths(sequence)[:8], ["dog", "person"], job_size=4)
    for frame in (0, 4):
        points = [float(v) for v in encode_mask(ground_truth(sequence, frame))]
        fake.add("shapes", {"type": "mask", "frame": frame, "label_id": 11, "points": points})
    box = mask_to_box(ground_truth(sequence, 1))
    fake.add(
        "tracks",
        {"frame": 1, "label_id": 12, "shapes": [{"type": "rectangle", "frame": 1, "points": box}]},
    )
    server, url = fake.serve()
    try:
        for job, objects in (("1", "2 objects"), ("2", "1 object")):
            status, stdout, stderr = cli("--server", url, *AUTH, "--job", job)
            assert status == 0, stderr[-3000:]
            assert f"tracked {objects} over 4 frames" in stdout
        people = [s for s in fake.shapes if not is_marked("mask", s["points"])]
        groups = {s["frame"]: s["group"] for s in people}
        [person_track] = fake.tracks
        assert sorted(groups) == [0, 4] and 0 not in groups.values()
        assert len({groups[0], groups[4], person_track["group"]}) == 3
        status, stdout, stderr = cli("--server", url, *AUTH, "--task", "1")
        assert status == 0, stderr[-3000:]
        assert "tracked 3 objects over 8 frames" in stdout
        assert {s["group"] for s in fake.shapes} == set(groups.values())
        # Three objects, each shown once per frame (as in SAM 2's predictor the run
        # starts at frame 0, and job 2's dog is tracked there too, from its keyframe on
        # 4). The rectangle's output stays in its job: frames 0-3 in the person's track
        # (ended on frame 4), frames 4-7 in an auto track of job 2.
        objects = {(11, g): 1 for g in groups.values()} | {(12, person_track["group"]): 1}
        for frame in range(8):
            assert fake.visible(frame) == objects, frame
        tracks = {min(s["frame"] for s in t["shapes"]): t for t in fake.tracks}
        assert sorted(tracks) == [0, 4]
        assert max(s["frame"] for s in tracks[0]["shapes"]) == 4
    finally:
        server.shutdown()


def test_a_failed_write_leaves_the_earlier_output_whole(three_objects, present_checkpoint):
    """The server fails the first, second or third write request: the job holds its
    earlier annotations exactly. If undoing fails too, the error says the job may hold
    both outputs, and the next run replaces both."""
    sequence, fake, url = three_objects
    tracker = Sam2StreamTracker(build_model(present_checkpoint, IMAGE_SIZE)[0], "test")
    job = open_job(connect(url, "annotator:secret-password"), job=1)

    def tracked():
        shapes, tracks = job.read()
        run = prepare_run(job.frames, shapes, tracks, used_groups=job.task_groups())
        return run_prepared(tracker, job.frames, run)

    job.write(tracked())
    # A person corrects the dog on frame 0 (a new keyframe): the next output differs.
    [dog] = [s for s in fake.shapes if s["label_id"] == 11 and s["frame"] == 0]
    dog["points"] = [float(v) for v in encode_mask(np.roll(ground_truth(sequence, 0), 8, 1))]
    before = content(fake)
    result = tracked()
    for failing in (1, 2, 3):
        fake.fail_patches = {fake.patches + failing}
        with pytest.raises(ServerError, match=r"failed \(500: .*; nothing was changed"):
            job.write(result)
        assert content(fake) == before, failing

    fake.fail_patches = {fake.patches + n for n in (3, 4, 5, 6)}
    with pytest.raises(ServerError, match="may hold the new output beside the earlier one"):
        job.write(result)
    fake.fail_patches = set()
    job.write(tracked())
    assert_one_visible_shape_per_object(fake, range(6), objects=3)
    assert content(fake) != before
