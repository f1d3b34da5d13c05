"""HTTP plumbing of the engine server: request bodies, the bearer check, the upload limit,
and error answers (`{"error": message, "type": class name}`, never a traceback)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from sam2refine.errors import SAM2RefineError
from sam2refine.remote.wire import (
    AuthError,
    RequestError,
    UploadTooLargeError,
    error_body,
    status_for,
)
from sam2refine.sam.prompts_schema import StrictModel, describe_errors

log = logging.getLogger("sam2refine.remote.server")
# Bodies are checked as data like the prompts file (`sam.prompts_schema`): unknown keys are
# refused with the nearest known one and numbers are never taken from strings or booleans.
# What a `Session` checks itself (finite coordinates, labels 0/1, slices in range, modes)
# is left to it, so a remote session answers exactly what a local one raises.
ObjRef = StrictInt | StrictStr  # an object id (int) or name (str), as in Session
Triple = list[StrictFloat]


class NewObject(StrictModel):
    name: StrictStr
    obj_id: StrictInt | None = None


class ObjectRef(StrictModel):
    obj: ObjRef


class LockBody(ObjectRef):
    locked: StrictBool = True


class PointsBody(ObjectRef):
    points: list[Triple]
    labels: list[StrictInt]
    coords: StrictStr = "ijk"


class BoxBody(ObjectRef):
    corner_a: Triple
    corner_b: Triple
    coords: StrictStr = "ijk"
    frame: StrictInt | None = None


class FrameBody(ObjectRef):
    frame: StrictInt


class MaskBody(FrameBody):
    mask: dict[str, Any]
    mode: StrictStr = "refine"


class MaskVolumeBody(ObjectRef):
    mask: dict[str, Any]
    frames: list[StrictInt] | None = None
    mode: StrictStr = "refine"


class PropagateBody(StrictModel):
    objects: list[ObjRef] | None = None
    frame_range: tuple[StrictInt, StrictInt] | None = None


# The body model of each route, by the last part of its path (for "did you mean" hints).
BODY_MODELS: dict[str, type[StrictModel]] = {
    "add_object": NewObject, "object": ObjectRef, "remove_object": ObjectRef,
    "set_locked": LockBody, "add_points": PointsBody, "set_box": BoxBody,
    "set_mask": MaskBody, "set_mask_volume": MaskVolumeBody, "clear_prompts": FrameBody,
    "slice_mask": FrameBody, "object_mask": ObjectRef, "propagate": PropagateBody,
}


# ----- checks and errors --------------------------------------------------------------------
def auth_dependency(token: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency that checks the bearer token (constant-time) when one is configured."""
    expected = token.encode() if token else None

    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if expected is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 expected):
            raise AuthError(
                "This server needs its access token: send 'Authorization: Bearer <token>' "
                "(in Slicer, enter the token the server was started with)."
                if not authorization else "Wrong access token for this server; use the token "
                "it was started with (--token or $SAM2REFINE_TOKEN)."
            )
    return check


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, read in chunks and refused as soon as it passes `max_bytes`."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> UploadTooLargeError:
    return UploadTooLargeError(
        f"The upload ({size / 2**20:.1f} MiB, or more) is larger than this server accepts "
        f"({max_bytes / 2**20:.1f} MiB). Crop the volume to the region to segment, or restart "
        "the server with a higher limit."
    )


class BodyLimit:
    """ASGI middleware: refuse a declared Content-Length over the limit before reading it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            size = int(length) if length.isdigit() else 0
            if size > self.max_bytes:
                exc = _too_large(size, self.max_bytes)
                await JSONResponse(error_body(exc), 413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def add_error_handlers(app: FastAPI) -> None:
    """Engine errors -> 4xx `{"error", "type"}`; anything else -> 500 without a traceback."""

    @app.exception_handler(SAM2RefineError)
    async def engine_error(_: Request, exc: SAM2RefineError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return JSONResponse(error_body(exc), status_for(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{**e, "loc": tuple(e.get("loc", ()))[1:]} if tuple(e.get("loc", ()))[:1] in (
            ("body",), ("query",)) else e for e in exc.errors()]
        model = BODY_MODELS.get(request.url.path.rstrip("/").rsplit("/", 1)[-1])
        error = RequestError(f"Malformed request to {request.url.path}: "
                             f"{describe_errors(errors, model, exc.body)}. Check the request, "
                             "and that the client and server versions match.")
        return JSONResponse(error_body(error), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            message = (f"No endpoint {request.method} {request.url.path} on this server; "
                       "check the URL and that the client and server versions match.")
        elif exc.status_code == 400:
            message = (f"The request body of {request.url.path} cannot be parsed ({exc.detail}; "
                       "malformed or too deeply nested JSON, or not UTF-8); send JSON as the "
                       "client does.")
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(RequestError(message)), exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("Unexpected error in %s %s", request.method, request.url.path,
                  exc_info=exc)
        return JSONResponse({"error": f"Internal error in the server ({type(exc).__name__}); "
                                      "see the server log.", "type": "ServerError"}, 500)
