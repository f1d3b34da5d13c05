"""The engine server over real HTTP on loopback, with the random-init tiny model at 256 px:
binding rules and tokens, upload limits, error answers, jobs (progress, cancel, responsiveness),
concurrent sessions, idle expiry."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import requests

from sam2refine.cli import main as cli
from sam2refine.errors import CancelledError, SAM2RefineError
from sam2refine.remote.client import Client
from sam2refine.remote.server import (
    ServerThread,
    check_bind,
    create_app,
    is_loopback,
    listen,
    serve,
)
from sam2refine.remote.wire import (
    ServerBusyError,
    SessionNotFoundError,
    UploadTooLargeError,
    volume_to_bytes,
)
from sam2refine.sam.session import Session
from tests.conftest import make_phantom


def _open(url: str, volume, headers: dict | None = None) -> requests.Response:
    return requests.post(f"{url}/sessions", data=volume_to_bytes(volume), headers=headers,
                         timeout=30)


def _wait_for(job_url: str, predicate, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(job_url, timeout=30).json()
        if predicate(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job never reached the expected state: {job}")


# ----- binding and tokens ----------------------------------------------------------------------
def test_loopback_addresses_are_recognised():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "example.org"))


def test_listening_socket_is_tcp_so_connections_get_nodelay():
    # asyncio sets TCP_NODELAY only on connections of IPPROTO_TCP sockets; without it every
    # keep-alive request would wait ~40 ms for a delayed ACK.
    with listen("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        with pytest.raises(SAM2RefineError, match="choose another with --port"):
            listen("127.0.0.1", sock.getsockname()[1])


def test_listening_beyond_loopback_needs_a_token(monkeypatch, capsys):
    with pytest.raises(SAM2RefineError, match="without an access token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "a-long-secret")  # accepted with a token
    check_bind("127.0.0.1", None)
    # serve() refuses before it builds any model (this returns at once)
    with pytest.raises(SAM2RefineError, match="--token"):
        serve(host="0.0.0.0", token="")
    monkeypatch.delenv("SAM2REFINE_TOKEN", raising=False)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "without an access token" in capsys.readouterr().err


def test_token_is_required_and_checked(tiny_model):
    app = create_app(tiny_model, token="s3cret-token")
    with ServerThread(app) as url:
        assert requests.get(f"{url}/health", timeout=10).json()["auth"] is True
        volume = make_phantom((3, 24, 28))
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            answer = _open(url, volume, headers)
            assert answer.status_code == 401
            assert answer.json()["type"] == "AuthError"
            assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert requests.get(f"{url}/sessions/x", timeout=10).status_code == 401
        answer = _open(url, volume, {"Authorization": "Bearer s3cret-token"})
        assert answer.status_code == 201
        with pytest.raises(SAM2RefineError, match="access token"):
            Client(url).open_session(volume)
        session = Client(url, token="s3cret-token").open_session(volume)
        assert session.describe() == []
        session.close()


# ----- limits and error answers ----------------------------------------------------------------
def test_oversize_upload_is_refused_with_413(tiny_model):
    volume = make_phantom((3, 24, 28))
    limit = len(volume_to_bytes(volume)) - 1
    with ServerThread(create_app(tiny_model, max_upload_bytes=limit)) as url:
        answer = _open(url, volume)  # declared Content-Length over the limit
        assert answer.status_code == 413
        body = answer.json()
        assert body["type"] == "UploadTooLargeError" and "larger than this server" in body["error"]
        chunked = requests.post(f"{url}/sessions", data=iter([volume_to_bytes(volume)]),
                                timeout=10)  # no Content-Length: counted while reading
        assert chunked.status_code == 413
        with pytest.raises(UploadTooLargeError, match="Crop the volume"):
            Client(url).open_session(volume)  # the client checks before sending
        assert requests.get(f"{url}/health", timeout=10).json()["sessions"] == 0


def test_unknown_session_job_and_endpoint_answer_404(tiny_model):
    with ServerThread(create_app(tiny_model)) as url:
        for method, path in (("GET", "/sessions/nope"), ("DELETE", "/sessions/nope"),
                             ("GET", "/sessions/nope/label_volume")):
            answer = requests.request(method, url + path, timeout=10)
            assert answer.status_code == 404
            assert answer.json()["type"] == "SessionNotFoundError"
            assert "Open the volume again" in answer.json()["error"]
        answer = requests.post(f"{url}/sessions/nope/add_points", timeout=10,
                               json={"obj": 1, "points": [[1, 2, 1]], "labels": [1]})
        assert answer.status_code == 404
        sid = _open(url, make_phantom((3, 24, 28))).json()["session_id"]
        answer = requests.get(f"{url}/sessions/{sid}/jobs/none", timeout=10)
        assert (answer.status_code, answer.json()["type"]) == (404, "JobNotFoundError")
        answer = requests.get(f"{url}/no/such/thing", timeout=10)
        assert answer.status_code == 404 and "No endpoint" in answer.json()["error"]


def test_errors_are_json_never_tracebacks(tiny_model):
    with ServerThread(create_app(tiny_model)) as url:
        bad = requests.post(f"{url}/sessions", data=b"not an npz", timeout=10)
        assert (bad.status_code, bad.json()["type"]) == (422, "RequestError")
        sid = _open(url, make_phantom((3, 24, 28))).json()["session_id"]
        base = f"{url}/sessions/{sid}"
        answer = requests.post(f"{base}/add_points", timeout=10,
                               json={"obj": "liver", "points": [[1, 2, 1]], "labels": [1]})
        assert answer.status_code == 422
        assert answer.json() == {"type": "PromptError", "error": "Unknown object 'liver'; "
                                 "known objects: none. Add it first."}
        answer = requests.post(f"{base}/add_object", json={"nme": "x"}, timeout=10)
        assert (answer.status_code, answer.json()["type"]) == (422, "RequestError")
        assert "name" in answer.json()["error"]
        answer = requests.post(f"{base}/add_points", timeout=10,
                               json={"obj": 1, "points": [[1, 2]], "labels": [1]})
        assert answer.status_code == 422 and "Traceback" not in answer.text


# ----- jobs ------------------------------------------------------------------------------------
def test_health_answers_while_a_propagation_runs(tiny_model):
    with ServerThread(create_app(tiny_model)) as url:
        sid = _open(url, make_phantom((6, 24, 28))).json()["session_id"]
        base = f"{url}/sessions/{sid}"
        assert requests.post(f"{base}/add_object", json={"name": "organ"}, timeout=10).ok
        box = {"obj": 1, "corner_a": [4, 4, 0], "corner_b": [20, 18, 0]}
        assert requests.post(f"{base}/set_box", json=box, timeout=60).ok
        job = requests.post(f"{base}/propagate", json={}, timeout=10)
        assert job.status_code == 202
        job_url = f"{base}/jobs/{job.json()['job_id']}"
        _wait_for(job_url, lambda j: j["state"] == "running" and j["done"] >= 1)
        health = requests.get(f"{url}/health", timeout=10).json()
        assert health["model_busy"] is True
        progress = requests.get(job_url, timeout=10).json()
        # answered while the worker is still busy: health never waits for model work
        assert progress["state"] == "running" and progress["total"] == 5
        requests.post(f"{job_url}/cancel", timeout=10)
        final = _wait_for(job_url, lambda j: j["state"] in ("done", "cancelled", "failed"))
        assert final["state"] == "cancelled" and final["error"]["type"] == "CancelledError"


def test_cancel_stops_propagation_within_one_slice(tiny_model):
    cancel, seen = threading.Event(), []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if done >= 2:
            cancel.set()

    with ServerThread(create_app(tiny_model)) as url:
        session = Client(url).open_session(make_phantom((9, 24, 28)))
        organ = session.add_object("organ")
        session.set_box(organ, (4, 4, 0), (20, 18, 0))
        with pytest.raises(CancelledError, match=r"cancelled after [23] of 8 slices"):
            session.propagate(progress=progress, cancel=cancel)
        assert 2 <= seen[-1][0] <= 3 and seen[-1][1] == 8
        tracked = session.object(organ).tracked_frames
        assert 2 <= len(tracked) <= 3  # finished slices are kept, as in-process
        assert session.propagate() == 8 - len(tracked)  # the rest is still pending


# ----- sessions --------------------------------------------------------------------------------
def _prompt(session, box, click) -> None:
    organ = session.add_object("organ")
    session.set_box(organ, *box)
    session.add_points(organ, [click], [0])


def test_two_concurrent_sessions_do_not_mix(tiny_model):
    cases = [(make_phantom((3, 40, 48), seed=0), ((12, 12, 1), (30, 28, 1)), (20, 20, 1)),
             (make_phantom((3, 36, 44), seed=1), ((6, 8, 2), (22, 30, 2)), (14, 24, 2))]
    references = []
    for volume, box, click in cases:
        session = Session(tiny_model, volume)
        _prompt(session, box, click)
        session.propagate()
        references.append(session.label_volume().voxels)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(index: int, url: str) -> None:
        try:
            volume, box, click = cases[index]
            with Client(url) as client, client.open_session(volume) as session:
                barrier.wait(timeout=30)
                _prompt(session, box, click)
                session.propagate()
                results[index] = session.label_volume().voxels
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with ServerThread(create_app(tiny_model)) as url:
        threads = [threading.Thread(target=run, args=(i, url)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert requests.get(f"{url}/health", timeout=10).json()["sessions"] == 0
    assert not errors, errors
    for index, reference in enumerate(references):
        assert np.array_equal(results[index], reference)
    assert references[0].shape != references[1].shape


def test_idle_sessions_expire(tiny_model):
    with ServerThread(create_app(tiny_model, idle_timeout_s=0.3)) as url:
        client = Client(url)
        session = client.open_session(make_phantom((3, 24, 28)))
        assert session.describe() == []  # using it keeps it alive
        time.sleep(0.8)
        assert client.health()["sessions"] == 0  # reaped without any request for it
        with pytest.raises(SessionNotFoundError, match="expired after 0.3 s"):
            session.describe()
        session.close()  # closing an expired session is not an error


def test_sessions_beyond_the_limit_are_refused_until_one_closes(tiny_model):
    volume = make_phantom((3, 24, 28))
    with ServerThread(create_app(tiny_model, max_sessions=1)) as url:
        client = Client(url)
        first = client.open_session(volume)
        answer = _open(url, volume)
        assert (answer.status_code, answer.json()["type"]) == (503, "ServerBusyError")
        with pytest.raises(ServerBusyError, match="Close a session"):
            client.open_session(volume)
        first.close()
        client.open_session(volume).close()
