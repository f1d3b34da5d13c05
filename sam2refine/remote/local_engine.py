"""The engine as a child process: `python -m sam2refine serve` on 127.0.0.1, at a free port,
with a random token, reached through the torch-free `Client` exactly like a remote server.

A UI process (Slicer) starts, watches and stops it with calls that return at once: `start()`
launches it, `ready()` says whether it answers yet (one short request), `check_alive()` turns
a dead child into one line a person can act on. The child stops with its parent: `stop()`,
interpreter exit (`atexit`), or, if the parent dies without either, the end of its standard
input (`serve --stop-on-stdin-eof`). Nothing here imports torch.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sam2refine.errors import SAM2RefineError
from sam2refine.remote.client import Client
from sam2refine.remote.wire import ServerError

STARTS = 3  # attempts when the port picked was taken meanwhile by another program
HEALTH_TIMEOUT_S = 0.05  # a starting engine accepts connections before it answers
CLIENT_TIMEOUT_S = 60.0  # a blocking verb (scripts) waits for the model at most this long
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


class EngineStoppedError(ServerError):
    """The engine process this program started is no longer running."""


@dataclass(frozen=True)
class EngineSettings:
    """The model the child serves (the options of `sam2refine serve`)."""

    model: str = "sam2.1_hiera_tiny"
    image_size: int = 1024
    checkpoint: str | None = None
    adapters: str | None = None
    device: str = "auto"

    def arguments(self) -> list[str]:
        args = ["--model", self.model, "--image-size", str(int(self.image_size)),
                "--device", self.device]
        if self.checkpoint:
            args += ["--checkpoint", str(self.checkpoint)]
        if self.adapters:
            args += ["--adapters", str(self.adapters)]
        return args


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def engine_code_folder() -> Path:
    """The folder holding the `sam2refine` package this process uses: the child runs the same
    code (in Slicer, the copy bundled with the module)."""
    return Path(__file__).resolve().parents[2]


class LocalEngine:
    """One child engine process; see the module docstring.

    `python`: the interpreter that has the engine's requirements (torch, sam2, fastapi, ...);
    in Slicer the engine's own environment, never Slicer's process itself. The child's
    `PYTHONPATH` is only `pythonpath` (the engine code), so packages the parent's path would
    add (Slicer's bundled ones) cannot shadow the child's environment.
    """

    def __init__(self, settings: EngineSettings, python: str | None = None,
                 pythonpath: str | Path | None = None, log_path: str | Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.python = python or sys.executable
        self.pythonpath = str(pythonpath or engine_code_folder())
        self.log_path = Path(log_path) if log_path else None
        self.extra_env = dict(extra_env or {})
        self.token = ""
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._starts = 0
        self._ready = False
        self._log_file = None
        self._client: Client | None = None
        atexit.register(self.stop)

    # ----- starting ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Launch the child (returns at once; `ready()` tells when it answers)."""
        self.stop()
        self._starts += 1
        self.token = secrets.token_urlsafe(24)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
        env.update({"PYTHONPATH": self.pythonpath, "PYTHONNOUSERSITE": "1",
                    "PYTHONUNBUFFERED": "1", "SAM2REFINE_TOKEN": self.token, **self.extra_env})
        command = [self.python, "-m", "sam2refine", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--stop-on-stdin-eof", "--no-access-log",
                   *self.settings.arguments()]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - the child writes it
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE,
            stdout=self._log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._ready = False
        self._client = None

    def ready(self) -> bool:
        """Whether the child answers requests yet (at most one request of ~50 ms); raises
        `EngineStoppedError` if it exited (a port taken meanwhile is retried here)."""
        if self._ready:
            self.check_alive()
            return True
        if self.process is None:
            raise EngineStoppedError("The engine has not been started.")
        if self.process.poll() is not None:
            if "Cannot listen" in self.log_tail() and self._starts < STARTS:
                self.start()  # the free port was taken before the child could bind it
                return False
            self.check_alive()
        try:
            Client(self.url, token=self.token, timeout=HEALTH_TIMEOUT_S).health()
        except SAM2RefineError:
            return False
        self._ready = True
        self._starts = 0
        return True

    def wait_ready(self, timeout: float = 600.0, poll_s: float = 0.1) -> None:
        """Block until the child answers (scripts and tests; a UI polls `ready()` instead)."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise EngineStoppedError(
                    f"The engine did not start within {timeout:g} s; see {self.log_path}.")
            time.sleep(poll_s)

    def client(self) -> Client:
        """The client of the running child (made once per start)."""
        if self._client is None:  # every request to it is answered at once (its jobs wait)
            self._client = Client(self.url, token=self.token, timeout=CLIENT_TIMEOUT_S)
        return self._client

    # ----- watching ----------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Raise `EngineStoppedError` with one line saying why, if the child has exited."""
        if self.process is None:
            raise EngineStoppedError("The engine has not been started.")
        if self.process.poll() is not None:
            raise EngineStoppedError(self.stopped_reason())

    def stopped_reason(self) -> str:
        """One line: how the child ended and what it said last."""
        code = self.process.returncode if self.process is not None else None
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            how = (f"was killed ({name}: by the system when memory ran out, or by a person)"
                   if -code == getattr(signal, "SIGKILL", 9) else f"was stopped ({name})")
        else:
            how = f"exited (status {code})"
        said = self.last_error_line()
        return (f"The SAM2Refine engine process {how}{': ' + said if said else ''}. "
                "Its session is lost; segments are kept, and the next action starts a new one.")

    def log_tail(self, max_bytes: int = 8000) -> str:
        """The end of the child's log (whole lines only)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        size = self.log_path.stat().st_size
        with open(self.log_path, "rb") as log:
            log.seek(max(0, size - max_bytes))
            text = log.read().decode("utf-8", "replace")
        return text.split("\n", 1)[-1] if size > max_bytes else text

    def last_error_line(self) -> str:
        """What the child said last that reads like an error: the command line's one-line
        error when there is one, else the exception a traceback ended with."""
        lines = [ln.strip() for ln in self.log_tail().splitlines() if ln.strip()]
        for line in reversed(lines):
            if line.startswith("sam2refine: error: "):
                return line.removeprefix("sam2refine: error: ")[:600]
        for line in reversed(lines):
            if _EXCEPTION_LINE.match(line):
                return line[:600]
        return ""

    # ----- stopping ----------------------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child: closing its standard input asks it to shut down; it is terminated,
        then killed, if it has not within `timeout` seconds."""
        process, self.process = self.process, None
        self._ready = False
        self._client = None
        if process is not None:
            with contextlib.suppress(OSError):
                if process.stdin is not None:
                    process.stdin.close()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(2.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
