"""A stand-in for Nuclio's Python runtime wrapper, for tests (Nuclio's processor cannot
run here).

It sets up logging and calls the function exactly as Nuclio's wrapper (processor
1.14, ``_nuclio_wrapper.py``) does: one ``nuclio_sdk.Logger`` (logger name
``nuclio_sdk``, level DEBUG) whose only handler is first human-readable on stdout and
then, once the processor's socket is connected, JSON lines on that socket; the
handler module imported by name from the working directory (the function folder);
``init_context(context)`` once; then one event at a time, the body decoded to a
dict only for the exact content type ``application/json``. Here the "socket" is a
file (``--socket-file``) that receives the same JSON log lines and one ``r<json>``
line per response, as the processor's socket would.

Usage: python nuclio_runner.py --handler main:handler --socket-file OUT --events IN
(``IN``: one JSON object per line, ``{"content_type": ..., "body": <text>}``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import nuclio_sdk
import nuclio_sdk.json_encoder
import nuclio_sdk.logger


def decode_body(body: str, content_type: str) -> object:
    """As the wrapper's ``Event.decode_body``: JSON only for exactly application/json."""
    if content_type == "application/json":
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            pass
    return body.encode()


def run_function(
    folder: Path, env: dict[str, str], bodies: list[dict], workdir: Path
) -> tuple[list[str], list[dict], str]:
    """Run the function in ``folder`` under this runner (a fresh process, as a new Nuclio
    worker) on JSON ``bodies``: (log messages, responses, what was printed beside the
    socket). ``workdir`` holds the events and socket files."""
    events, socket_file = workdir / "events.jsonl", workdir / "socket"
    events.write_text(
        "".join(
            json.dumps({"content_type": "application/json", "body": json.dumps(body)}) + "\n"
            for body in bodies
        )
    )
    result = subprocess.run(
        [sys.executable, __file__, "--handler", "main:handler",
         "--socket-file", str(socket_file), "--events", str(events)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    logs, responses = [], []
    for line in socket_file.read_text().splitlines():
        if line.startswith("r"):
            responses.append(json.loads(line[1:]))
        else:
            logs.append(json.loads(line)["message"])
    return logs, responses, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--handler", required=True)
    parser.add_argument("--socket-file", required=True)
    parser.add_argument("--events", required=True)
    args = parser.parse_args()

    # Before the socket exists, log lines go to stdout, human-readable.
    logger = nuclio_sdk.Logger(logging.DEBUG)
    logger.set_handler("default", sys.stdout, nuclio_sdk.logger.HumanReadableFormatter())
    sys.path.insert(0, ".")  # the processor runs the wrapper in the function's folder
    module_name, entrypoint_name = args.handler.split(":")
    with open(args.socket_file, "w") as socket_file:
        logger.set_handler("default", socket_file, nuclio_sdk.logger.JSONFormatter())
        module = importlib.import_module(module_name)
        entrypoint = getattr(module, entrypoint_name)
        context = nuclio_sdk.Context(logger, None, "0", None)
        if hasattr(module, "init_context"):
            module.init_context(context)
        encoder = nuclio_sdk.json_encoder.Encoder()
        with open(args.events) as events:
            for line in events:
                spec = json.loads(line)
                event = nuclio_sdk.Event(
                    body=decode_body(spec["body"], spec["content_type"]),
                    content_type=spec["content_type"],
                    method="POST",
                    path="/",
                )
                output = entrypoint(context, event)
                response = nuclio_sdk.Response.from_entrypoint_output(encoder.encode, output)
                socket_file.write("r" + encoder.encode(response) + "\n")
                socket_file.flush()


if __name__ == "__main__":
    main()
