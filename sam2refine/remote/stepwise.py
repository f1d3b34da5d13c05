"""Driving the engine server without ever waiting on it (torch-free, like the client).

Every call here is one short request that the server answers at once: work becomes a server
job (`remote.job_routes`), and the caller polls it. So a UI thread can drive an upload, a
prompt, a propagation or Auto-segment from a timer, a few milliseconds per tick; Slicer's main
thread works this way (its module's `SAM2RefineLib.tasks`). Scripts keep the blocking verbs of
`RemoteSession`.

    upload = Upload(client, volume_chunks(volume))
    while not upload.step(): ...                     # one chunk per tick
    opening = open_session_job(client, upload.upload_id, volume)
    while not opening.poll_finished(): ...           # one GET per tick
    jobs = SessionJobs(opening.result())
    job = jobs.add_points(liver, [[77, 57, 24]], [1])
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sam2refine.errors import SAM2RefineError
from sam2refine.image.slicing import slice_stack
from sam2refine.image.volume import Volume
from sam2refine.remote.client import Client, RemoteSession, _ref, _triple
from sam2refine.remote.wire import (
    API_VERSION,
    AutoOutcome,
    ServerError,
    auto_result_from_json,
    decode_mask,
    encode_mask,
    error_from_body,
    object_info_from_json,
    slice_result_from_json,
)

TERMINAL = ("done", "cancelled", "failed")
RAW_CHUNK_BYTES = 4 << 20  # voxels compressed per step (~20 ms at deflate level 1)
SEND_BYTES = 1 << 20  # bytes per upload request


def _identity(value: Any) -> Any:
    return value


class RemoteJob:
    """A job on the server: `poll()` asks how it is doing (one short GET), `cancel()` stops it
    when it can be stopped, `result()` is its answer once finished (or raises its error)."""

    def __init__(self, client: Client, path: str, status: dict[str, Any],
                 decode: Callable[[Any], Any] = _identity) -> None:
        self.client = client
        self.path = path
        self.status = status
        self._decode = decode

    @property
    def state(self) -> str:
        return str(self.status["state"])

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def progress(self) -> tuple[int, int]:
        return int(self.status.get("done") or 0), int(self.status.get("total") or 0)

    @property
    def cancellable(self) -> bool:
        return bool(self.status.get("cancellable", True))

    def poll(self) -> dict[str, Any]:
        """The job's state now (no waiting on the server side)."""
        if not self.finished:
            self.status = self.client.request("GET", self.path).json()
        return self.status

    def poll_finished(self) -> bool:
        return self.poll()["state"] in TERMINAL

    def cancel(self) -> bool:
        """Ask the server to stop the job between slices; False when it cannot be stopped."""
        if self.finished or not self.cancellable:
            return False
        self.status = self.client.request("POST", self.path + "/cancel").json()
        return True

    def result(self) -> Any:
        """The decoded answer of a finished job; a cancelled or failed job raises its error."""
        if self.state == "done":
            return self._decode(self.status["result"])
        if self.finished:
            raise error_from_body(self.status.get("error"), 409 if self.state == "cancelled"
                                  else 500)
        raise SAM2RefineError(f"The job at {self.path} is still {self.state}.")

    def wait(self, poll_s: float = 0.05, timeout: float | None = None) -> Any:
        """Block until finished (scripts, tests), then `result()`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll_finished():
            if deadline is not None and time.monotonic() > deadline:
                raise ServerError(f"The job at {self.path} did not finish within {timeout:g} s.")
            time.sleep(poll_s)
        return self.result()


def check_server(client: Client) -> dict[str, Any]:
    """The server's health answer, refusing a server that speaks another API version."""
    status = client.health()
    if status.get("api") != API_VERSION:
        raise ServerError(
            f"The engine at {client.url} speaks API version {status.get('api')}; this client "
            f"needs version {API_VERSION}. Update the extension or the server so they match.")
    return status


