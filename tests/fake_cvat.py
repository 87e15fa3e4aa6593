"""A small CVAT server for tests: the part of CVAT's REST API that cvat-sdk uses to read a
task's or job's frames and annotations and to write annotations back.

A real CVAT server cannot run in CI. This one answers as CVAT 2.x does, in the shapes
and status codes of its API (the cvat-sdk models that parse them are the check):
``GET /api/server/about``; ``POST /api/auth/login`` (session and CSRF cookies; unsafe
requests with a session must echo the CSRF token in ``X-CSRFToken``) or ``Authorization:
Bearer <personal access token>``; ``GET /api/tasks/{id}``, ``/api/jobs/{id}``;
``GET /api/labels?task_id=|job_id=`` (paginated); ``GET .../data/meta``; ``GET
.../data?type=frame&number=N&quality=original`` (task-relative frame numbers; a job
serves only its own); ``GET .../annotations/`` and ``PATCH .../annotations/?action=
create|update|delete``. 401 without credentials, 404 ``{"detail": "Not found."}``.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import secrets
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image

JSON = "application/vnd.cvat+json"


@dataclass
class FakeCvat:
    """One task (id 1) of ``frames`` images, split into jobs of ``job_size`` frames."""

    frames: list[Path]
    labels: list[str]
    job_size: int
    user: str = "annotator"
    password: str = "secret-password"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    shapes: list[dict] = field(default_factory=list)
    tracks: list[dict] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    # Agent functions (cvat-cli function run-agent): one native tracker function whose
    # queue holds annotation requests; completing one may queue the next (on_complete).
    function_id: int = 5
    queue: list[dict] = field(default_factory=list)
    completed: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    on_complete: object = None  # callable(ar_id, result) -> None
    fail_patches: set[int] = field(default_factory=set)  # PATCH requests (1 = first) -> 500
    patches: int = 0
    # More tasks (id -> frame files), no jobs or annotations: for agent requests.
    other_tasks: dict[int, list[Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        # CVAT numbers shapes, tracks and tracks' shapes in separate sequences (one table
        # each), so a shape and a track can have the same id.
        self._ids = {kind: itertools.count(1) for kind in ("shapes", "tracks", "tracked_shapes")}
        self._sessions: dict[str, str] = {}  # sessionid -> csrftoken
        with Image.open(self.frames[0]) as image:
            self.width, self.height = image.size
        self.label_ids = {name: 11 + i for i, name in enumerate(self.labels)}

    # -- data a test sets up or inspects -------------------------------------------

    def add(self, kind: str, item: dict) -> dict:
        """Store a shape or track as CVAT would (ids assigned, defaults filled)."""
        with self._lock:
            return self._create(kind, item)

    def _create(self, kind: str, item: dict) -> dict:
        stored = {
            "group": 0,
            "source": "manual",
            "attributes": [],
            "elements": [],
            **item,
            "id": self._new_id(kind),
        }
        if kind == "shapes":
            stored = {"occluded": False, "outside": False, "z_order": 0, "rotation": 0.0, **stored}
        else:
            elements = []
            for shape in stored["shapes"]:
                elements.append(
                    {
                        "occluded": False,
                        "outside": False,
                        "z_order": 0,
                        "rotation": 0.0,
                        "attributes": [],
                        **shape,
                        "id": self._new_id("tracked_shapes"),
                    }
                )
            stored["shapes"] = elements
        getattr(self, kind).append(stored)
        return stored

    def _new_id(self, kind: str) -> int:
        return next(self._ids[kind])

    def _frames_of(self, job: int | None) -> range:
        """A job's frames, or the task's (``job`` None)."""
        return self.frame_range("jobs", job) if job is not None else range(len(self.frames))

    def jobs(self) -> list[tuple[int, int, int]]:
        """(job id, start frame, stop frame)."""
        count = len(self.frames)
        return [
            (1 + i, start, min(start + self.job_size, count) - 1)
            for i, start in enumerate(range(0, count, self.job_size))
        ]

    # -- the server ---------------------------------------------------------------

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(
                self,
                status: int,
                body: object,
                content_type: str = JSON,
                headers: dict | None = None,
            ) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def _cookies(self) -> dict[str, str]:
                raw = self.headers.get("Cookie", "")
                return dict(p.strip().split("=", 1) for p in raw.split(";") if "=" in p)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {fake.token}":
                    return True
                cookies = self._cookies()
                csrf = fake._sessions.get(cookies.get("sessionid", ""))
                if csrf is None:
                    return False
                return self.command == "GET" or self.headers.get("X-CSRFToken") == csrf

            def _route(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                path = unquote(url.path).rstrip("/")
                fake.requests.append(f"{self.command} {path}")
                if path == "/api/server/about":
                    return self._send(200, fake.about())
                if path == "/api/auth/login" and self.command == "POST":
                    return self._login(self._body())
                if not self._authorised():
                    return self._send(
                        401, {"detail": "Authentication credentials were not provided."}
                    )
                if path.startswith("/api/functions/"):
                    return self._function(path)
                match = re.fullmatch(r"/api/(tasks|jobs)/(\d+)(/.*)?", path)
                if path == "/api/labels":
                    return self._send(200, fake.label_page(query))
                if path == "/api/jobs" and self.command == "GET":
                    return self._send(200, fake.job_page(query))
                if not match:
                    return self._send(404, {"detail": "Not found."})
                kind, number, rest = match.group(1), int(match.group(2)), match.group(3) or ""
                frames = fake.frame_range(kind, number)
                files = (
                    fake.other_tasks.get(number, fake.frames) if kind == "tasks" else fake.frames
                )
                if frames is None:
                    return self._send(404, {"detail": "Not found."})
                if rest == "" and self.command == "GET":
                    return self._send(200, fake.entity(kind, number))
                if rest == "/data/meta":
                    return self._send(200, fake.meta(frames, files))
                if rest == "/data":
                    return self._frame(frames, files, query)
                if rest == "/annotations":
                    if self.command == "GET":
                        return self._send(200, fake.annotations(frames))
                    if self.command == "PATCH":
                        body = self._body()
                        fake.patches += 1
                        if fake.patches in fake.fail_patches:
                            return self._send(500, {"detail": "Internal server error (test)."})
                        refusal = fake.refuse_patch(kind, frames, query.get("action"), body)
                        if refusal:
                            return self._send(400, [refusal])
                        return self._send(200, fake.patch(query.get("action"), body))
                return self._send(405, {"detail": f'Method "{self.command}" not allowed.'})

            def _function(self, path: str) -> None:
                queue = rf"/api/functions/queues/function:{fake.function_id}/requests"
                if path == f"/api/functions/{fake.function_id}" and self.command == "GET":
                    return self._send(200, fake.function())
                if path == f"{queue}/acquire" and self.command == "POST":
                    self._body()
                    with fake._lock:
                        assignment = fake.queue.pop(0) if fake.queue else None
                    return self._send(200, {"ar_assignment": assignment})
                match = re.fullmatch(rf"{queue}/([\w-]+)/(complete|fail|update)", path)
                if not match or self.command != "POST":
                    return self._send(404, {"detail": "Not found."})
                ar_id, verb, body = match.group(1), match.group(2), self._body()
                if verb == "complete":
                    fake.completed[ar_id] = body
                    if fake.on_complete is not None:
                        fake.on_complete(ar_id, body)
                elif verb == "fail":
                    fake.failed[ar_id] = body["exc_info"]
                return self._send(200, {})

            def _login(self, body: dict) -> None:
                if (body.get("username"), body.get("password")) != (fake.user, fake.password):
                    return self._send(
                        400, {"non_field_errors": ["Unable to log in with provided credentials."]}
                    )
                session, csrf = secrets.token_hex(16), secrets.token_hex(16)
                fake._sessions[session] = csrf
                self.send_response(200)
                data = json.dumps({"key": secrets.token_hex(20)}).encode()
                self.send_header("Content-Type", JSON)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Set-Cookie", f"csrftoken={csrf}; Path=/; SameSite=Lax")
                self.send_header("Set-Cookie", f"sessionid={session}; HttpOnly; Path=/")
                self.end_headers()
                self.wfile.write(data)

            def _frame(self, frames: range, files: list[Path], query: dict) -> None:
                number = int(query.get("number", -1))
                if query.get("type") != "frame" or number not in frames:
                    return self._send(400, ["The frame number doesn't belong to the task or job"])
                content_type = "image/png" if files[number].suffix == ".png" else "image/jpeg"
                return self._send(200, files[number].read_bytes(), content_type)

            do_GET = do_POST = do_PATCH = _route

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    # -- answers ------------------------------------------------------------------

    @staticmethod
    def about() -> dict:
        return {
            "name": "Computer Vision Annotation Tool",
            "description": "CVAT is completely re-designed and re-implemented version of ...",
            "version": "2.73.0",  # the CVAT the tool was checked against; cvat-sdk is 2.80
            "logo_url": "/static/logo.svg",
            "subtitle": "Open Data Annotation Platform",
        }

    def function(self) -> dict:
        return {
            "id": self.function_id,
            "name": "SAM 2.1 tracker",
            "provider": "native",
            "kind": "tracker",
            "supported_shape_types": ["mask", "polygon", "rectangle"],
            "owner": {"id": 1, "username": self.user},
            "organization": None,
        }

    def frame_range(self, kind: str, number: int) -> range | None:
        if kind == "tasks":
            if number in self.other_tasks:
                return range(len(self.other_tasks[number]))
            return range(len(self.frames)) if number == 1 else None
        for job, start, stop in self.jobs():
            if job == number:
                return range(start, stop + 1)
        return None

    def entity(self, kind: str, number: int) -> dict:
        common = {
            "id": number,
            "mode": "interpolation",
            "dimension": "2d",
            "organization": None,
            "labels": {"url": f"http://localhost/api/labels?{kind[:-1]}_id={number}"},
            "data_chunk_size": 36,
            "data_compressed_chunk_type": "imageset",
            "data_original_chunk_type": "imageset",
        }
        if kind == "tasks":
            return {
                **common,
                "name": "davis",
                "size": len(self.frame_range(kind, number)),
                "updated_date": "2026-11-22T00:00:00Z",
                "status": "annotation",
                "jobs": {
                    "count": len(self.jobs()),
                    "completed": 0,
                    "validation": 0,
                    "url": "http://localhost/api/jobs?task_id=1",
                },
            }
        frames = self.frame_range(kind, number)
        return {
            **common,
            "task_id": 1,
            "project_id": None,
            "start_frame": frames.start,
            "stop_frame": frames.stop - 1,
            "frame_count": len(frames),
            "type": "annotation",
            "stage": "annotation",
            "state": "new",
            "status": "annotation",
            "issues": {"url": f"http://localhost/api/issues?job_id={number}", "count": 0},
        }

    def job_page(self, query: dict) -> dict:
        jobs = [self.entity("jobs", job) for job, _, _ in self.jobs()]
        return {"count": len(jobs), "next": None, "previous": None, "results": jobs}

    def refuse_patch(self, kind: str, frames: range, action: str | None, body: dict) -> str:
        """Why CVAT would answer 400 (empty if it would not): a task-level update of a
        track reaching into another job (CVAT splits the request by job and fails on the
        track's id in the second: "duplicate key value violates unique constraint");
        stricter than CVAT, anything sent to a job outside the job's frames."""
        tracks = body.get("tracks") or []
        if kind == "tasks" and action == "update":
            for track in tracks:
                jobs = {
                    j for j, a, b in self.jobs() for s in track["shapes"] if a <= s["frame"] <= b
                }
                if len(jobs) > 1:
                    return (
                        'duplicate key value violates unique constraint "engine_labeledtrack_pkey"'
                    )
        if kind == "jobs" and action in ("create", "update"):
            # A job's track may end with an outside shape on the next job's first frame,
            # as CVAT ends a job's part of a track.
            last = frames.stop
            items = [*(body.get("shapes") or []), *(s for t in tracks for s in t["shapes"])]
            if any(not frames.start <= s["frame"] <= last for s in items):
                return "frames outside the job"
        return ""

    def label_page(self, query: dict) -> dict:
        return {
            "count": len(self.labels),
            "next": None,
            "previous": None,
            "results": [
                {
                    "id": self.label_ids[name],
                    "name": name,
                    "color": "#fa3253",
                    "type": "any",
                    "attributes": [],
                    "sublabels": [],
                    "has_parent": False,
                    "task_id": 1,
                    "parent_id": None,
                }
                for name in self.labels
            ],
        }

    def meta(self, frames: range, files: list[Path]) -> dict:
        return {
            "chunk_size": 36,
            "size": len(frames),
            "image_quality": 70,
            "start_frame": frames.start,
            "stop_frame": frames.stop - 1,
            "frame_filter": "",
            "chunks_updated_date": "2026-11-22T00:00:00Z",
            "deleted_frames": [],
            "included_frames": None,
            "frames": [self._frame_meta(files[i]) for i in frames],
        }

    @staticmethod
    def _frame_meta(path: Path) -> dict:
        with Image.open(path) as image:
            width, height = image.size
        return {"width": width, "height": height, "name": path.name, "related_files": 0}

    def annotations(self, frames: range) -> dict:
        with self._lock:
            return {
                "version": 0,
                "tags": [],
                "shapes": [copy.deepcopy(s) for s in self.shapes if s["frame"] in frames],
                # A track is stored in the job of its first frame (CVAT keeps each
                # job's annotations apart).
                "tracks": [
                    copy.deepcopy(t)
                    for t in self.tracks
                    if min(e["frame"] for e in t["shapes"]) in frames
                ],
            }

    def patch(self, action: str | None, body: dict) -> dict:
        with self._lock:
            result = {"version": 0, "tags": [], "shapes": [], "tracks": []}
            for kind in ("shapes", "tracks"):
                for item in body.get(kind) or []:
                    stored = getattr(self, kind)
                    if action == "create":
                        result[kind].append(self._create(kind, item))
                    elif action == "update":
                        # CVAT deletes the item and creates it again with its id: a
                        # track's shapes are the ones sent (new ones get ids).
                        index = next(i for i, s in enumerate(stored) if s["id"] == item["id"])
                        updated = {**stored[index], **item}
                        for shape in updated.get("shapes") or []:
                            if shape.get("id") is None:
                                shape["id"] = self._new_id("tracked_shapes")
                        stored[index] = updated
                        result[kind].append(updated)
                    elif action == "delete":
                        stored[:] = [s for s in stored if s["id"] != item["id"]]
                        result[kind].append(item)
            return result

    # -- CVAT 1.1 XML, as CVAT 2.73 exports and imports it -------------------------

    def _label_names(self) -> dict[int, str]:
        return {v: k for k, v in self.label_ids.items()}

    def export_video_xml(self, job: int | None = None) -> str:
        """Export ... "CVAT for video 1.1" of the task or a job (its annotations.xml):
        tracks with their keyframes and, on every frame after a visible keyframe up to the
        next keyframe or the last frame, an interpolated shape (``keyframe="0"``; here a
        copy of the keyframe's points); ``group_id`` only when non-zero; every shape as
        a track of the shape and an ``outside`` copy on the next frame, unless that frame
        is the job's last or beyond (CVAT's ``shape.frame + frame_step < stop_frame``)."""
        frames = self._frames_of(job)
        start, stop = frames.start, frames.stop - 1
        names = self._label_names()
        annotations = self.annotations(frames)
        meta = (
            f"<job><id>{job}</id><start_frame>{start}</start_frame>"
            f"<stop_frame>{stop}</stop_frame></job>"
            if job is not None
            else f"<task><id>1</id><start_frame>0</start_frame>"
            f"<stop_frame>{stop}</stop_frame></task>"
        )
        lines = [
            '<?xml version="1.0" encoding="utf-8"?>',
            "<annotations><version>1.1</version>",
            f"<meta>{meta}<original_size><width>{self.width}</width>"
            f"<height>{self.height}</height></original_size></meta>",
        ]
        tracks = [dict(t) for t in annotations["tracks"]]
        for shape in annotations["shapes"]:
            elements = [{**shape, "outside": False}]
            if shape["frame"] + 1 < stop:
                elements.append({**shape, "frame": shape["frame"] + 1, "outside": True})
            tracks.append({**shape, "shapes": elements})
        for index, track in enumerate(tracks):
            group = f' group_id="{track["group"]}"' if track["group"] else ""
            lines.append(
                f'<track id="{index}" label="{names[track["label_id"]]}" '
                f'source="{track["source"]}"{group}>'
            )
            lines.extend(_xml_element(shape) for shape in _interpolated(track["shapes"], stop))
            lines.append("</track>")
        lines.append("</annotations>")
        return "\n".join(lines)

    def import_xml(self, text: str, job: int | None = None) -> None:
        """Upload annotations with "CVAT 1.1" into the task or a job: its annotations are
        replaced by the file's, as ``load_anno`` reads them: a ``<track>`` gets ``source
        file`` and keeps ``group_id`` and its keyframe shapes; a track whose first shape
        is a mask becomes one shape of that first shape with the defaults of a tracked
        shape (``source manual``, group 0); an ``<image>`` shape keeps ``group_id`` and gets
        ``source file``, its frame found by the image's name, else its ``id``."""
        frames = self._frames_of(job)
        by_name = {path.stem: i for i, path in enumerate(self.frames)}
        root = ET.fromstring(text)
        shapes, tracks = [], []
        for element in root.findall("track"):
            label_id = self.label_ids[element.get("label")]
            members = [_api_shape(e) for e in element if e.get("keyframe") == "1"]
            if members[0]["type"] == "mask":
                first = members[0]
                shapes.append({**first, "label_id": label_id, "group": 0, "source": "manual"})
                shapes[-1].pop("outside")
                continue
            tracks.append(
                {
                    "label_id": label_id,
                    "group": int(element.get("group_id", 0)),
                    "source": "file",
                    "frame": min(m["frame"] for m in members),
                    "shapes": members,
                }
            )
        for image in root.findall("image"):
            name = image.get("name", "").rsplit(".", 1)[0]
            frame = by_name.get(name, int(image.get("id")))
            for element in image:
                shape = _api_shape(element, frame)
                shape.pop("outside")
                shapes.append(
                    {
                        **shape,
                        "label_id": self.label_ids[element.get("label")],
                        "group": int(element.get("group_id", 0)),
                        "source": "file",
                    }
                )
        with self._lock:
            self.shapes[:] = [s for s in self.shapes if s["frame"] not in frames]
            self.tracks[:] = [
                t for t in self.tracks if min(e["frame"] for e in t["shapes"]) not in frames
            ]
            for shape in shapes:
                self._create("shapes", shape)
            for track in tracks:
                self._create("tracks", track)

    def visible(self, frame: int) -> dict[tuple[int, int], int]:
        """How many shapes CVAT's annotation view shows on ``frame`` per object (label
        id, group; a group-0 item is its own object, keyed by its id): standalone shapes
        on the frame, and tracks whose latest shape at or before it is not outside."""
        counts: dict[tuple[int, int], int] = {}

        def count(item: dict) -> None:
            key = (item["label_id"], item["group"] or -item["id"])
            counts[key] = counts.get(key, 0) + 1

        for shape in self.shapes:
            if shape["frame"] == frame:
                count(shape)
        for track in self.tracks:
            earlier = [s for s in track["shapes"] if s["frame"] <= frame]
            if earlier and not max(earlier, key=lambda s: s["frame"])["outside"]:
                count(track)
        return counts


def _interpolated(keyframes: list[dict], stop: int) -> list[dict]:
    """A track's shapes as exported: its keyframes, and a non-keyframe copy on each frame
    after a visible keyframe until the next keyframe (or ``stop``, inclusive)."""
    keyframes = sorted(keyframes, key=lambda s: s["frame"])
    shapes = []
    for shape, following in zip(keyframes, [*keyframes[1:], None]):
        shapes.append({**shape, "keyframe": True})
        end = following["frame"] if following else stop + 1
        if not shape.get("outside"):
            shapes += [
                {**shape, "frame": f, "keyframe": False} for f in range(shape["frame"] + 1, end)
            ]
    return shapes


def _xml_element(shape: dict) -> str:
    """A track's shape as CVAT for video 1.1 writes it."""
    common = (
        f'frame="{shape["frame"]}" keyframe="{int(shape.get("keyframe", True))}" '
        f'outside="{int(shape.get("outside", False))}" '
        f'occluded="{int(shape.get("occluded", False))}"'
    )
    points = shape["points"]
    if shape["type"] == "rectangle":
        box = " ".join(f'{k}="{v:.2f}"' for k, v in zip(("xtl", "ytl", "xbr", "ybr"), points))
        return f'<box {common} {box} z_order="0"></box>'
    if shape["type"] == "polygon":
        pairs = ";".join(f"{x:.2f},{y:.2f}" for x, y in zip(points[0::2], points[1::2]))
        return f'<polygon {common} points="{pairs}" z_order="0"></polygon>'
    *runs, left, top, right, bottom = (int(v) for v in points)
    return (
        f'<mask {common} rle="{", ".join(map(str, runs))}" left="{left}" top="{top}" '
        f'width="{right - left + 1}" height="{bottom - top + 1}" z_order="0"></mask>'
    )


def _api_shape(element, frame: int | None = None) -> dict:
    """An XML shape element as the API's shape (points as CVAT's importer parses them)."""
    kind = {"box": "rectangle"}.get(element.tag, element.tag)
    if kind == "rectangle":
        points = [float(element.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]
    elif kind == "polygon":
        points = [float(v) for p in element.get("points").split(";") for v in p.split(",")]
    else:
        left, top = int(element.get("left")), int(element.get("top"))
        points = [int(v) for v in element.get("rle").split(",")]
        points += [left, top, left + int(element.get("width")) - 1]
        points += [top + int(element.get("height")) - 1]
    return {
        "type": kind,
        "frame": int(element.get("frame")) if frame is None else frame,
        "points": points,
        "outside": element.get("outside", "0") == "1",
        "occluded": element.get("occluded", "0") == "1",
        "z_order": int(element.get("z_order", 0)),
    }
