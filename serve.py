"""Serve the function locally the way Nuclio's HTTP trigger presents it.

``POST /`` with a JSON body calls ``main.handler``; ``GET /`` answers once the
model is loaded. Configured by the same environment as the Nuclio function, plus
``PORT`` (default 8080) and ``HOST`` (default 127.0.0.1). Calls are handled one at
a time on the main thread, like one Nuclio worker (a call that arrives meanwhile
waits; PyTorch's CPU kernels also run measurably slower from a secondary thread).
"""

from __future__ import annotations

import json
import logging
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

import main
import nuclio_sdk
from tracking.model_loading import ModelSetupError

DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024  # as function.yaml's maxRequestBodySize


def make_context() -> nuclio_sdk.Context:
    # Nuclio's logger propagates to the root logger configured in run().
    return nuclio_sdk.Context(logger=nuclio_sdk.Logger(logging.INFO, "sam2-tracker"))


def decode_body(raw: bytes, content_type: str) -> object:
    """As Nuclio does: JSON bodies become objects, anything else stays bytes."""
    if content_type.split(";")[0].strip() == "application/json":
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return raw
    return raw


def make_server(host: str, port: int, context, max_body_bytes: int) -> HTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            # One connection per call, so a kept-alive client cannot hold the worker.
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(200, b'{"status": "ready"}', "application/json")

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > max_body_bytes:
                self.close_connection = True
                message = {"error": f"request body must be 0 to {max_body_bytes} bytes"}
                self._send(413, json.dumps(message).encode(), "application/json")
                return
            raw = self.rfile.read(length)
            event = nuclio_sdk.Event(
                body=decode_body(raw, self.headers.get("Content-Type", "")),
                content_type=self.headers.get("Content-Type"),
                headers=dict(self.headers),
                method="POST",
                path=self.path,
                size=length,
            )
            response = main.handler(context, event)
            body = response.body if isinstance(response.body, bytes) else response.body.encode()
            self._send(response.status_code, body, response.content_type)

        def log_message(self, format: str, *args) -> None:
            pass  # one line per frame would drown the log; errors are logged by main.handler

    return HTTPServer((host, port), Handler)


def run() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    context = make_context()
    try:
        main.init_context(context)
    except ModelSetupError as error:
        raise SystemExit(f"cannot start: {error}") from None
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    max_body = int(os.environ.get("SAM2_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES)
    server = make_server(host, port, context, max_body)
    context.logger.info(f"serving on http://{host}:{port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    run()
