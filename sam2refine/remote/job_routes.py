"""Server routes for clients that must never wait on a request (Slicer's main thread).

Every route here answers at once; the work becomes a job the client polls with short
requests (`remote.stepwise` is that client):

- `POST /uploads`, `PUT /uploads/{id}` (one chunk each), `DELETE /uploads/{id}`: a volume or a
  file sent in pieces, so no single request carries a whole CT.
- `POST /uploads/{id}/session`: a session on an uploaded volume, opened as a job
  (`GET /jobs/{job}` reports it).
- `POST /sessions/{sid}/jobs` `{"verb": "add_points", "args": {...}}`: any session verb
  (same body and answer as its own route) queued as a job of that session.
- `POST /sessions/{sid}/auto`: the automatic pipeline on the session, seeded by an uploaded
  prompt-generator checkpoint or label file; progress and cancel like propagation; its
  answer holds every stage's labels and the proposal boxes (`wire.auto_result_to_json`).

Session jobs are kept with the session's propagation jobs, so `GET /sessions/{sid}/jobs/{job}`
and its `/cancel` serve them, and a session with a running job never expires.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
import time
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from sam2refine.errors import CancelledError, SAM2RefineError
from sam2refine.remote.http import read_body
from sam2refine.remote.jobs import Engine, Job, SessionRecord
from sam2refine.remote.wire import (
    JobNotFoundError,
    RequestError,
    UploadTooLargeError,
    auto_result_to_json,
    error_body,
    volume_from_bytes,
)

log = logging.getLogger("sam2refine.remote.server")
_KEEP_FINISHED = 8
_NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class VerbJobBody(BaseModel):
    verb: str
    args: dict[str, Any] = {}


class AutoBody(BaseModel):
    source_upload: str  # the prompt-generator checkpoint or label file, uploaded
    source_name: str  # its file name (the suffix says which kind it is)
    names: dict[int, str] | None = None  # label value -> organ name, for label files
    organs: list[str] | None = None
    stages: int = 2
    margin: int = 3


class TaskJob(Job):
    """A job that also says whether cancelling it does anything (a prompt cannot be stopped
    half-way; propagation and Auto-segment stop between slices)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cancellable: bool) -> None:
        super().__init__(secrets.token_urlsafe(8), loop)
        self.cancellable = cancellable

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "cancellable": self.cancellable}


