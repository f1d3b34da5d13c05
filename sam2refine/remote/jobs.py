"""The server's state: open sessions, propagation jobs, and the one worker for model work.

Every call into the model (prompts, propagation, masks, the label volume) runs on a single
worker thread, in the order it was asked for: one GPU (or CPU) is never shared by two
computations, and sessions never interleave inside one operation. The event loop only waits
for that thread, so health checks, job progress and cancels are answered meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sam2refine.errors import CancelledError, SAM2RefineError
from sam2refine.remote.wire import (
    JobNotFoundError,
    ServerBusyError,
    SessionNotFoundError,
    error_body,
)

log = logging.getLogger("sam2refine.remote.server")
T = TypeVar("T")
_TERMINAL = ("done", "cancelled", "failed")
_KEEP_FINISHED_JOBS = 8


class Job:
    """One propagation run: its progress, state and cancel switch, readable from any thread."""

    def __init__(self, job_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.job_id = job_id
        self.cancel = threading.Event()
        self.state = "queued"  # queued -> running -> done | cancelled | failed
        self.done = 0
        self.total = 0
        self.result: int | None = None
        self.error: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._loop = loop
        self._changed = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self.state in _TERMINAL

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"job_id": self.job_id, "state": self.state, "done": self.done,
                    "total": self.total, "result": self.result, "error": self.error}

    def update(self, **fields: Any) -> None:
        """Set fields from the worker thread and wake the requests waiting for news."""
        with self._lock:
            for name, value in fields.items():
                setattr(self, name, value)
        with contextlib.suppress(RuntimeError):  # loop closed: the server is shutting down
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, after: int, timeout: float) -> None:
        """Return once more than `after` slices are done, the job has ended, or `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.finished and self.done <= after:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return


@dataclass
class SessionRecord:
    """A session as the server holds it."""

    session_id: str
    session: Any  # sam2refine.sam.session.Session
    last_used: float = field(default_factory=time.monotonic)
    jobs: dict[str, Job] = field(default_factory=dict)

    def busy(self) -> bool:
        return any(not job.finished for job in self.jobs.values())


class Engine:
    """Sessions by id, their jobs, idle expiry and the model worker (one per app)."""

    def __init__(self, model: Any, idle_timeout_s: float, max_sessions: int) -> None:
        self.model = model
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self.sessions: dict[str, SessionRecord] = {}
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2refine-model")
        self.model_busy = False

    # ----- model work ----------------------------------------------------------------------
    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the model worker, after everything queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, self._busy(fn))

    def _busy(self, fn: Callable[[], T]) -> Callable[[], T]:
        def call() -> T:
            self.model_busy = True
            try:
                return fn()
            finally:
                self.model_busy = False
        return call

    # ----- sessions ------------------------------------------------------------------------
    def check_room(self) -> None:
        """Refuse a new session when the server holds as many as it may (memory bound)."""
        self.expire_idle()
        if len(self.sessions) >= self.max_sessions:
            raise ServerBusyError(
                f"This server already holds {len(self.sessions)} open sessions, its limit. "
                "Close a session you no longer use (or wait until idle ones expire after "
                f"{self.idle_timeout_s:g} s), then open the volume again."
            )

    def add(self, session: Any) -> SessionRecord:
        self.check_room()
        record = SessionRecord(secrets.token_urlsafe(16), session)
        self.sessions[record.session_id] = record
        return record

    def get(self, session_id: str) -> SessionRecord:
        """The session, marked as used now; unknown or expired ids raise a 404 error."""
        self.expire_idle()
        record = self.sessions.get(session_id)
        if record is None:
            raise SessionNotFoundError(
                f"No session '{session_id}' on this server: it was closed, the server "
                f"restarted, or it expired after {self.idle_timeout_s:g} s without use. "
                "Open the volume again."
            )
        record.last_used = time.monotonic()
        return record

    def remove(self, session_id: str) -> None:
        record = self.get(session_id)
        for job in record.jobs.values():
            job.cancel.set()
        del self.sessions[session_id]

    def expire_idle(self) -> list[str]:
        """Drop sessions unused for longer than the idle timeout (never one with a job)."""
        now = time.monotonic()
        gone = [sid for sid, rec in self.sessions.items()
                if now - rec.last_used > self.idle_timeout_s and not rec.busy()]
        for sid in gone:
            del self.sessions[sid]
            log.info("Session %s expired after %g s idle", sid[:6], self.idle_timeout_s)
        return gone

    async def reap_forever(self) -> None:
        """Background task: expire idle sessions even when no request comes in."""
        interval = min(60.0, max(0.05, self.idle_timeout_s / 2))
        while True:
            await asyncio.sleep(interval)
            self.expire_idle()

    # ----- jobs ----------------------------------------------------------------------------
    def start_propagation(self, record: SessionRecord, objects: list | None,
                          frame_range: tuple[int, int] | None) -> Job:
        """Queue a propagation on the worker; the job reports progress while it runs."""
        job = Job(secrets.token_urlsafe(8), asyncio.get_running_loop())
        finished = [j for j in record.jobs.values() if j.finished]
        for old in finished[: max(0, len(finished) - _KEEP_FINISHED_JOBS)]:
            del record.jobs[old.job_id]
        record.jobs[job.job_id] = job

        def work() -> None:
            job.update(state="running")
            try:
                count = record.session.propagate(
                    objects, frame_range, lambda d, t: job.update(total=t, done=d), job.cancel)
            except CancelledError as exc:
                job.update(state="cancelled", error=error_body(exc))
            except SAM2RefineError as exc:
                job.update(state="failed", error=error_body(exc))
            except Exception as exc:  # reported to the client as ServerError, logged here
                log.exception("Propagation failed in session %s", record.session_id[:6])
                job.update(state="failed", error={
                    "error": f"Propagation failed inside the server ({type(exc).__name__}); "
                             "see the server log.", "type": "ServerError"})
            else:
                job.update(state="done", result=count, done=count, total=max(job.total, count))
            finally:
                record.last_used = time.monotonic()

        self.worker.submit(self._busy(work))
        return job

    def job(self, record: SessionRecord, job_id: str) -> Job:
        job = record.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(
                f"No propagation job '{job_id}' in this session (finished jobs are kept "
                f"for the last {_KEEP_FINISHED_JOBS} runs only); start a new one with "
                "propagate."
            )
        return job

    def shutdown(self) -> None:
        """Cancel every job and stop the worker (queued work is dropped)."""
        for record in self.sessions.values():
            for job in record.jobs.values():
                job.cancel.set()
        self.sessions.clear()
        self.worker.shutdown(wait=False, cancel_futures=True)
