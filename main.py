"""Nuclio entry point of the SAM 2 tracker function (CVAT's serverless convention)."""

from __future__ import annotations

import json

from model_handler import ModelHandler
from tracking.protocol import RequestError


def init_context(context) -> None:
    """Load SAM 2 once per worker; configured by environment (see README)."""
    context.logger.info("Init context...  0%")
    context.user_data.model_handler = ModelHandler.from_env()
    context.logger.info("Init context...100%")


def _json_response(context, payload: dict, status: int):
    return context.Response(
        body=json.dumps(payload),
        headers={},
        content_type="application/json",
        status_code=status,
    )


def handler(context, event):
    """One tracker call: JSON in, ``{"shapes", "states"}`` or ``{"error"}`` out."""
    try:
        result = context.user_data.model_handler.infer(event.body)
    except RequestError as error:
        context.logger.info(f"rejected request ({error.status}): {error.message}")
        return _json_response(context, {"error": error.message}, error.status)
    except Exception as error:  # the worker must survive anything
        context.logger.error(f"tracking failed: {error!r}")
        return _json_response(context, {"error": f"internal error: {error}"}, 500)
    return _json_response(context, result, 200)