class Upload:
    """Bytes received so far for one upload, bounded by the server's upload limit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.last_used = time.monotonic()

    def append(self, data: bytes) -> None:
        if self.size + len(data) > self.max_bytes:
            raise UploadTooLargeError(
                f"The upload ({(self.size + len(data)) / 2**20:.1f} MiB, or more) is larger "
                f"than this server accepts ({self.max_bytes / 2**20:.1f} MiB). Crop the volume "
                "to the region to segment, or restart the server with a higher limit.")
        self.chunks.append(data)
        self.size += len(data)
        self.last_used = time.monotonic()

    def data(self) -> bytes:
        return b"".join(self.chunks)


def verb_endpoints(api: APIRouter) -> dict[str, tuple[Callable[..., Awaitable[dict]], type]]:
    """The POST /sessions/{sid}/<verb> routes of `api` that take a JSON body: verb -> (its
    endpoint, its body model). A verb job calls the endpoint itself, so it answers exactly
    what the route answers and checks exactly what the route checks."""
    found = {}
    prefix = "/sessions/{sid}/"
    for route in api.routes:
        if not (isinstance(route, APIRoute) and "POST" in route.methods
                and route.path.startswith(prefix)):
            continue
        verb = route.path[len(prefix):]
        if "/" in verb or route.status_code == 202:  # propagate starts a job of its own
            continue
        body = typing.get_type_hints(route.endpoint).get("body")
        if not (isinstance(body, type) and issubclass(body, BaseModel)):
            continue
        found[verb] = (route.endpoint, body)
    return found


def job_routes(api: APIRouter, engine: Engine, model: Any, max_upload_bytes: int,
               max_volume_bytes: int) -> None:
    """Add the upload, session-opening, verb-job and auto routes to the session router."""
    verbs = verb_endpoints(api)
    uploads: dict[str, Upload] = {}
    loose_jobs: dict[str, TaskJob] = {}  # session openings: no session to keep them yet
    running: set[asyncio.Task] = set()

    def expire() -> None:
        now = time.monotonic()
        for uid in [u for u, up in uploads.items() if now - up.last_used > engine.idle_timeout_s]:
            del uploads[uid]
        finished = [j for j in loose_jobs.values() if j.finished]
        for old in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del loose_jobs[old.job_id]

    def upload(uid: str) -> Upload:
        expire()
        found = uploads.get(uid)
        if found is None:
            raise RequestError(f"No upload '{uid}' on this server (finished, expired after "
                               f"{engine.idle_timeout_s:g} s, or the server restarted); send "
                               "it again.")
        return found

    def session_job(record: SessionRecord, cancellable: bool) -> TaskJob:
        job = TaskJob(asyncio.get_running_loop(), cancellable)
        finished = [j for j in record.jobs.values() if j.finished]
        for old in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del record.jobs[old.job_id]
        record.jobs[job.job_id] = job
        return job

    def in_background(job: TaskJob, work: Callable[[], Awaitable[Any]],
                      record: SessionRecord | None = None) -> None:
        async def run() -> None:
            job.update(state="running")
            try:
                result = await work()
            except CancelledError as exc:
                job.update(state="cancelled", error=error_body(exc))
            except SAM2RefineError as exc:
                job.update(state="failed", error=error_body(exc))
            except Exception as exc:  # reported to the client as ServerError, logged here
                log.exception("Job %s failed", job.job_id)
                job.update(state="failed", error={
                    "error": f"The engine failed inside the server ({type(exc).__name__}); "
                             "see the server log.", "type": "ServerError"})
            else:
                job.update(state="done", result=result, done=max(job.done, job.total),
                           total=max(job.total, 1))
            finally:
                if record is not None:
                    record.last_used = time.monotonic()
        task = asyncio.create_task(run())
        running.add(task)
        task.add_done_callback(running.discard)

    @api.post("/uploads", status_code=201)
    async def new_upload() -> dict:
        expire()
        uid = secrets.token_urlsafe(12)
        uploads[uid] = Upload(max_upload_bytes)
        return {"upload_id": uid, "max_bytes": max_upload_bytes}

    @api.put("/uploads/{uid}")
    async def add_chunk(uid: str, request: Request) -> dict:
        found = upload(uid)
        found.append(await read_body(request, max_upload_bytes))
        return {"upload_id": uid, "received": found.size}

    @api.delete("/uploads/{uid}")
    async def drop_upload(uid: str) -> dict:
        uploads.pop(uid, None)
        return {"dropped": uid}

    @api.post("/uploads/{uid}/session", status_code=202)
    async def open_session(uid: str, axis: str = "axial", intensity: str = "ct") -> dict:
        from sam2refine.sam.session import Session

        engine.check_room()
        data = upload(uid).data()
        del uploads[uid]
        job = TaskJob(asyncio.get_running_loop(), cancellable=False)
        loose_jobs[job.job_id] = job

        async def work() -> dict:
            volume = await asyncio.to_thread(volume_from_bytes, data, max_volume_bytes)
            session = await asyncio.to_thread(Session, model, volume, axis, intensity)
            record = engine.add(session)
            log.info("Session %s opened: %s, %d %s slices", record.session_id[:6],
                     volume.voxels.shape, session.num_frames, axis)
            return {"session_id": record.session_id, "num_frames": session.num_frames,
                    "height": session.stack.height, "width": session.stack.width,
                    "axis": axis, "intensity": intensity}
        in_background(job, work)
        return job.to_json()

    @api.get("/jobs/{job_id}")
    async def loose_job(job_id: str) -> dict:
        expire()
        job = loose_jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"No job '{job_id}' on this server (finished jobs are kept "
                                   f"for the last {_KEEP_FINISHED} only).")
        return job.to_json()

    @api.post("/sessions/{sid}/jobs", status_code=202)
    async def verb_job(sid: str, body: VerbJobBody) -> dict:
        record = engine.get(sid)
        if body.verb not in verbs:
            raise RequestError(f"'{body.verb}' is not a session verb this server runs as a job; "
                               f"it runs {', '.join(sorted(verbs))}.")
        endpoint, model_class = verbs[body.verb]
        try:
            args = model_class.model_validate(body.args)
        except ValidationError as exc:
            parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                     for e in exc.errors()[:5]]
            raise RequestError(f"Malformed '{body.verb}' arguments: " + "; ".join(parts) +
                               ". Check that the client and server versions match.") from None
        job = session_job(record, cancellable=False)
        in_background(job, lambda: endpoint(sid=sid, body=args), record)
        return job.to_json()

    @api.post("/sessions/{sid}/auto", status_code=202)
    async def auto(sid: str, body: AutoBody) -> dict:
        record = engine.get(sid)
        name = Path(body.source_name).name
        if not name or not set(name) <= _NAME_CHARACTERS:
            raise RequestError(f"Give the prompt source's file name (letters, digits, '.', '_', "
                               f"'-'), not {body.source_name!r}.")
        data = upload(body.source_upload).data()
        del uploads[body.source_upload]
        job = session_job(record, cancellable=True)

        def segment() -> dict:
            from sam2refine.auto.pipeline import auto_segment

            with tempfile.TemporaryDirectory(prefix="sam2refine-auto-") as folder:
                path = Path(folder) / name
                path.write_bytes(data)
                result = auto_segment(
                    record.session, None, path, organs=body.organs, stages=body.stages,
                    margin=body.margin, names=body.names,
                    progress=lambda d, t: job.update(done=d, total=t), cancel=job.cancel)
            return auto_result_to_json(result)
        in_background(job, lambda: engine.run(segment), record)
        return job.to_json()