# ----- uploads -------------------------------------------------------------------------------
class _Sink(io.RawIOBase):
    """An unseekable stream that hands out what was written to it (zipfile then writes data
    descriptors, so an archive can be produced and sent piece by piece)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(self._parts[-1])

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def volume_chunks(volume: Volume, raw_chunk_bytes: int = RAW_CHUNK_BYTES) -> Iterator[bytes]:
    """The `.npz` body `wire.volume_to_bytes` makes, produced a slab of voxels at a time (each
    `next()` compresses at most `raw_chunk_bytes` of voxels; a piece may be empty)."""
    voxels = volume.voxels.astype(np.uint8) if volume.voxels.dtype == bool else volume.voxels
    arrays = {"voxels": np.ascontiguousarray(voxels),
              "spacing": np.asarray(volume.spacing, np.float64),
              "origin": np.asarray(volume.origin, np.float64),
              "direction": np.asarray(volume.direction, np.float64)}
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                header = np.lib.format.header_data_from_array_1_0(array)
                np.lib.format.write_array_header_2_0(member, header)
                flat = array.reshape(-1)
                step = max(1, raw_chunk_bytes // max(1, array.itemsize))
                for start in range(0, flat.size, step):
                    member.write(flat[start:start + step].tobytes())
                    yield sink.take()
    yield sink.take()


def file_chunks(path: str | Path, chunk_bytes: int = SEND_BYTES) -> Iterator[bytes]:
    """A file's bytes, a chunk per `next()`."""
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            yield chunk


class Upload:
    """Bytes sent to the server in pieces: each `step()` makes or sends one piece (at most one
    request); `upload_id` names the finished upload for the route that uses it."""

    def __init__(self, client: Client, chunks: Iterable[bytes],
                 total_bytes: int | None = None) -> None:
        self.client = client
        self.upload_id: str | None = None
        self.sent = 0
        self.total_bytes = total_bytes
        self._chunks = iter(chunks)
        self._pending = bytearray()
        self._exhausted = False
        self.done = False

    def step(self) -> bool:
        """Advance by one piece; True once everything is on the server."""
        if self.done:
            return True
        if self.upload_id is None:
            self.upload_id = self.client.request("POST", "/uploads").json()["upload_id"]
            return False
        if not self._exhausted:
            piece = next(self._chunks, None)
            if piece is None:
                self._exhausted = True
            else:
                self._pending += piece
        if self._pending and (self._exhausted or len(self._pending) >= SEND_BYTES):
            self.client.request("PUT", f"/uploads/{self.upload_id}", data=bytes(self._pending),
                                headers={"Content-Type": "application/octet-stream"})
            self.sent += len(self._pending)
            self._pending.clear()
        self.done = self._exhausted and not self._pending
        return self.done

    def discard(self) -> None:
        """Drop a partial upload on the server (cancelled by the user)."""
        if self.upload_id is not None and not self.done:
            self.client.request("DELETE", f"/uploads/{self.upload_id}")


def open_session_job(client: Client, upload_id: str, volume: Volume, axis: str = "axial",
                     intensity: str = "ct") -> RemoteJob:
    """Open a session on an uploaded volume; the job's result is the `RemoteSession`."""
    stack = slice_stack(volume, axis)  # checks the axis before the server does any work
    status = client.request("POST", f"/uploads/{upload_id}/session",
                            params={"axis": axis, "intensity": intensity}).json()
    return RemoteJob(client, f"/jobs/{status['job_id']}", status,
                     lambda info: RemoteSession(client, info["session_id"], volume, stack))


# ----- session verbs as jobs -----------------------------------------------------------------
def _slice_results(answer: dict) -> list:
    return [slice_result_from_json(r) for r in answer["results"]]


