"""The remote client: same verbs and results as the in-process Session (bit-identical masks
with the same model), error mapping, unreachable servers, and importing without torch."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sam2refine.errors import PromptError
from sam2refine.remote.client import Client
from sam2refine.remote.server import ServerThread, create_app, listen
from sam2refine.remote.wire import RequestError, ServerError, decode_mask, encode_mask
from sam2refine.sam.session import Session
from tests.conftest import make_phantom

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server_url(tiny_model):
    with ServerThread(create_app(tiny_model)) as url:
        yield url


def _same_result(a, b) -> None:
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for one, other in zip(a, b):
            _same_result(one, other)
        return
    assert (a.obj_id, a.frame) == (b.obj_id, b.frame)
    assert a.object_score == b.object_score
    assert a.mask.dtype == b.mask.dtype == bool and np.array_equal(a.mask, b.mask)


def test_remote_session_matches_the_in_process_session(tiny_model, server_url):
    volume = make_phantom((5, 40, 48))
    local = Session(tiny_model, volume)
    client = Client(server_url)
    remote = client.open_session(volume)
    assert remote.num_frames == local.num_frames and remote.stack == local.stack
    assert remote.volume is volume

    def both(verb: str, *args, **kwargs):
        return getattr(local, verb)(*args, **kwargs), getattr(remote, verb)(*args, **kwargs)

    assert both("add_object", "organ") == (1, 1)
    assert both("add_object", "body", obj_id=np.int64(7)) == (7, 7)
    _same_result(*both("set_box", "organ", (12, 12, 2), (30, 28, 2)))
    _same_result(*both("add_points", np.int32(1), np.array([[20.0, 22.0, 2.0]]), [0]))
    body_mask = np.zeros(volume.voxels.shape, bool)
    body_mask[1:4, 4:36, 6:42] = True
    for a, b in zip(*both("set_mask_volume", 7, body_mask, frames=[3], mode="exact")):
        _same_result(a, b)
    assert both("propagate", frame_range=(0, 3)) == (6, 6)
    progress: list[tuple[int, int]] = []
    assert remote.propagate(progress=lambda d, t: progress.append((d, t))) == 2
    assert local.propagate() == 2
    assert progress[-1] == (2, 2)
    _same_result(*both("add_points", "organ", [[18, 20, 4]], [1]))  # a correction
    a, b = both("propagate")
    assert a == b
    a, b = both("label_volume")
    assert np.any(b.voxels == 7) and np.array_equal(a.voxels, b.voxels)
    both("clear_prompts", 7, 3)
    a, b = both("propagate", ["body"])
    assert a == b
    both("set_locked", "body", True)
    local_info, remote_info = both("describe")
    assert remote_info == local_info
    assert remote.object("body") == local_info[1] and remote.object(1) == local_info[0]
    for frame in range(volume.voxels.shape[0]):
        a, b = both("slice_mask", "organ", frame)
        assert b.dtype == bool and np.array_equal(a, b)
    a, b = both("object_mask", 7)
    assert b.shape == volume.voxels.shape and np.array_equal(a, b)
    a, b = both("label_volume")
    assert b.voxels.dtype == a.voxels.dtype and np.array_equal(a.voxels, b.voxels)
    assert b.same_geometry(volume) and np.any(b.voxels == 1)
    both("remove_object", "body")
    assert remote.describe() == local.describe()
    remote.close()


def test_errors_come_back_as_engine_errors_with_the_servers_message(tiny_model, server_url):
    volume = make_phantom((3, 24, 28))
    local = Session(tiny_model, volume)
    with Client(server_url).open_session(volume) as remote:
        for session in (local, remote):
            session.add_object("organ")
        for call in (lambda s: s.add_points("liver", [[1, 1, 1]], [1]),
                     lambda s: s.add_points("organ", [[1, 1, 1], [2, 2, 2]], [1]),
                     lambda s: s.add_points("organ", [[1, float("nan"), 1]], [1]),
                     lambda s: s.set_box("organ", (0, 0, 0), (99, 5, 0)),
                     lambda s: s.set_mask("organ", 1, np.ones((5, 5), bool)),
                     lambda s: s.add_object("organ")):
            with pytest.raises(PromptError) as expected:
                call(local)
            with pytest.raises(PromptError) as got:
                call(remote)
            assert str(got.value) == str(expected.value)
        with pytest.raises(PromptError, match=r"\[x, y, z\] numbers"):
            remote.add_points("organ", [["a", 1, 1]], [1])


def test_unreachable_server_says_where_and_what_to_do():
    with listen("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]  # a port nobody listens on once the socket closes
    client = Client(f"http://127.0.0.1:{port}/", timeout=5)
    with pytest.raises(ServerError, match=rf"127.0.0.1:{port}.*sam2refine serve"):
        client.health()


def test_a_server_that_is_not_the_engine_is_named_as_such():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server naming)
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"<html>nothing here</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ServerError, match="does not look like a SAM2Refine engine"):
            Client(url).health()
    finally:
        server.shutdown()
        server.server_close()


def test_masks_travel_as_packed_bits():
    rng = np.random.default_rng(0)
    for shape in ((0,), (7, 13), (3, 5, 9), (1, 512, 512)):
        mask = rng.random(shape) > 0.5
        payload = encode_mask(mask)
        assert payload["shape"] == list(shape) and payload["dtype"] == "bool"
        assert np.array_equal(decode_mask(payload), mask)
    wrong = dict(encode_mask(np.ones((4, 4), bool)), shape=[4, 5])
    with pytest.raises(RequestError, match="Malformed mask"):
        decode_mask(wrong)


_NO_TORCH_CLIENT = """
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, BlockTorch())
from sam2refine.remote.client import Client, RemoteSession
print("client imported", flush=True)
import tests.conftest  # imports torch: must fail, showing the blocker works
"""

_NO_TORCH_SESSION = """
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, BlockTorch())
import numpy as np
from sam2refine.remote.client import Client
from sam2refine.image.volume import Volume

rng = np.random.default_rng(0)
voxels = np.where(rng.random((3, 24, 28)) > 0.5, 100, -100).astype(np.int16)
volume = Volume(voxels, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
with Client(sys.argv[1]) as client, client.open_session(volume) as session:
    organ = session.add_object("organ")
    first = session.set_box(organ, (4, 4, 1), (20, 18, 1))
    done = session.propagate(frame_range=(1, 2))
    labels = session.label_volume()
assert "torch" not in sys.modules
assert first.mask.shape == (24, 28) and done == 1
assert labels.voxels.shape == voxels.shape and labels.same_geometry(volume)
print("remote ok without torch")
"""


def test_client_needs_no_torch(server_url):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    blocked = subprocess.run([sys.executable, "-c", _NO_TORCH_CLIENT], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert blocked.stdout.strip() == "client imported"  # the client imports without torch ...
    assert "torch is blocked in this test" in blocked.stderr  # ... and torch was really blocked
    run = subprocess.run([sys.executable, "-c", _NO_TORCH_SESSION, server_url], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "remote ok without torch" in run.stdout
