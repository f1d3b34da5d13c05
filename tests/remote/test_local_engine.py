"""The engine as a child process (`remote.local_engine`): started at a free port with a random
token, reached through the client, its death turned into one line, and stopped with its
parent, even when the parent dies without saying so. Real `sam2refine serve` processes with
the random-init tiny checkpoint at 256 px."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sam2refine.remote.client import Client
from sam2refine.remote.local_engine import (
    EngineSettings,
    EngineStoppedError,
    LocalEngine,
    engine_code_folder,
)
from sam2refine.remote.wire import AuthError
from tests.conftest import TEST_IMAGE_SIZE, make_phantom


def _settings(checkpoint) -> EngineSettings:
    return EngineSettings(checkpoint=str(checkpoint), image_size=TEST_IMAGE_SIZE, device="cpu")


def _exited(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def engine(tiny_checkpoint, tmp_path):
    engine = LocalEngine(_settings(tiny_checkpoint), log_path=tmp_path / "engine.log")
    engine.start()
    engine.wait_ready(timeout=120)
    yield engine
    engine.stop()


def test_child_serves_on_loopback_with_its_own_token(engine):
    assert engine.url.startswith("http://127.0.0.1:") and len(engine.token) >= 24
    status = engine.client().health()
    assert status["image_size"] == TEST_IMAGE_SIZE and status["auth"] is True
    with pytest.raises(AuthError):  # the token is required: other local users cannot use it
        Client(engine.url).request("GET", "/sessions/x")
    session = engine.client().open_session(make_phantom())
    obj = session.add_object("organ")
    assert session.add_points(obj, [[19, 20, 6]], [1])[0].frame == 6
    proc = Path(f"/proc/{engine.process.pid}")
    if proc.is_dir():
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        assert b"--stop-on-stdin-eof" in argv and engine.token.encode() not in b" ".join(argv)
        env = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0")
                   if b"=" in v)
        # Only the engine code is on the child's path: no parent package can shadow its own.
        assert env[b"PYTHONPATH"] == str(engine_code_folder()).encode()


def test_a_killed_child_is_one_clear_line_and_a_new_one_starts(engine):
    os.kill(engine.process.pid, signal.SIGKILL)
    engine.process.wait(10)
    with pytest.raises(EngineStoppedError) as caught:
        engine.check_alive()
    message = str(caught.value)
    assert "\n" not in message
    assert "was killed (SIGKILL" in message and "next action starts a new one" in message
    with pytest.raises(EngineStoppedError):
        engine.ready()
    old_token = engine.token
    engine.start()
    engine.wait_ready(timeout=120)
    assert engine.token != old_token and engine.client().health()["status"] == "ok"


def test_a_child_that_cannot_start_says_why(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    engine = LocalEngine(_settings(bad), log_path=tmp_path / "engine.log")
    engine.start()
    with pytest.raises(EngineStoppedError) as caught:
        engine.wait_ready(timeout=120)
    message = str(caught.value)
    assert "exited (status 2)" in message and "broken.pt" in message and "\n" not in message


def test_stop_asks_the_child_to_shut_down_cleanly(engine):
    process = engine.process
    started = time.monotonic()
    engine.stop()
    assert time.monotonic() - started < 5.0  # closing stdin sufficed: not terminated
    assert process.returncode in (0, 130)  # 130: the server's own Ctrl+C path
    assert not engine.alive


def test_child_stops_when_its_parent_dies_without_stopping_it(tiny_checkpoint, tmp_path):
    parent = textwrap.dedent(f"""
        import os
        from sam2refine.remote.local_engine import EngineSettings, LocalEngine
        engine = LocalEngine(EngineSettings(checkpoint={str(tiny_checkpoint)!r},
                             image_size={TEST_IMAGE_SIZE}, device="cpu"))
        engine.start()
        engine.wait_ready(timeout=120)
        print(engine.process.pid, flush=True)
        os._exit(0)  # a crash: no stop(), no atexit
    """)
    env = {**os.environ, "PYTHONPATH": str(engine_code_folder())}
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    child = int(out.stdout.split()[-1])
    assert _exited(child, timeout=15), "the orphaned engine kept running"