class SessionJobs:
    """The verbs of a `RemoteSession`, each started as a server job (one short request) whose
    `result()` is what the blocking verb returns."""

    def __init__(self, session: RemoteSession) -> None:
        self.session = session
        self.client = session.client
        self._path = f"/sessions/{session.session_id}"

    def verb(self, verb: str, args: dict[str, Any],
             decode: Callable[[Any], Any] = _identity) -> RemoteJob:
        status = self.client.request("POST", self._path + "/jobs",
                                     json={"verb": verb, "args": args}).json()
        return RemoteJob(self.client, f"{self._path}/jobs/{status['job_id']}", status, decode)

    def add_object(self, name: str, obj_id: int | None = None) -> RemoteJob:
        return self.verb("add_object", {"name": name, "obj_id": obj_id},
                         lambda answer: int(answer["obj_id"]))

    def object(self, obj: int | str) -> RemoteJob:
        return self.verb("object", {"obj": _ref(obj)}, object_info_from_json)

    def remove_object(self, obj: int | str) -> RemoteJob:
        return self.verb("remove_object", {"obj": _ref(obj)})

    def set_locked(self, obj: int | str, locked: bool = True) -> RemoteJob:
        return self.verb("set_locked", {"obj": _ref(obj), "locked": bool(locked)})

    def add_points(self, obj: int | str, points: Iterable[Iterable[float]],
                   labels: Iterable[int], coords: str = "ijk") -> RemoteJob:
        return self.verb("add_points", {
            "obj": _ref(obj), "points": [_triple(p) for p in points],
            "labels": [int(v) for v in labels], "coords": coords}, _slice_results)

    def set_box(self, obj: int | str, corner_a: Iterable[float], corner_b: Iterable[float],
                coords: str = "ijk", frame: int | None = None) -> RemoteJob:
        return self.verb("set_box", {
            "obj": _ref(obj), "corner_a": _triple(corner_a), "corner_b": _triple(corner_b),
            "coords": coords, "frame": None if frame is None else int(frame)},
            slice_result_from_json)

    def set_mask(self, obj: int | str, frame: int, mask: np.ndarray,
                 mode: str = "refine") -> RemoteJob:
        return self.verb("set_mask", {"obj": _ref(obj), "frame": int(frame),
                                      "mask": encode_mask(mask), "mode": mode},
                         slice_result_from_json)

    def set_mask_volume(self, obj: int | str, mask: np.ndarray,
                        frames: Iterable[int] | None = None, mode: str = "refine") -> RemoteJob:
        return self.verb("set_mask_volume", {
            "obj": _ref(obj), "mask": encode_mask(mask), "mode": mode,
            "frames": None if frames is None else [int(f) for f in frames]}, _slice_results)

    def clear_prompts(self, obj: int | str, frame: int) -> RemoteJob:
        return self.verb("clear_prompts", {"obj": _ref(obj), "frame": int(frame)})

    def object_mask(self, obj: int | str) -> RemoteJob:
        return self.verb("object_mask", {"obj": _ref(obj)},
                         lambda answer: decode_mask(answer["mask"]))

    def propagate(self, objects: Iterable[int | str] | None = None,
                  frame_range: tuple[int, int] | None = None) -> RemoteJob:
        """Propagation (cancellable between slices; the result is the slices run)."""
        body = {"objects": None if objects is None else [_ref(o) for o in objects],
                "frame_range": None if frame_range is None else [int(f) for f in frame_range]}
        status = self.client.request("POST", self._path + "/propagate", json=body).json()
        return RemoteJob(self.client, f"{self._path}/jobs/{status['job_id']}", status, int)

    def auto_segment(self, upload_id: str, source_name: str,
                     names: dict[int, str] | None = None, organs: list[str] | None = None,
                     stages: int = 2, margin: int = 3) -> RemoteJob:
        """Auto-segment seeded by an uploaded prompt-generator checkpoint or label file named
        `source_name`; cancellable; the result is an `AutoOutcome`."""
        body = {"source_upload": upload_id, "source_name": Path(source_name).name,
                "names": None if names is None else {int(k): str(v) for k, v in names.items()},
                "organs": None if organs is None else [str(o) for o in organs],
                "stages": int(stages), "margin": int(margin)}
        status = self.client.request("POST", self._path + "/auto", json=body).json()
        return RemoteJob(self.client, f"{self._path}/jobs/{status['job_id']}", status,
                         _auto_outcome)


def _auto_outcome(answer: dict) -> AutoOutcome:
    return auto_result_from_json(answer)
