"""Client of the engine server (`sam2refine serve`), without PyTorch.

`RemoteSession` has the verbs, arguments and return types of `sam2refine.sam.session.Session`,
so Slicer's remote mode runs the same code against a server on this or another machine:

    client = Client("http://127.0.0.1:8000", token=None)
    with client.open_session(volume, axis="axial", intensity="ct") as session:
        liver = session.add_object("liver")
        first = session.set_box(liver, (44, 27, 24), (104, 81, 24))   # SliceResult
        session.propagate(progress=print, cancel=cancel_event)
        labels = session.label_volume()                               # Volume
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import requests

from sam2refine.errors import PromptError, SAM2RefineError
from sam2refine.image.slicing import SliceStack, slice_stack
from sam2refine.image.volume import Volume
from sam2refine.remote.wire import (
    API_VERSION,
    ServerError,
    SessionNotFoundError,
    UploadTooLargeError,
    decode_mask,
    encode_mask,
    error_from_body,
    object_info_from_json,
    slice_result_from_json,
    volume_from_bytes,
    volume_to_bytes,
)
from sam2refine.sam.results import ObjectInfo, SliceResult

Progress = Callable[[int, int], None]
_TERMINAL = ("done", "cancelled", "failed")
_NO_LIMIT = 1 << 62


class Client:
    """A connection to one engine server; `timeout` (s) bounds each request's wait."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0,
                 upload_timeout: float = 1800.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self._http = requests.Session()
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (the server's sessions stay until closed or expired)."""
        self._http.close()

    def health(self) -> dict[str, Any]:
        """The server's status: API version, model input size, device, open sessions."""
        return self.request("GET", "/health").json()

    def open_session(self, volume: Volume, axis: str = "axial",
                     intensity: str = "ct") -> RemoteSession:
        """Upload `volume` once and open a session on it (see `Session` for the arguments)."""
        stack = slice_stack(volume, axis)  # checks the axis before anything is sent
        status = self.health()
        if status.get("api") != API_VERSION:
            raise ServerError(
                f"The engine at {self.url} speaks API version {status.get('api')}; this client "
                f"needs version {API_VERSION}. Update the extension or the server so they match."
            )
        data = volume_to_bytes(volume)
        limit = int(status.get("max_upload_bytes") or _NO_LIMIT)
        if len(data) > limit:
            raise UploadTooLargeError(
                f"The volume is {len(data) / 2**20:.1f} MiB compressed; the engine at {self.url} "
                f"accepts at most {limit / 2**20:.1f} MiB. Crop the volume to the region to "
                "segment, or restart the server with a higher limit."
            )
        info = self.request("POST", "/sessions", data=data, params={
            "axis": axis, "intensity": intensity}, timeout=self.upload_timeout,
            headers={"Content-Type": "application/x-npz"}).json()
        return RemoteSession(self, info["session_id"], volume, stack)

    def request(self, method: str, path: str, timeout: float | None = None,
                **kwargs: Any) -> requests.Response:
        """One HTTP request; failures become engine errors with the server's message."""
        try:
            response = self._http.request(method, self.url + path,
                                          timeout=timeout or self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise ServerError(
                f"The engine at {self.url} did not answer within {timeout or self.timeout:g} s. "
                "It may be busy with another propagation; try again, or restart it."
            ) from exc
        except requests.RequestException as exc:
            raise ServerError(
                f"Cannot reach the SAM2Refine engine at {self.url} ({type(exc).__name__}). "
                "Start it with `sam2refine serve`, or check the URL and that the server runs."
            ) from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not (isinstance(body, dict) and "type" in body):
                raise ServerError(
                    f"{self.url} answered HTTP {response.status_code} and does not look like a "
                    "SAM2Refine engine; check the URL (is `sam2refine serve` running there?)."
                )
            raise error_from_body(body, response.status_code)
        return response


class RemoteSession:
    """A server-side `Session`, driven over HTTP; same verbs and results as `Session`."""

    def __init__(self, client: Client, session_id: str, volume: Volume,
                 stack: SliceStack) -> None:
        self.client = client
        self.session_id = session_id
        self.volume = volume
        self.stack = stack
        self._path = f"/sessions/{session_id}"

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def num_frames(self) -> int:
        return self.stack.num_frames

    def close(self) -> None:
        """Free the session on the server (no error if it has already expired)."""
        with contextlib.suppress(SessionNotFoundError):
            self.client.request("DELETE", self._path)

    # ----- objects -------------------------------------------------------------------------
    def add_object(self, name: str, obj_id: int | None = None) -> int:
        """Create an object; its id is its label value in the output (1, 2, ... by default)."""
        body = {"name": name, "obj_id": None if obj_id is None else int(obj_id)}
        return int(self._post("add_object", body)["obj_id"])

    def object(self, obj: int | str) -> ObjectInfo:
        """Look up an object by id or name (its summary; the SAM 2 state stays remote)."""
        return object_info_from_json(self._post("object", {"obj": _ref(obj)}))

    def describe(self) -> list[ObjectInfo]:
        """Plain summary of every object."""
        answer = self.client.request("GET", self._path).json()
        return [object_info_from_json(o) for o in answer["objects"]]

    def remove_object(self, obj: int | str) -> None:
        self._post("remove_object", {"obj": _ref(obj)})

    def set_locked(self, obj: int | str, locked: bool = True) -> None:
        """A locked object is never re-propagated and wins every overlap in the label volume."""
        self._post("set_locked", {"obj": _ref(obj), "locked": bool(locked)})

    # ----- prompts -------------------------------------------------------------------------
    def add_points(self, obj: int | str, points: Iterable[Iterable[float]],
                   labels: Iterable[int], coords: str = "ijk") -> list[SliceResult]:
        """Add positive (1) / negative (0) clicks in voxel, mm or slice coordinates; one
        result per slice they fall on."""
        body = {"obj": _ref(obj), "points": [_triple(p) for p in points],
                "labels": [int(v) for v in labels], "coords": coords}
        return [slice_result_from_json(r) for r in self._post("add_points", body)["results"]]

    def set_box(self, obj: int | str, corner_a: Iterable[float], corner_b: Iterable[float],
                coords: str = "ijk", frame: int | None = None) -> SliceResult:
        """Set the box on one slice from two opposite corners (voxel centres, mm or slice)."""
        body = {"obj": _ref(obj), "corner_a": _triple(corner_a), "corner_b": _triple(corner_b),
                "coords": coords, "frame": None if frame is None else int(frame)}
        return slice_result_from_json(self._post("set_box", body))

    def set_mask(self, obj: int | str, frame: int, mask: np.ndarray,
                 mode: str = "refine") -> SliceResult:
        """Prompt with a 2D mask (H, W) on `frame`, replacing that slice's other prompts."""
        body = {"obj": _ref(obj), "frame": int(frame), "mask": encode_mask(mask), "mode": mode}
        return slice_result_from_json(self._post("set_mask", body))

    def set_mask_volume(self, obj: int | str, mask: np.ndarray,
                        frames: Iterable[int] | None = None,
                        mode: str = "refine") -> list[SliceResult]:
        """Prompt with a 3D mask on the image grid, on `frames` or where it is largest."""
        body = {"obj": _ref(obj), "mask": encode_mask(mask), "mode": mode,
                "frames": None if frames is None else [int(f) for f in frames]}
        answer = self._post("set_mask_volume", body)
        return [slice_result_from_json(r) for r in answer["results"]]

    def clear_prompts(self, obj: int | str, frame: int) -> None:
        """Forget the prompts of `obj` on `frame`; the next propagate() fills the slice again."""
        self._post("clear_prompts", {"obj": _ref(obj), "frame": int(frame)})

    # ----- propagation ---------------------------------------------------------------------
    def propagate(self, objects: Iterable[int | str] | None = None,
                  frame_range: tuple[int, int] | None = None, progress: Progress | None = None,
                  cancel: threading.Event | None = None, *, poll_s: float = 0.25) -> int:
        """Run propagation on the server and wait for it; returns the slices run.

        `progress(done, total)` is called as the server reports slices; setting `cancel`
        stops the server between slices and raises `CancelledError` (finished slices are
        kept, as in-process). `poll_s` bounds how late a cancel from another thread is sent.
        """
        body = {"objects": None if objects is None else [_ref(o) for o in objects],
                "frame_range": None if frame_range is None else [int(f) for f in frame_range]}
        job = self._post("propagate", body)
        path = f"{self._path}/jobs/{job['job_id']}"
        reported, cancel_sent = 0, False
        try:
            while True:
                if progress is not None and job["done"] > reported:
                    reported = job["done"]
                    progress(job["done"], job["total"])
                if cancel is not None and cancel.is_set() and not cancel_sent:
                    job, cancel_sent = self.client.request("POST", path + "/cancel").json(), True
                if job["state"] in _TERMINAL:
                    break
                job = self.client.request("GET", path, params={"after": job["done"],
                                                               "wait": poll_s}).json()
        except BaseException:
            if job["state"] not in _TERMINAL:  # e.g. Ctrl+C in the client: stop the server too
                with contextlib.suppress(SAM2RefineError):
                    self.client.request("POST", path + "/cancel")
            raise
        if job["state"] != "done":
            raise error_from_body(job["error"], 500)
        return int(job["result"])

    # ----- results -------------------------------------------------------------------------
    def slice_mask(self, obj: int | str, frame: int) -> np.ndarray:
        """An object's own mask on one slice (H, W); empty where it has no result."""
        return decode_mask(self._post("slice_mask", {"obj": _ref(obj), "frame": int(frame)})[
            "mask"])

    def object_mask(self, obj: int | str) -> np.ndarray:
        """An object's own mask on the whole volume, [k, j, i] bool (overlaps not resolved)."""
        return decode_mask(self._post("object_mask", {"obj": _ref(obj)})["mask"])

    def label_volume(self) -> Volume:
        """One label per voxel on the image grid (overlaps resolved by the server)."""
        data = self.client.request("GET", self._path + "/label_volume").content
        return volume_from_bytes(data, _NO_LIMIT)

    def _post(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.request("POST", f"{self._path}/{verb}", json=body).json()


def _ref(obj: int | str) -> int | str:
    """An object id or name as JSON keeps it apart (numpy integers become ints)."""
    return obj if isinstance(obj, str) else int(obj)


def _triple(point: Iterable[float]) -> list[float]:
    """A position as JSON can carry it; non-numbers are refused here as the session would."""
    try:
        values = [float(v) for v in point]
    except (TypeError, ValueError) as exc:
        raise PromptError(
            f"Give positions as [x, y, z] numbers (voxel i, j, k or mm); got {point!r}."
        ) from exc
    if not all(math.isfinite(v) for v in values):
        raise PromptError(f"Prompt point {values} has a coordinate that is not a finite number "
                          "(NaN or infinity); give numbers on the image.")
    return values
