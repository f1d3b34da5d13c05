"""Where the Logic's engine runs, and reaching it.

Local mode: a child process on this computer (`sam2refine serve` on 127.0.0.1, a free port, a
random token), started by the module in the engine's own environment and stopped with it.
Remote mode: a server elsewhere (URL and token). Both are reached through the same torch-free
client, so every step is written once. A child that died (killed, out of memory) is reported
in one line and a new one is started by the next action, without restarting Slicer.
"""

from __future__ import annotations

import re

from SAM2RefineLib import dependencies

LOCAL, REMOTE = "local", "remote"
REMOTE_TIMEOUT_S = 30.0  # a healthy server answers every request here at once
EXIT_GRACE_S = 0.5  # how long a child whose connection broke may take to be seen exiting
_PERCENT = re.compile(r"(\d{1,3})%\|")


class EngineLink:
    """The engine of one Logic: its settings, the child process or server, and its client."""

    def __init__(self) -> None:
        from sam2refine import EngineSettings

        self.mode = LOCAL
        self.settings = EngineSettings(image_size=512)
        self.python: str | None = None  # the engine's interpreter; default: its environment
        self.serverUrl = ""
        self.token = ""
        self.engine = None  # sam2refine.LocalEngine
        self._ownsEngine = True
        self._client = None

    # ----- configuration ---------------------------------------------------------------------
    def configureLocal(self, settings, python: str | None = None) -> bool:
        """Serve `settings` (an `EngineSettings`) from a child process; True if that changes
        anything (the running child is then stopped)."""
        if (self.mode, self.settings, self.python) == (LOCAL, settings, python):
            return False
        self.shutdown()
        self.mode, self.settings, self.python = LOCAL, settings, python
        return True

    def configureRemote(self, url: str, token: str | None = None) -> bool:
        url, token = (url or "").strip().rstrip("/"), token or ""
        if (self.mode, self.serverUrl, self.token) == (REMOTE, url, token):
            return False
        self.shutdown()
        self.mode, self.serverUrl, self.token = REMOTE, url, token
        return True

    def useEngine(self, engine) -> None:
        """Use a child engine started elsewhere (a test's, a benchmark's); not stopped here."""
        self.shutdown()
        self.mode, self.settings, self.engine = LOCAL, engine.settings, engine
        self._ownsEngine = False

    def describe(self) -> str:
        if self.mode == REMOTE:
            return f"the engine at {self.serverUrl}"
        s = self.settings
        return f"the engine on this computer ({s.model}, {s.image_size} px, {s.device})"

    # ----- connecting ------------------------------------------------------------------------
    def connect(self, task):
        """Steps that end with a client of a running engine: a remote server is checked (one
        request); a child engine is started if it is not running and polled until it answers
        (its weights download, if any, shows as progress)."""
        from sam2refine import CancelledError, Client, LocalEngine, check_server

        if self.mode == REMOTE:
            if not self.serverUrl:
                raise ValueError("Enter the server URL, e.g. http://gpu-host:8000.")
            if self._client is None:
                self._client = Client(self.serverUrl, token=self.token or None,
                                      timeout=REMOTE_TIMEOUT_S)
            check_server(self._client)
            return self._client
        if self.engine is None:
            python = self.python or dependencies.engine_python()
            if python is None:
                raise dependencies.DependencyError(
                    "The engine's environment is not installed yet: press Install in the "
                    "Model section (it lists what it installs and where).")
            self.engine = LocalEngine(self.settings, python=python,
                                      log_path=dependencies.cache_folder() / "slicer-engine.log")
        if not self.engine.alive:
            self.engine.start()
        status = f"Starting {self.describe()}"
        while not self.engine.ready():
            if task.cancelRequested:
                self.engine.stop()
                raise CancelledError("Starting the engine was cancelled.")
            percents = _PERCENT.findall(self.engine.log_tail(2000))
            if percents:
                task.report(10 * int(percents[-1]), 1000, "Downloading the model weights "
                            "(once; they are kept in the cache)")
            else:
                task.report(0, 0, status)
            yield
        return self.engine.client()

    def explain(self, error: BaseException) -> BaseException:
        """A request's error, said better when the child engine has died meanwhile (its
        connections can break a moment before its exit is visible: wait that moment)."""
        import subprocess

        from sam2refine import EngineStoppedError, ServerError

        if isinstance(error, EngineStoppedError):
            return error
        engine = self.engine
        if not (self.mode == LOCAL and isinstance(error, ServerError) and engine is not None
                and engine.process is not None):
            return error
        try:
            engine.process.wait(EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            return error  # it still runs: a real connection problem, said as it is
        return EngineStoppedError(engine.stopped_reason())

    def shutdown(self) -> None:
        """Stop the child engine this link started (module closed, settings changed)."""
        if self.engine is not None and self._ownsEngine:
            self.engine.stop()
        self.engine, self._ownsEngine, self._client = None, True, None
