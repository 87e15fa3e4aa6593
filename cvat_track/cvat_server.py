"""A CVAT task or job through cvat-sdk: its frames, people's shapes, and the tool's
results written back (PATCH .../annotations/ with actions delete, update, create)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import urllib3
from cvat_sdk import Client, make_client, models
from cvat_sdk.api_client.exceptions import ApiException
from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
from PIL import Image

from cvat_track.objects import SHAPE_TYPES, Plan, Shape, Track


class ServerError(ValueError):
    """The server, the credentials or the task/job cannot be used (the message says why)."""


def connect(server: str, auth: str) -> Client:
    """A logged-in client; ``auth`` is ``user:password`` or a personal access token."""
    if "://" not in server:
        raise ServerError(f"{server!r} has no scheme: give http://{server} or https://{server}")
    user, colon, password = auth.partition(":")
    try:
        if colon:
            return make_client(server, credentials=(user, password))
        return make_client(server, access_token=auth)
    except ApiException as error:
        if error.status in (400, 401, 403):
            raise ServerError(f"{server} refused these credentials ({error.status})") from error
        raise ServerError(f"{server} answered {error.status}: {error.reason}") from error
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

    entity: object  # cvat_sdk Task or Job proxy
    name: str  # "task 3" / "job 7", for messages
    frames: ServerFrames
    frame_size: tuple[int, int]  # (height, width)
    label_ids: dict[str, int]

    @property
    def first_frame(self) -> int:
        return self.frames.numbers[0]

    def read(self) -> tuple[list[Shape], list[Track]]:
        """People's and tools' shapes and tracks of the frames being tracked."""
        names = {v: k for k, v in self.label_ids.items()}
        frames = set(self.frames.numbers)
        annotations = self.entity.get_annotations()

        def shape(element, owner, ref=None) -> Shape:
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
                ref=ref,
            )

        shapes = [
            shape(s, s, ref=s)
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

    def write(self, plan: Plan, new_shapes: list[Shape], new_tracks: list[Track]) -> None:
        """Earlier output of the tracked objects removed, group ids given, results added."""
        update = self.entity.update_annotations
        removed = models.PatchedLabeledDataRequest(
            shapes=[models.LabeledShapeRequest(**s.ref.to_dict()) for s in plan.replaced_shapes],
            tracks=[models.LabeledTrackRequest(**t.ref.to_dict()) for t in plan.replaced_tracks],
        )
        regrouped = models.PatchedLabeledDataRequest(
            shapes=[
                models.LabeledShapeRequest(**{**i.ref.to_dict(), "group": i.group})
                for i in plan.regrouped
                if isinstance(i, Shape)
            ],
            tracks=[
                models.LabeledTrackRequest(**{**i.ref.to_dict(), "group": i.group})
                for i in plan.regrouped
                if isinstance(i, Track)
            ],
        )
        created = models.PatchedLabeledDataRequest(
            shapes=[self._shape_request(s) for s in new_shapes],
            tracks=[self._track_request(t) for t in new_tracks],
        )
        try:
            update(removed, action=AnnotationUpdateAction.DELETE)
            update(regrouped, action=AnnotationUpdateAction.UPDATE)
            update(created, action=AnnotationUpdateAction.CREATE)
        except ApiException as error:
            raise ServerError(
                f"{self.name}: writing the results failed ({error.status}): {error.body}"
            ) from error

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

    def _track_request(self, track: Track) -> models.LabeledTrackRequest:
        return models.LabeledTrackRequest(
            frame=track.shapes[0].frame,
            label_id=self.label_ids[track.label],
            group=track.group,
            source=track.source,
            attributes=[],
            shapes=[
                models.TrackedShapeRequest(
                    type=s.type,
                    frame=s.frame,
                    points=[float(v) for v in s.points],
                    outside=s.outside,
                    occluded=False,
                    z_order=0,
                    attributes=[],
                )
                for s in track.shapes
            ],
        )


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
    return ServerJob(entity, name, ServerFrames(entity, numbers), sizes.pop(), labels)
