"""Long work driven from Slicer's main thread in short steps, never on a thread of its own.

Slicer's main thread never releases the GIL, so a Python thread inside Slicer only runs while
the main thread happens to run Python: engine work there would crawl. The engine therefore
runs in another process (a child engine or a remote server), and the module only sends it
requests that are answered at once. A `Task` is a generator of such short steps (one request,
or one segment's MRML update): the widget's timer calls `step()` every few tens of
milliseconds, so Slicer stays responsive; the Python console and tests call `run()`, which
steps it to the end. The generator reports progress and sees a cancel request through the
`Task` it is given.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Generator
from typing import Any

Progress = Callable[[int, int], None]
Body = Callable[["Task"], Generator[None, None, Any]]


class Task:
    """Work in short steps: `step()` runs one, `run()` all of them."""

    def __init__(self, title: str, body: Body, cancellable: bool = False) -> None:
        self.title = title
        self.cancellable = cancellable
        self.progress: tuple[int, int] = (0, 0)
        self.status = title
        self.cancelRequested = False
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.errorDetails = ""
        self._body = body
        self._steps: Generator[None, None, Any] | None = None

    def report(self, done: int, total: int, status: str | None = None) -> None:
        """Progress of the work (the widget's bar); `status` is what it is doing now."""
        self.progress = (int(done), int(total))
        if status:
            self.status = status

    def cancel(self) -> None:
        """Ask the work to stop at its next step (server jobs stop between slices)."""
        self.cancelRequested = True

    def step(self) -> bool:
        """Run one short step; True once the task has finished (done or failed)."""
        if self.finished:
            return True
        try:
            if self._steps is None:
                self._steps = self._body(self)
            next(self._steps)
        except StopIteration as stop:
            self.result, self.finished = stop.value, True
            if self.progress[1]:
                self.progress = (self.progress[1], self.progress[1])
        except Exception as exc:  # kept for the caller: the widget shows it in one line
            self.error, self.errorDetails, self.finished = exc, traceback.format_exc(), True
        return self.finished

    def outcome(self) -> Any:
        """The result of a finished task, or its error raised again."""
        if not self.finished:
            raise RuntimeError(f"'{self.title}' is still running.")
        if self.error is not None:
            raise self.error
        return self.result

    def run(self, progress: Progress | None = None, cancel: threading.Event | None = None,
            poll_s: float = 0.02) -> Any:
        """Step to the end, sleeping `poll_s` between steps (Python console, tests)."""
        while not self.step():
            if cancel is not None and cancel.is_set():
                self.cancel()
            if progress is not None and self.progress[1]:
                progress(*self.progress)
            time.sleep(poll_s)
        if progress is not None and self.progress[1] and self.error is None:
            progress(*self.progress)
        return self.outcome()

    def close(self) -> None:
        """Abandon the task (its generator's cleanup runs)."""
        if self._steps is not None:
            self._steps.close()
        self.finished = True


def follow(task: Task, job, span: tuple[float, float] = (0.0, 1.0),
           status: str | None = None, large: bool = False) -> Generator[None, None, Any]:
    """Wait for a server job (`sam2refine.remote.stepwise.RemoteJob`), one poll per step: its
    progress fills `span` of the task's bar, a cancel request is passed on to the server, and
    its result is returned (a cancelled or failed job raises its error). A `large` answer
    (whole volumes) is decoded a step after it arrived, so no step does both."""
    cancelSent = False
    while not job.finished:
        if task.cancelRequested and not cancelSent and job.cancellable:
            cancelSent = job.cancel()
        done, total = job.progress
        if total:
            low, high = span
            task.report(int(1000 * (low + (high - low) * done / total)), 1000, status)
        elif status:
            task.status = status
        yield
        job.poll()
    if large:
        yield
    return job.result()

