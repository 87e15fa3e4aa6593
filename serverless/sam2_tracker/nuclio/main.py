"""Nuclio entry point of the SAM 2 tracker function (CVAT's serverless convention)."""

from __future__ import annotations

import json
from http import HTTPStatus

from model_handler import ModelHandler
from tracking.protocol import RequestError


def init_context(context) -> None:
    """Load SAM 2 once per worker; configured by environment (see README)."""
    context.logger.info("Init context...  0%")
    model_handler = ModelHandler.from_env(logger=context.logger)
    context.user_data.model_handler = model_handler
    context.logger.info(model_handler.describe())
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
    model_handler = context.user_data.model_handler
    try:
        result = model_handler.infer(event.body)
    except RequestError as error:
        # CVAT shows users the status code only (it replaces the body): the log line is
        # where an admin reads why.
        phrase = HTTPStatus(error.status).phrase
        context.logger.info(f"answered {error.status} {phrase}: {error.message}")
        return _json_response(context, {"error": error.message}, error.status)
    except Exception as error:  # the worker must survive anything
        context.logger.error(f"answered 500, tracking failed: {error!r}")
        return _json_response(context, {"error": f"internal error: {error}"}, 500)
    context.logger.info(model_handler.last_call.describe())
    return _json_response(context, result, 200)
