"""A CVAT task or job through cvat-sdk: its frames, people's shapes, and the tool's
results written back so that no failure leaves half of them (see ``ServerJob.write``)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import urllib3
from cvat_sdk import Client, models
from cvat_sdk.api_client.exceptions import ApiException
from cvat_sdk.core.client import AccessTokenCredentials
from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
from cvat_sdk.core.proxies.tasks import Task
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
    # The jobs annotations are read from and written to, with their frames: the job
    # itself, or a task's annotation jobs. CVAT stores each job's annotations apart and
    # splits what a task-level request sends by job, which a track crossing a job's end
    # does not survive (an update answers 400), so the tool writes job by job.
    parts: list[tuple[object, range]] = field(default_factory=list)
    # Group ids seen by ``read`` in every job it read (all of them for a task).
    _groups_read: set[int] = field(default_factory=set)

    @property
    def first_frame(self) -> int:
        return self.frames.numbers[0]

    @property
    def segments(self) -> list[range]:
        return [frames for _, frames in self.parts]

    def _part_of_frame(self, frame: int) -> tuple[object, range]:
        return next(part for part in self.parts if frame in part[1])

    def read(self) -> tuple[list[Shape], list[Track]]:
        """People's and tools' shapes and tracks of the frames being tracked (a track's
        shapes on other frames stay in its ``ref``, the API's track)."""
        names = {v: k for k, v in self.label_ids.items()}
        frames = set(self.frames.numbers)

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

        shapes, tracks = [], []
        for part in self.parts:
            proxy, part_frames = part
            annotations = proxy.get_annotations()
            items = [*annotations.shapes, *annotations.tracks, *annotations.tags]
            self._groups_read |= {item.group for item in items if item.group}
            for item in annotations.shapes:
                # A frame two jobs overlap on is read from the first (as CVAT merges), and
                # written back there: a shape's job follows from its frame.
                home = self._part_of_frame(item.frame) if item.frame in frames else None
                if str(item.type.value) in SHAPE_TYPES and home is part:
                    shapes.append(shape(item, item))
            for item in annotations.tracks:
                if not all(str(e.type.value) in SHAPE_TYPES for e in item.shapes):
                    continue
                members = [shape(e, item) for e in item.shapes if e.frame in frames]
                label, group = names.get(item.label_id, ""), item.group or 0
                tracks.append(Track(label, members, group, str(item.source), item, part_frames))
        return shapes, tracks

    def task_groups(self) -> set[int]:
        """Every group id used in the whole task (all its jobs), so that a new object
        never takes another job's group: CVAT's UI and a later ``--task`` run would merge
        them."""
        if isinstance(self.entity, Task):  # ``read`` saw all its jobs
            return set(self._groups_read)
        annotations = self.client.tasks.retrieve(self.task_id).get_annotations()
        items = [*annotations.shapes, *annotations.tracks, *annotations.tags]
        return {item.group for item in items if item.group}

    def write(self, result: RunResult) -> None:
        """The results in three rounds of requests, one request per job and round, each
        atomic in CVAT: create the new output, update people's items (group ids, tracks'
        keyframes), delete the earlier output. If one fails, the ones before are undone,
        so the job holds its earlier annotations; if undoing fails too (the server went
        away), the message says what the job holds."""
        plan = result.plan
        # Every regrouped track belongs to a tracked object, so it is among the
        # rewritten tracks (which carry its new group).
        regrouped = [i for i in plan.regrouped if isinstance(i, Shape)]
        creates, updates, deletes = [], [], []
        for proxy, frames in self.parts:

            def here(shapes: list[Shape], frames=frames) -> list[Shape]:
                return [s for s in shapes if self._part_of_frame(s.frame)[1] == frames]

            def home(tracks: list[Track], frames=frames) -> list[Track]:
                return [t for t in tracks if t.home == frames]

            creates.append(
                self._create_step(
                    proxy,
                    PatchedData(
                        shapes=[self._shape_request(s) for s in here(result.new_shapes)],
                        tracks=[self._track_request(t) for t in home(result.new_tracks)],
                    ),
                )
            )
            tracks = home(result.rewritten_tracks)
            updates.append(
                self._update_step(
                    proxy,
                    PatchedData(
                        shapes=[_shape_model(s, group=s.group) for s in here(regrouped)],
                        tracks=[self._rewritten_request(t) for t in tracks],
                    ),
                    PatchedData(
                        shapes=[_shape_model(s) for s in here(regrouped)],
                        tracks=[_track_model(t) for t in tracks],
                    ),
                )
            )
            deletes.append(
                self._delete_step(
                    proxy,
                    PatchedData(
                        shapes=[_shape_model(s) for s in here(plan.replaced_shapes)],
                        tracks=[_track_model(t) for t in home(plan.replaced_tracks)],
                    ),
                )
            )
        done: list[Callable[[], None]] = []
        for what, do, undo in (step for step in creates + updates + deletes if step):
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

    def _create_step(self, proxy, data: PatchedData):
        if not (data.shapes or data.tracks):
            return None
        # Shape and track ids are separate sequences in CVAT: kept apart.
        created: dict[str, set[int]] = {"shapes": set(), "tracks": set()}

        def create() -> None:
            for kind, ids in _patch(proxy, data, AnnotationUpdateAction.CREATE).items():
                created[kind] |= ids

        def delete_created() -> None:
            if len(created["shapes"]) < len(data.shapes) or len(created["tracks"]) < len(
                data.tracks
            ):
                raise _UndoImpossible("the server did not name what it created")
            _patch(proxy, _requests_for(proxy, created), AnnotationUpdateAction.DELETE)

        return (f"creating the new output in {_name(proxy)}", create, delete_created)

    @staticmethod
    def _update_step(proxy, data: PatchedData, originals: PatchedData):
        if not (data.shapes or data.tracks):
            return None
        return (
            f"updating group ids and tracks in {_name(proxy)}",
            lambda: _patch(proxy, data, AnnotationUpdateAction.UPDATE),
            lambda: _patch(proxy, originals, AnnotationUpdateAction.UPDATE),
        )

    @staticmethod
    def _delete_step(proxy, data: PatchedData):
        if not (data.shapes or data.tracks):
            return None
        return (
            f"deleting the earlier output in {_name(proxy)}",
            lambda: _patch(proxy, data, AnnotationUpdateAction.DELETE),
            lambda: None,
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
        """A track rewritten by the run: its shapes on the frames tracked as the run left
        them, its shapes on other frames unchanged."""
        api_track = _api_model(track)
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


PatchedData = models.PatchedLabeledDataRequest


def _api_model(item: Shape | Track) -> object:
    """The API's shape or track behind a read (or rewritten) item."""
    ref = item.ref
    return ref.ref if isinstance(ref, Track) else ref


def _shape_model(shape: Shape, **changes) -> models.LabeledShapeRequest:
    """The API's shape behind ``shape`` as a request, as read (or with ``changes``)."""
    return models.LabeledShapeRequest(**{**shape.ref.to_dict(), **changes})


def _track_model(track: Track) -> models.LabeledTrackRequest:
    """The API's track behind ``track`` as a request, as read."""
    return models.LabeledTrackRequest(**_api_model(track).to_dict())


def _name(proxy) -> str:
    return f"job {proxy.id}"


def _patch(proxy, data: PatchedData, action) -> dict[str, set[int]]:
    """One PATCH; the ids of the shapes and of the tracks the server answers with."""
    _, response = proxy.api.partial_update_annotations(
        action=action.value,
        id=proxy.id,
        patched_labeled_data_request=data,
        _parse_response=False,
    )
    answer = json.loads(response.data or b"{}")
    return {kind: {item["id"] for item in answer.get(kind) or []} for kind in ("shapes", "tracks")}


def _requests_for(proxy, ids: dict[str, set[int]]) -> PatchedData:
    """The job's shapes and tracks with these ids, as requests."""
    annotations = proxy.get_annotations()
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


class _UndoImpossible(Exception):
    pass


def _describe(error: Exception) -> str:
    """An API error's status and body, or a connection error."""
    if not isinstance(error, ApiException):
        return str(error)
    body = error.body.decode(errors="replace") if isinstance(error.body, bytes) else error.body
    body = " ".join((body or "").split())
    if not body or body.startswith("<"):  # an HTML error page says no more than its status
        body = error.reason or ""
    return f"{error.status}: {body[:300]}"


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
    if job is not None:
        parts = [(entity, range(entity.start_frame, entity.stop_frame + 1))]
    else:
        jobs = sorted(
            (j for j in entity.get_jobs() if getattr(j.type, "value", j.type) == "annotation"),
            key=lambda j: j.start_frame,
        )
        parts = [(j, range(j.start_frame, j.stop_frame + 1)) for j in jobs]
    return ServerJob(
        client, entity, name, ServerFrames(entity, numbers), sizes.pop(), labels, task_id, parts
    )
