"""Long work split so that it never runs on Slicer's UI thread.

A `Job` has a `run` part (engine work only: no MRML, no Qt, safe on a worker thread; it gets a
progress callback and a cancel event) and a `finish` part (MRML updates, on the main thread).
Calling a job runs both in the caller's thread, which is what the Python console and tests
do; the module's widget instead hands it to a `BackgroundTask` and polls it from a timer.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Progress = Callable[[int, int], None]


def _identity(value: Any) -> Any:
    return value


@dataclass
class Job:
    """A unit of long work: `run(progress, cancel)` off the UI thread, `finish(result)` on it."""

    title: str
    run: Callable[[Progress | None, threading.Event | None], Any]
    finish: Callable[[Any], Any] = _identity

    def __call__(self, progress: Progress | None = None,
                 cancel: threading.Event | None = None) -> Any:
        return self.finish(self.run(progress, cancel))


class BackgroundTask:
    """Runs a job's `run` part on a daemon thread; the owner calls `poll()` from its UI timer
    and, once it reports done, `finish()` on the UI thread."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._progress: tuple[int, int] = (0, 0)
        self._result: Any = None
        self._error: BaseException | None = None
        self._details = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"SAM2Refine: {job.title}",
                                        daemon=True)

    def start(self) -> BackgroundTask:
        self._thread.start()
        return self

    def _report(self, done: int, total: int) -> None:
        with self._lock:
            self._progress = (int(done), int(total))

    def _work(self) -> None:
        try:
            self._result = self.job.run(self._report, self.cancel_event)
        except BaseException as exc:  # reported to the UI thread by finish()
            self._error = exc
            self._details = traceback.format_exc()
        finally:
            self._done.set()

    def cancel(self) -> None:
        """Ask the work to stop at its next check (between slices, download chunks, ...)."""
        self.cancel_event.set()

    def poll(self) -> tuple[bool, int, int]:
        """(done, progress done, progress total); safe to call from any thread."""
        with self._lock:
            done, total = self._progress
        return self._done.is_set(), done, total

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def finish(self) -> Any:
        """On the UI thread, once done: apply the result (MRML) or raise the worker's error."""
        if not self._done.is_set():
            raise RuntimeError(f"'{self.job.title}' is still running.")
        if self._error is not None:
            raise self._error
        return self.job.finish(self._result)

    @property
    def error_details(self) -> str:
        """The worker's traceback, for the log (empty when it succeeded)."""
        return self._details
