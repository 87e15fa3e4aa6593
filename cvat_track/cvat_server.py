"""A CVAT task or job through cvat-sdk: its frames, people's shapes, and the tool's
results written back so that no failure leaves half of them (see ``ServerJob.write``)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import urllib3
from cvat_sdk import Client, models
from cvat_sdk.api_client.exceptions import ApiException
from cvat_sdk.core.client import AccessTokenCredentials
from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
from packaging.version import InvalidVersion, Version
from PIL import Image

from cvat_track.objects import SHAPE_TYPES, Shape, Track
from cvat_track.run import RunResult

# Masks in CVAT's API (run lengths + box) came with 2.3.0.
OLDEST_SERVER = Version("2.3.0")


class ServerError(ValueError):
    """The server, the credentials or the task/job cannot be used (the message says why)."""


def connect(server: str, auth: str) -> Client:
    """A logged-in client; ``auth`` is ``user:password`` or a personal access token.

    cvat-sdk's own server version check is off: it warns whenever the server's minor
    version is not the SDK's (2.80 against 2.73 already), which says nothing about the
    few calls this tool makes; the tool needs CVAT 2.3 or newer and says so."""
    if "://" not in server:
        raise ServerError(f"{server!r} has no scheme: give http://{server} or https://{server}")
    user, colon, password = auth.partition(":")
    try:
        client = Client(server, check_server_version=False)
        version = client.get_server_version()
        if version < OLDEST_SERVER:
            raise ServerError(f"{server} runs CVAT {version}; this tool needs {OLDEST_SERVER}+")
        client.login((user, password) if colon else AccessTokenCredentials(auth))
        return client
    except ApiException as error:
        if error.status in (400, 401, 403):
            raise ServerError(f"{server} refused these credentials ({error.status})") from error
        raise ServerError(f"{server} answered {error.status}: {error.reason}") from error
    except InvalidVersion as error:
        raise ServerError(f"{server} does not look like CVAT: {error}") from error
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise ServerError(f"cannot reach {server}: {error}") from error


class ServerFrames:
    """The frames of a task or job, fetched (original quality) when tracking reaches them."""

    def __init__(self, entity, numbers: list[int]) -> None:
        self.entity = entity
        self.numbers = numbers

    def __len__(self) -> int:
        return len(self.numbers)

    def read(self, index: int) -> Image.Image:
        data = self.entity.get_frame(self.numbers[index], quality="original")
        with Image.open(io.BytesIO(data.read())) as image:
            return image.convert("RGB")


@dataclass
class ServerJob:
    """A task or job opened for tracking."""

    client: Client
    entity: object  # cvat_sdk Task or Job proxy
    name: str  # "task 3" / "job 7", for messages
    frames: ServerFrames
    frame_size: tuple[int, int]  # (height, width)
    label_ids: dict[str, int]
    task_id: int

    @property
    def first_frame(self) -> int:
        return self.frames.numbers[0]

    def read(self) -> tuple[list[Shape], list[Track]]:
        """People's and tools' shapes and tracks of the frames being tracked (a track's
        shapes on other frames stay in its ``ref``, the API's track)."""
        names = {v: k for k, v in self.label_ids.items()}
        frames = set(self.frames.numbers)
        annotations = self.entity.get_annotations()

        def shape(element, owner) -> Shape:
            """A standalone shape (``owner`` is itself) or a track's element (``owner``
            is the track, which holds label, group and source)."""
            return Shape(
                str(element.type.value),
                element.frame,
                list(element.points),
                names.get(owner.label_id, ""),
                owner.group or 0,
                str(owner.source),
                outside=bool(getattr(element, "outside", False)),
                ref=element,
            )

        shapes = [
            shape(s, s)
            for s in annotations.shapes
            if str(s.type.value) in SHAPE_TYPES and s.frame in frames
        ]
        tracks = [
            Track(
                names.get(t.label_id, ""),
                [shape(e, t) for e in t.shapes if e.frame in frames],
                t.group or 0,
                str(t.source),
                ref=t,
            )
            for t in annotations.tracks
            if all(str(e.type.value) in SHAPE_TYPES for e in t.shapes)
        ]
        return shapes, tracks

    def task_groups(self) -> set[int]:
        """Every group id used in the whole task (all its jobs), so that a new object
        never takes another job's group: CVAT's UI and a later ``--task`` run would merge
        them."""
        annotations = self.client.tasks.retrieve(self.task_id).get_annotations()
        items = [*annotations.shapes, *annotations.tracks, *annotations.tags]
        return {item.group for item in items if item.group}

    def write(self, result: RunResult) -> None:
        """The results in three requests, each atomic in CVAT: create the new output,
        update people's items (group ids, tracks' keyframes), delete the earlier output.
        If one fails, the ones before are undone, so the job holds its earlier
        annotations; if undoing fails too (the server went away), the message says what
        the job holds."""
        plan = result.plan
        rewritten = {id(t.ref): t for t in result.rewritten_tracks}
        regrouped_tracks = [i for i in plan.regrouped if isinstance(i, Track)]
        updated_tracks = [
            *result.rewritten_tracks,
            *(t for t in regrouped_tracks if id(t) not in rewritten),
        ]
        created = models.PatchedLabeledDataRequest(
            shapes=[self._shape_request(s) for s in result.new_shapes],
            tracks=[self._track_request(t) for t in result.new_tracks],
        )
        updated = models.PatchedLabeledDataRequest(
            shapes=[
                models.LabeledShapeRequest(**{**i.ref.to_dict(), "group": i.group})
                for i in plan.regrouped
                if isinstance(i, Shape)
            ],
            tracks=[self._rewritten_request(t) for t in updated_tracks],
        )
        originals = models.PatchedLabeledDataRequest(
            shapes=[
                models.LabeledShapeRequest(**i.ref.to_dict())
                for i in plan.regrouped
                if isinstance(i, Shape)
            ],
            tracks=[self._original_request(t) for t in updated_tracks],
        )
        removed = models.PatchedLabeledDataRequest(
            shapes=[models.LabeledShapeRequest(**s.ref.to_dict()) for s in plan.replaced_shapes],
            tracks=[models.LabeledTrackRequest(**t.ref.to_dict()) for t in plan.replaced_tracks],
        )
        # Shape and track ids are separate sequences in CVAT: kept apart.
        created_ids: dict[str, set[int]] = {"shapes": set(), "tracks": set()}

        def create() -> None:
            for kind, ids in self._patch(created, AnnotationUpdateAction.CREATE).items():
                created_ids[kind] |= ids

        def delete_created() -> None:
            if len(created_ids["shapes"]) < len(created.shapes) or len(created_ids["tracks"]) < len(
                created.tracks
            ):
                raise _UndoImpossible("the server did not name what it created")
            self._patch(self._requests_for(created_ids), AnnotationUpdateAction.DELETE)

        steps: list[tuple[str, PatchedData, Callable[[], None], Callable[[], None]]] = [
            ("creating the new output", created, create, delete_created),
            (
                "updating group ids and tracks",
                updated,
                lambda: self._patch(updated, AnnotationUpdateAction.UPDATE),
                lambda: self._patch(originals, AnnotationUpdateAction.UPDATE),
            ),
            (
                "deleting the earlier output",
                removed,
                lambda: self._patch(removed, AnnotationUpdateAction.DELETE),
                lambda: None,
            ),
        ]
        done: list[Callable[[], None]] = []
        for what, data, do, undo in steps:
            if not (data.shapes or data.tracks):
                continue
            try:
                do()
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
                failure = f"{self.name}: {what} failed ({_describe(error)})"
                try:
                    for step_undo in reversed(done):
                        step_undo()
                except (
                    ApiException,
                    urllib3.exceptions.HTTPError,
                    OSError,
                    _UndoImpossible,
                ) as undo_error:
                    raise ServerError(
                        f"{failure}, and undoing the steps before failed too ({undo_error}): "
                        f"{self.name} may hold the new output beside the earlier one; run "
                        "again to replace both"
                    ) from error
                raise ServerError(f"{failure}; nothing was changed") from error
            done.append(undo)

    def _patch(self, data: models.PatchedLabeledDataRequest, action) -> dict[str, set[int]]:
        """One PATCH; the ids of the shapes and of the tracks the server answers with."""
        _, response = self.entity.api.partial_update_annotations(
            action=action.value,
            id=self.entity.id,
            patched_labeled_data_request=data,
            _parse_response=False,
        )
        answer = json.loads(response.data or b"{}")
        return {
            kind: {item["id"] for item in answer.get(kind) or []} for kind in ("shapes", "tracks")
        }

    def _requests_for(self, ids: dict[str, set[int]]) -> models.PatchedLabeledDataRequest:
        """The entity's shapes and tracks with these ids, as requests."""
        annotations = self.entity.get_annotations()
        return models.PatchedLabeledDataRequest(
            shapes=[
                models.LabeledShapeRequest(**s.to_dict())
                for s in annotations.shapes
                if s.id in ids["shapes"]
            ],
            tracks=[
                models.LabeledTrackRequest(**t.to_dict())
                for t in annotations.tracks
                if t.id in ids["tracks"]
            ],
        )

    def _shape_request(self, shape: Shape) -> models.LabeledShapeRequest:
        return models.LabeledShapeRequest(
            type=shape.type,
            frame=shape.frame,
            label_id=self.label_ids[shape.label],
            group=shape.group,
            source=shape.source,
            points=[float(v) for v in shape.points],
            occluded=False,
            z_order=0,
            attributes=[],
        )

    @staticmethod
    def _tracked_shape_request(shape: Shape) -> models.TrackedShapeRequest:
        if shape.ref is not None:  # a person's shape, kept as it is
            return models.TrackedShapeRequest(**shape.ref.to_dict())
        return models.TrackedShapeRequest(
            type=shape.type,
            frame=shape.frame,
            points=[float(v) for v in shape.points],
            outside=shape.outside,
            occluded=False,
            z_order=0,
            attributes=[],
        )

    def _track_request(self, track: Track) -> models.LabeledTrackRequest:
        return models.LabeledTrackRequest(
            frame=track.shapes[0].frame,
            label_id=self.label_ids[track.label],
            group=track.group,
            source=track.source,
            attributes=[],
            shapes=[self._tracked_shape_request(s) for s in track.shapes],
        )

    def _rewritten_request(self, track: Track) -> models.LabeledTrackRequest:
        """A track rewritten by the run (or only regrouped): its shapes on the frames
        tracked as the run left them, its shapes on other frames unchanged."""
        api_track = track.ref.ref if isinstance(track.ref, Track) else track.ref
        frames = set(self.frames.numbers)
        kept = [
            models.TrackedShapeRequest(**e.to_dict())
            for e in api_track.shapes
            if e.frame not in frames
        ]
        shapes = sorted(
            [*kept, *(self._tracked_shape_request(s) for s in track.shapes)],
            key=lambda s: s.frame,
        )
        return models.LabeledTrackRequest(
            **{
                **api_track.to_dict(),
                "group": track.group,
                "frame": shapes[0].frame,
                "shapes": shapes,
            }
        )

    @staticmethod
    def _original_request(track: Track) -> models.LabeledTrackRequest:
        api_track = track.ref.ref if isinstance(track.ref, Track) else track.ref
        return models.LabeledTrackRequest(**api_track.to_dict())


PatchedData = models.PatchedLabeledDataRequest


class _UndoImpossible(Exception):
    pass


def _describe(error: Exception) -> str:
    """An API error's status and body, or a connection error."""
    if not isinstance(error, ApiException):
        return str(error)
    body = error.body.decode(errors="replace") if isinstance(error.body, bytes) else error.body
    return f"{error.status}: {(body or error.reason or '').strip()[:300]}"


def open_job(
    client: Client,
    task: int | None = None,
    job: int | None = None,
    frame_range: tuple[int, int] | None = None,
) -> ServerJob:
    """The task or job, with its frames (optionally ``frame_range``, inclusive)."""
    name = f"job {job}" if job is not None else f"task {task}"
    try:
        if job is not None:
            entity = client.jobs.retrieve(job)
            numbers = list(range(entity.start_frame, entity.stop_frame + 1))
        else:
            entity = client.tasks.retrieve(task)
            numbers = list(range(entity.size))
        meta = entity.get_meta()
        labels = {label.name: label.id for label in entity.get_labels()}
    except ApiException as error:
        if error.status == 404:
            raise ServerError(f"{name} was not found (or this user cannot see it)") from error
        if error.status == 401:  # a token is only tried with the first request
            raise ServerError(f"the server refused these credentials ({error.status})") from error
        raise ServerError(f"{name}: the server answered {error.status}") from error
    if meta.frame_filter:
        raise ServerError(f"{name} has the frame filter {meta.frame_filter!r}; not supported")
    if frame_range is not None:
        first, last = frame_range
        numbers = [n for n in numbers if first <= n <= last]
        if not numbers:
            raise ServerError(f"{name} has no frame in {first}..{last}")
    sizes = {(f.height, f.width) for f in meta.frames}
    if len(sizes) != 1:
        raise ServerError(f"{name} has frames of several sizes: {sorted(sizes)}")
    task_id = entity.task_id if job is not None else entity.id
    return ServerJob(
        client, entity, name, ServerFrames(entity, numbers), sizes.pop(), labels, task_id
    )
