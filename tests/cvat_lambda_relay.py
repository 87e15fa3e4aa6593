"""CVAT's lambda endpoint in front of the function, for the UI plugin's browser test, and the
test page the browser opens.

A real CVAT server cannot run in CI. This answers as CVAT 2.73's lambda manager does for a
tracker function (``cvat/apps/lambda_manager/views.py``, tracker branch, as the shared
notes describe it): ``GET /api/lambda/functions`` lists the function (``kind``,
``supported_shape_types``); ``POST /api/lambda/functions/{id}`` with ``{frame, job, task,
shapes?, states?}`` checks that ``frame`` lies in the job (400), reads that frame itself
(the browser never uploads images), unsigns the states (400 on a bad or old signature),
sends the function ``{image, shapes, states}`` (no ``states``: a start, states empty; no
``shapes``: a continuation, shapes padded with nulls; both: both as sent, a null state
as null; every shape's ``type`` is read first: without one CVAT fails with a 500, an
undeclared one is a 400), signs the
returned states, and relays a non-2xx answer with its status and CVAT's own text instead
of the function's body (``"404 Client Error: Not Found for url: ..."``).

Faults for tests (``control``): statuses to answer instead of the next calls, and a call
after which every state in the function's Redis is gone (expired). It also serves the
browser page (``/``), its script and the plugin's script, and records every call.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.cvat_signing import StateSigner

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>plugin test page</title>
<script src="/page.js" defer></script>
<script src="/plugin.js" defer></script>
</head><body></body></html>
"""


@dataclass
class LambdaRelay:
    """One task of ``frames`` (absolute frame numbers = indices) with one job, and one
    tracker function at ``function_url``."""

    frames: list[Path]
    function_url: str
    function: dict  # as CVAT lists it
    job: dict  # the page's job: id, taskId, startFrame, stopFrame, width, height, annotations
    page_script: Path
    plugin_script: Path
    redis_client: object = None
    signer: StateSigner = field(default_factory=StateSigner)
    calls: list[dict] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    expire_on_call: int | None = None  # the n-th call (1-based) finds every state expired

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def sign(self, state: object) -> str:
        return self.signer.sign(state)

    def unsign(self, signed: object) -> object:
        return self.signer.unsign(signed)

    # -- the tracker call ----------------------------------------------------------------

    def call(self, function_id: str, body: dict) -> tuple[int, bytes, str]:
        """(status, body, content type) for one POST /api/lambda/functions/{id}."""
        with self._lock:
            self.calls.append(body)
            number = len(self.calls)
            failure = self.fail_next.pop(0) if self.fail_next else None
        if function_id != self.function["id"]:
            return 404, b'{"detail": "Not found."}', "application/json"
        frame = body.get("frame")
        if not isinstance(frame, int) or not (
            self.job["startFrame"] <= frame <= self.job["stopFrame"]
        ):
            return 400, b'{"detail": "frame is outside the job"}', "application/json"
        if failure is not None:
            return self._client_error(failure)
        if number == self.expire_on_call and self.redis_client is not None:
            keys = list(self.redis_client.scan_iter())
            if keys:
                self.redis_client.delete(*keys)
        try:
            states = [None if s is None else self.unsign(s) for s in body.get("states") or []]
        except ValueError:
            return 400, b'{"detail": "invalid state signature"}', "application/json"
        shapes = body.get("shapes")
        for shape in shapes or []:
            # CVAT's prepare_shape reads every non-null shape's type (a KeyError: its 500)
            # and refuses types the function does not declare.
            if shape is not None and "type" not in shape:
                return 500, b'"KeyError: type"', "application/json"
            if shape is not None and shape["type"] not in self.function["supported_shape_types"]:
                return 400, b'{"detail": "unsupported shape type"}', "application/json"
        if "states" not in body:
            states = []
        if "shapes" not in body:
            shapes = [None] * len(states)
        image = base64.b64encode(self.frames[frame].read_bytes()).decode()
        request = urllib.request.Request(
            self.function_url,
            json.dumps({"image": image, "shapes": shapes, "states": states}).encode(),
            {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            return self._client_error(error.code)
        answer["states"] = [self.sign(state) for state in answer.get("states", [])]
        return 200, json.dumps(answer).encode(), "application/json"

    def _client_error(self, status: int) -> tuple[int, bytes, str]:
        # CVAT raises for the function's status and answers with requests' message.
        kind = "Client" if status < 500 else "Server"
        reason = HTTPStatus(status).phrase
        text = f"{status} {kind} Error: {reason} for url: {self.function_url}"
        return status, json.dumps(text).encode(), "application/json"

    # -- the server ----------------------------------------------------------------------

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                files = {
                    "/page.js": relay.page_script,
                    "/plugin.js": relay.plugin_script,
                }
                if self.path == "/":
                    self._send(200, PAGE.encode(), "text/html")
                elif self.path in files:
                    self._send(200, files[self.path].read_bytes(), "text/javascript")
                elif self.path == "/job.json":
                    self._send(200, json.dumps(relay.job).encode(), "application/json")
                elif self.path == "/api/lambda/functions":
                    self._send(200, json.dumps([relay.function]).encode(), "application/json")
                else:
                    self._send(404, b'{"detail": "Not found."}', "application/json")

            def do_POST(self) -> None:
                prefix = "/api/lambda/functions/"
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.startswith(prefix):
                    self._send(404, b'{"detail": "Not found."}', "application/json")
                    return
                self._send(*relay.call(self.path[len(prefix) :], body))

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"
