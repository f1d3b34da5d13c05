"""The session routes of the engine server: the `Session` verbs over HTTP, propagation jobs.

Each route answers at once; model work is queued on the engine's one worker (`jobs.Engine`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from sam2refine.errors import PromptError
from sam2refine.remote.http import (
    BoxBody,
    FrameBody,
    LockBody,
    MaskBody,
    MaskVolumeBody,
    NewObject,
    ObjectRef,
    PointsBody,
    PropagateBody,
    auth_dependency,
    read_body,
)
from sam2refine.remote.job_routes import job_routes
from sam2refine.remote.jobs import Engine
from sam2refine.remote.wire import (
    decode_mask,
    encode_mask,
    image_from_bytes,
    object_info_to_json,
    slice_result_to_json,
    volume_to_bytes,
)

log = logging.getLogger("sam2refine.remote.server")


def session_routes(engine: Engine, model: Any, token: str | None, max_upload_bytes: int,
                   max_volume_bytes: int) -> APIRouter:
    """Every /sessions route, behind the bearer-token check."""
    from sam2refine.sam.session import Session

    api = APIRouter(dependencies=[Depends(auth_dependency(token))])

    @api.post("/sessions", status_code=201)
    async def open_session(request: Request, axis: str = "axial",
                           intensity: str = "ct") -> dict:
        engine.check_room()
        data = await read_body(request, max_upload_bytes)
        volume = await asyncio.to_thread(image_from_bytes, data, max_volume_bytes)
        session = await asyncio.to_thread(Session, model, volume, axis, intensity)
        record = engine.add(session)
        log.info("Session %s opened: %s, %d %s slices", record.session_id[:6],
                 volume.voxels.shape, session.num_frames, axis)
        return {"session_id": record.session_id, "num_frames": session.num_frames,
                "height": session.stack.height, "width": session.stack.width, "axis": axis,
                "intensity": intensity}

    @api.get("/sessions/{sid}")
    async def describe(sid: str) -> dict:
        record = engine.get(sid)
        infos = await engine.run(record.session.describe)
        return {"session_id": sid, "num_frames": record.session.num_frames,
                "objects": [object_info_to_json(i) for i in infos]}

    @api.delete("/sessions/{sid}")
    async def close_session(sid: str) -> dict:
        engine.remove(sid)
        return {"closed": sid}

    @api.post("/sessions/{sid}/add_object")
    async def add_object(sid: str, body: NewObject) -> dict:
        session = engine.get(sid).session
        return {"obj_id": await engine.run(lambda: session.add_object(body.name, body.obj_id))}

    @api.post("/sessions/{sid}/object")
    async def object_info(sid: str, body: ObjectRef) -> dict:
        session = engine.get(sid).session

        def info() -> dict:
            obj_id = session.object(body.obj).obj_id
            return next(object_info_to_json(i) for i in session.describe() if i.obj_id == obj_id)
        return await engine.run(info)

    @api.post("/sessions/{sid}/remove_object")
    async def remove_object(sid: str, body: ObjectRef) -> dict:
        session = engine.get(sid).session
        await engine.run(lambda: session.remove_object(body.obj))
        return {}

    @api.post("/sessions/{sid}/set_locked")
    async def set_locked(sid: str, body: LockBody) -> dict:
        session = engine.get(sid).session
        await engine.run(lambda: session.set_locked(body.obj, body.locked))
        return {}

    @api.post("/sessions/{sid}/add_points")
    async def add_points(sid: str, body: PointsBody) -> dict:
        session = engine.get(sid).session
        if any(len(p) != 3 for p in body.points):
            raise PromptError("Give each click as one [x, y, z] triple (voxel i, j, k or mm).")
        results = await engine.run(
            lambda: session.add_points(body.obj, body.points, body.labels, body.coords))
        return {"results": [slice_result_to_json(r) for r in results]}

    @api.post("/sessions/{sid}/set_box")
    async def set_box(sid: str, body: BoxBody) -> dict:
        session = engine.get(sid).session
        if len(body.corner_a) != 3 or len(body.corner_b) != 3:
            raise PromptError("Give each box corner as one [x, y, z] triple.")
        return await engine.run(lambda: slice_result_to_json(session.set_box(
            body.obj, body.corner_a, body.corner_b, body.coords, body.frame)))

    @api.post("/sessions/{sid}/set_mask")
    async def set_mask(sid: str, body: MaskBody) -> dict:
        session = engine.get(sid).session
        mask = decode_mask(body.mask)
        return await engine.run(lambda: slice_result_to_json(
            session.set_mask(body.obj, body.frame, mask, body.mode)))

    @api.post("/sessions/{sid}/set_mask_volume")
    async def set_mask_volume(sid: str, body: MaskVolumeBody) -> dict:
        session = engine.get(sid).session
        mask = await asyncio.to_thread(decode_mask, body.mask)
        results = await engine.run(
            lambda: session.set_mask_volume(body.obj, mask, body.frames, body.mode))
        return {"results": [slice_result_to_json(r) for r in results]}

    @api.post("/sessions/{sid}/clear_prompts")
    async def clear_prompts(sid: str, body: FrameBody) -> dict:
        session = engine.get(sid).session
        await engine.run(lambda: session.clear_prompts(body.obj, body.frame))
        return {}

    @api.post("/sessions/{sid}/slice_mask")
    async def slice_mask(sid: str, body: FrameBody) -> dict:
        session = engine.get(sid).session
        return await engine.run(lambda: {"mask": encode_mask(session.slice_mask(body.obj,
                                                                            body.frame))})

    @api.post("/sessions/{sid}/object_mask")
    async def object_mask(sid: str, body: ObjectRef) -> dict:
        session = engine.get(sid).session
        return await engine.run(lambda: {"mask": encode_mask(session.object_mask(body.obj))})

    @api.get("/sessions/{sid}/label_volume")
    async def label_volume(sid: str) -> Response:
        session = engine.get(sid).session
        data = await engine.run(lambda: volume_to_bytes(session.label_volume()))
        return Response(data, media_type="application/x-npz")

    @api.post("/sessions/{sid}/propagate", status_code=202)
    async def propagate(sid: str, body: PropagateBody) -> dict:
        record = engine.get(sid)
        record.session.geometry.frame_range(body.frame_range)  # a bad range: 422 now, no job
        return engine.start_propagation(record, body.objects, body.frame_range).to_json()

    @api.get("/sessions/{sid}/jobs/{job_id}")
    async def job_status(sid: str, job_id: str, after: int | None = None,
                         wait: float = 0.0) -> dict:
        """Job progress; with `after`, wait up to `wait` s (max 30) until more is done."""
        record = engine.get(sid)
        job = engine.job(record, job_id)
        if after is not None and wait > 0:
            await job.wait(after, min(wait, 30.0))
            record.last_used = time.monotonic()
        return job.to_json()

    @api.post("/sessions/{sid}/jobs/{job_id}/cancel")
    async def cancel_job(sid: str, job_id: str) -> dict:
        job = engine.job(engine.get(sid), job_id)
        job.cancel.set()
        return job.to_json()

    job_routes(api, engine, model, max_upload_bytes, max_volume_bytes)  # uploads, verb jobs, auto
    return api
