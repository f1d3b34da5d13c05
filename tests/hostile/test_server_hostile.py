"""Every server route against bad uploads, bad JSON, unknown sessions, jobs and objects,
concurrency and cancel: each answer is HTTP 4xx with `{"error", "type"}`, the error one line
naming the problem and what to do, never a 500 or a traceback, and the server stays healthy."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest
import requests

from sam2refine.remote.server import ServerThread, create_app
from sam2refine.remote.wire import encode_mask, pack_arrays, volume_to_bytes
from tests.conftest import make_phantom
from tests.hostile.conftest import assert_refusal

VOLUME = make_phantom((4, 24, 28))
SHAPE = VOLUME.voxels.shape  # [k, j, i]


def upload(**change: object) -> bytes:
    """The phantom as an upload, with members replaced (None drops a member)."""
    arrays = {"voxels": VOLUME.voxels, "spacing": np.asarray(VOLUME.spacing),
              "origin": np.asarray(VOLUME.origin), "direction": VOLUME.direction}
    arrays.update(change)
    return pack_arrays({k: v for k, v in arrays.items() if v is not None})


def _pickled() -> bytes:
    out = io.BytesIO()
    np.savez(out, voxels=np.array([object()] * 8, dtype=object).reshape(2, 2, 2),
             spacing=np.ones(3), origin=np.zeros(3), direction=np.eye(3))
    return out.getvalue()


def _bomb(size: int) -> bytes:
    """An .npz whose voxels inflate to `size` bytes (a few KiB on the wire)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (size // 4096, 64, 64)})
        zf.writestr("voxels.npy", header.getvalue() + bytes(size))
        for name, value in (("spacing", np.ones(3)), ("origin", np.zeros(3)),
                            ("direction", np.eye(3))):
            buf = io.BytesIO()
            np.save(buf, value)
            zf.writestr(f"{name}.npy", buf.getvalue())
    return out.getvalue()


@dataclass
class Call:
    id: str
    method: str
    path: str  # {sid}: the open session, {job}: a finished job
    expect: str
    body: object = None  # dict/list: JSON; bytes/str: raw
    status: tuple[int, ...] = (422,)

    def param(self):  # noqa: ANN201
        return pytest.param(self, id=self.id)


S = "/sessions/{sid}"
MASK2D = encode_mask(np.ones((SHAPE[1], SHAPE[2]), bool))


def body(**fields: object) -> dict:
    return {"obj": "organ", **fields}


CALLS = [
    # ----- uploads ---------------------------------------------------------------------------
    Call("upload-garbage", "POST", "/sessions", r"not a valid \.npz", b"not an npz at all"),
    Call("upload-empty", "POST", "/sessions", r"not a valid \.npz", b""),
    Call("upload-no-direction", "POST", "/sessions", r"lacks direction", upload(direction=None)),
    Call("upload-pickle", "POST", "/sessions", r"not a valid \.npz|pickle", _pickled()),
    Call("upload-nan", "POST", "/sessions", r"NaN or infinite",
         upload(voxels=np.where(VOLUME.voxels > 0, np.nan, 1.0))),
    Call("upload-inf", "POST", "/sessions", r"NaN or infinite",
         upload(voxels=np.where(VOLUME.voxels > 0, np.inf, 1.0))),
    Call("upload-zero-spacing", "POST", "/sessions", r"invalid voxel spacing \(0, 1, 1\)",
         upload(spacing=np.array([0.0, 1, 1]))),
    Call("upload-negative-spacing", "POST", "/sessions", r"invalid voxel spacing \(-1, 1, 1\)",
         upload(spacing=np.array([-1.0, 1, 1]))),
    Call("upload-nan-spacing", "POST", "/sessions", r"invalid voxel spacing",
         upload(spacing=np.array([np.nan, 1, 1]))),
    Call("upload-nan-origin", "POST", "/sessions", r"invalid origin",
         upload(origin=np.array([np.nan, 0, 0]))),
    Call("upload-zero-direction", "POST", "/sessions", r"invalid orientation",
         upload(direction=np.zeros((3, 3)))),
    Call("upload-sheared-direction", "POST", "/sessions", r"invalid orientation",
         upload(direction=np.array([[1.0, 1, 0], [0, 1, 0], [0, 0, 1]]))),
    Call("upload-one-slice", "POST", "/sessions", r"single slice",
         upload(voxels=VOLUME.voxels[:1])),
    Call("upload-constant", "POST", "/sessions", r"same value",
         upload(voxels=np.full(SHAPE, 7, np.int16))),
    Call("upload-2d", "POST", "/sessions", r"3D", upload(voxels=VOLUME.voxels[0])),
    Call("upload-4d", "POST", "/sessions", r"3D", upload(voxels=VOLUME.voxels[None])),
    Call("upload-complex", "POST", "/sessions", r"complex",
         upload(voxels=VOLUME.voxels.astype(np.complex64))),
    Call("upload-strings", "POST", "/sessions", r"send integers or floats",
         upload(voxels=np.full(SHAPE, "a"))),
    Call("upload-spacing-two", "POST", "/sessions", r"geometry is malformed",
         upload(spacing=np.ones(2))),
    Call("upload-spacing-text", "POST", "/sessions", r"spacing is <U1; send numbers",
         upload(spacing=np.array(["1", "1", "1"]))),
    Call("upload-bomb", "POST", "/sessions", r"uncompressed; this server accepts at most",
         _bomb(64 << 20), status=(413,)),
    Call("upload-axis-bogus", "POST", "/sessions?axis=diagonal", r"diagonal", upload()),
    Call("upload-intensity-bogus", "POST", "/sessions?intensity=sepia", r"sepia", upload()),
    # ----- sessions, jobs and routes that do not exist ------------------------------------------
    Call("session-unknown", "GET", "/sessions/nope", r"no such session|nope", status=(404,)),
    Call("session-unknown-points", "POST", "/sessions/nope/add_points", r"nope",
         body(points=[[1, 1, 1]], labels=[1]), status=(404,)),
    Call("session-unknown-delete", "DELETE", "/sessions/nope", r"nope", status=(404,)),
    Call("job-unknown", "GET", S + "/jobs/nojob", r"nojob", status=(404,)),
    Call("job-cancel-unknown", "POST", S + "/jobs/nojob/cancel", r"nojob", status=(404,)),
    Call("job-wait-words", "GET", S + "/jobs/{job}?after=1&wait=soon", r"wait"),
    Call("job-after-words", "GET", S + "/jobs/{job}?after=x", r"after"),
    Call("route-unknown", "POST", S + "/add_clicks", r"No endpoint POST", body(),
         status=(404,)),
    Call("route-wrong-method", "GET", S + "/add_points", r"No endpoint GET", status=(405,)),
    # ----- JSON bodies -------------------------------------------------------------------------
    Call("body-not-json", "POST", S + "/add_object", r"not valid JSON", "{name: organ"),
    Call("body-list", "POST", S + "/add_object", r"valid dictionary|JSON object", [1, 2]),
    Call("body-missing", "POST", S + "/add_object", r"missing|required"),
    Call("body-deep", "POST", S + "/add_object", r"cannot be parsed", "[" * 50000 + "]" * 50000,
         status=(400,)),
    Call("body-bad-utf8", "POST", S + "/add_object", r"cannot be parsed",
         b'{"name": "\xff\xfe"}', status=(400,)),
    Call("object-misspelt-name", "POST", S + "/add_object", r"nmae: unknown key \(did you "
         "mean 'name'\\?\\)", {"nmae": "x"}),
    Call("object-name-number", "POST", S + "/add_object", r"name: input should be a valid "
         "string", {"name": 5}),
    Call("object-id-text", "POST", S + "/add_object", r"obj_id: input should be a valid "
         "integer", {"name": "x", "obj_id": "5"}),
    Call("object-id-zero", "POST", S + "/add_object", r"outside 1\.\.65535",
         {"name": "x", "obj_id": 0}),
    Call("object-id-huge", "POST", S + "/add_object", r"outside 1\.\.65535",
         {"name": "x", "obj_id": 70000}),
    Call("object-name-taken", "POST", S + "/add_object", r"already exists", {"name": "organ"}),
    Call("object-unknown", "POST", S + "/object", r"Unknown object 'liver'", {"obj": "liver"}),
    Call("object-ref-float", "POST", S + "/object", r"obj", {"obj": 1.5}),
    Call("object-remove-unknown", "POST", S + "/remove_object", r"Unknown object 99",
         {"obj": 99}),
    Call("lock-yes", "POST", S + "/set_locked", r"locked: input should be a valid boolean",
         body(locked="yes")),
    Call("points-nan", "POST", S + "/add_points", r"number|finite|NaN",
         '{"obj": "organ", "points": [[NaN, 1, 1]], "labels": [1]}'),
    Call("points-label-two", "POST", S + "/add_points", r"1 \(include\) or 0 \(exclude\)",
         body(points=[[5, 5, 1]], labels=[2])),
    Call("points-label-count", "POST", S + "/add_points", r"one label per point",
         body(points=[[5, 5, 1], [6, 6, 1]], labels=[1])),
    Call("points-text", "POST", S + "/add_points", r"points\.0\.1|points\[0\]\[1\]",
         body(points=[[5, "5", 1]], labels=[1])),
    Call("points-bool", "POST", S + "/add_points", r"valid number", body(points=[[True, 5, 1]],
                                                                         labels=[1])),
    Call("points-label-bool", "POST", S + "/add_points", r"labels\[0\]: input should be a "
         "valid integer", body(points=[[5, 5, 1]], labels=[True])),
    Call("points-two-numbers", "POST", S + "/add_points", r"\[x, y, z\]",
         body(points=[[5, 5]], labels=[1])),
    Call("points-coords-xyz", "POST", S + "/add_points", r"xyz",
         body(points=[[5, 5, 1]], labels=[1], coords="xyz")),
    Call("points-outside", "POST", S + "/add_points", r"outside the volume",
         body(points=[[500, 5, 1]], labels=[1])),
    Call("points-misspelt", "POST", S + "/add_points", r"point: unknown key \(did you mean "
         "'points'\\?\\)", body(point=[[5, 5, 1]], labels=[1])),
    Call("box-zero-area", "POST", S + "/set_box", r"zero area",
         body(corner_a=[5, 5, 1], corner_b=[5, 9, 1])),
    Call("box-frame-far", "POST", S + "/set_box", r"Slice 999 is outside the volume",
         body(corner_a=[5, 5, 1], corner_b=[9, 9, 1], frame=999)),
    Call("box-four-numbers", "POST", S + "/set_box", r"\[x, y, z\]|corner",
         body(corner_a=[5, 5, 1, 1], corner_b=[9, 9, 1])),
    Call("box-frame-text", "POST", S + "/set_box", r"frame: input should be a valid integer",
         body(corner_a=[5, 5, 1], corner_b=[9, 9, 1], frame="2")),
    Call("mask-not-base64", "POST", S + "/set_mask", r"Malformed mask",
         body(frame=1, mask={**MASK2D, "data": "%%%"})),
    Call("mask-wrong-shape", "POST", S + "/set_mask", r"Mask prompt has shape \(5, 5\)",
         body(frame=1, mask=encode_mask(np.ones((5, 5), bool)))),
    Call("mask-mode-bogus", "POST", S + "/set_mask", r"Unknown mask mode 'bogus'",
         body(frame=1, mask=MASK2D, mode="bogus")),
    Call("mask-frame-negative", "POST", S + "/set_mask", r"Slice -1 is outside",
         body(frame=-1, mask=MASK2D)),
    Call("mask-missing", "POST", S + "/set_mask", r"mask is missing", body(frame=1)),
    Call("mask-volume-frames-far", "POST", S + "/set_mask_volume", r"Slice 999 is outside",
         body(mask=encode_mask(np.ones(SHAPE, bool)), frames=[999])),
    Call("mask-volume-shape", "POST", S + "/set_mask_volume", r"Mask volume has shape",
         body(mask=encode_mask(np.ones((2, 2, 2), bool)))),
    Call("mask-volume-negative-shape", "POST", S + "/set_mask_volume", r"Malformed mask",
         body(mask={**MASK2D, "shape": [-1, 4, 4]})),
    Call("mask-volume-huge", "POST", S + "/set_mask_volume", r"larger than allowed",
         body(mask={**MASK2D, "shape": [1 << 20, 1 << 20, 1 << 20]}), status=(413,)),
    Call("clear-frame-text", "POST", S + "/clear_prompts", r"frame: input should be a valid "
         "integer", body(frame="x")),
    Call("slice-mask-far", "POST", S + "/slice_mask", r"Slice 999 is outside",
         body(frame=999)),
    Call("object-mask-unknown", "POST", S + "/object_mask", r"Unknown object 'nope'",
         {"obj": "nope"}),
    Call("propagate-reversed", "POST", S + "/propagate", r"Slice range 3\.\.1 is empty",
         {"frame_range": [3, 1]}),
    Call("propagate-past-end", "POST", S + "/propagate", r"Slice 999 is outside",
         {"frame_range": [0, 999]}),
    Call("propagate-objects-string", "POST", S + "/propagate", r"objects: input should be a "
         "valid list", {"objects": "organ"}),
    Call("propagate-misspelt", "POST", S + "/propagate", r"frames: unknown key \(did you mean "
         "'frame_range'\\?\\)|did you mean", {"frames": [0, 1]}),
]


@pytest.fixture(scope="module")
def server(tiny_model):
    """A server with one open session holding an object "organ", and one finished job."""
    app = create_app(tiny_model, max_upload_bytes=64 << 20, max_volume_bytes=32 << 20,
                     max_sessions=3)
    with ServerThread(app) as url:
        http = requests.Session()
        opened = http.post(f"{url}/sessions", data=volume_to_bytes(VOLUME), timeout=60)
        assert opened.status_code == 201, opened.text
        sid = opened.json()["session_id"]
        assert http.post(f"{url}/sessions/{sid}/add_object", json={"name": "organ"},
                         timeout=60).status_code == 200
        job = http.post(f"{url}/sessions/{sid}/propagate", json={}, timeout=60).json()
        deadline = time.monotonic() + 60
        while http.get(f"{url}/sessions/{sid}/jobs/{job['job_id']}",
                       timeout=30).json()["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield url, http, sid, job["job_id"]


def check_answer(answer: requests.Response, status: tuple[int, ...], expect: str) -> dict:
    assert answer.status_code in status, (answer.status_code, answer.text[:500])
    assert 400 <= answer.status_code < 500
    data = answer.json()
    assert set(data) == {"error", "type"}, data
    assert_refusal(data["error"], expect)
    return data


@pytest.mark.parametrize("call", [c.param() for c in CALLS])
def test_server_refuses_with_4xx_and_one_line(call: Call, server):
    url, http, sid, job = server
    path = call.path.format(sid=sid, job=job)
    kwargs: dict = {"timeout": 60}
    if isinstance(call.body, dict | list):
        kwargs["json"] = call.body
    elif isinstance(call.body, str):
        kwargs["data"] = call.body.encode()
        kwargs["headers"] = {"Content-Type": "application/json"}
    elif isinstance(call.body, bytes):
        kwargs["data"] = call.body
        if call.path.startswith(S):
            kwargs["headers"] = {"Content-Type": "application/json"}
    answer = http.request(call.method, url + path, **kwargs)
    check_answer(answer, call.status, call.expect)
    health = http.get(f"{url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["sessions"] == 1  # no half-open session left


def test_the_server_suite_is_big_enough():
    assert len(CALLS) >= 60 and len({c.id for c in CALLS}) == len(CALLS)


# ----- concurrency, cancel, limits, tokens ------------------------------------------------------
def test_a_full_server_and_a_declared_oversize_upload_are_refused(tiny_model):
    app = create_app(tiny_model, max_upload_bytes=1 << 20, max_sessions=1)
    with ServerThread(app) as url:
        assert requests.post(f"{url}/sessions", data=volume_to_bytes(VOLUME),
                             timeout=60).status_code == 201
        busy = requests.post(f"{url}/sessions", data=volume_to_bytes(VOLUME), timeout=60)
        # 503: the server is at capacity (not the client's mistake); one line all the same
        assert busy.status_code == 503
        assert_refusal(busy.json()["error"], r"Close a session")
        big = requests.post(f"{url}/sessions", data=b"\0" * (2 << 20), timeout=60)
        check_answer(big, (413,), r"larger than this server accepts")


def test_token_errors_are_one_line(tiny_model):
    with ServerThread(create_app(tiny_model, token="s3cret-token-123")) as url:
        check_answer(requests.get(f"{url}/sessions/x", timeout=30), (401,),
                     r"needs its access token")
        check_answer(requests.get(f"{url}/sessions/x", timeout=30,
                                  headers={"Authorization": "Bearer wrong"}), (401,),
                     r"Wrong access token")


def test_concurrent_requests_and_cancel_never_break_a_session(tiny_model):
    """Prompts, cancels and closes arriving together: every answer is 2xx or a 4xx error,
    the cancelled job says so, and a closed session is gone for everyone."""
    with ServerThread(create_app(tiny_model, max_sessions=4)) as url:
        sid = requests.post(f"{url}/sessions", data=volume_to_bytes(make_phantom((8, 24, 28))),
                            timeout=60).json()["session_id"]
        base = f"{url}/sessions/{sid}"
        requests.post(f"{base}/add_object", json={"name": "organ"}, timeout=60)
        requests.post(f"{base}/add_points", json=body(points=[[10, 12, 3]], labels=[1]),
                      timeout=60)
        job = requests.post(f"{base}/propagate", json={}, timeout=60).json()
        answers: list[requests.Response] = []

        def hammer(payload: dict) -> None:
            for _ in range(3):
                answers.append(requests.post(f"{base}/add_points", json=payload, timeout=60))

        threads = [threading.Thread(target=hammer, args=(p,)) for p in (
            body(points=[[10, 12, 4]], labels=[1]), body(points=[[999, 1, 1]], labels=[1]),
            body(points=[[1, 1, 1]], labels=[7]))]
        for t in threads:
            t.start()
        cancel = requests.post(f"{base}/jobs/{job['job_id']}/cancel", timeout=60)
        again = requests.post(f"{base}/jobs/{job['job_id']}/cancel", timeout=60)
        for t in threads:
            t.join()
        assert cancel.status_code == again.status_code == 200
        for answer in answers:
            assert answer.status_code in (200, 409, 422), answer.text
            if answer.status_code != 200:
                assert_refusal(answer.json()["error"], r".")
        deadline = time.monotonic() + 60
        while (state := requests.get(f"{base}/jobs/{job['job_id']}", timeout=30).json())[
                "state"] not in ("done", "cancelled", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state["state"] in ("done", "cancelled")
        assert requests.delete(base, timeout=30).status_code == 200
        gone = requests.post(f"{base}/add_points", json=body(points=[[1, 1, 1]], labels=[1]),
                             timeout=30)
        check_answer(gone, (404,), r"session")
        assert json.loads(requests.get(f"{url}/health", timeout=30).text)["sessions"] == 0
