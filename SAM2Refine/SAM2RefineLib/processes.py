"""A command line program run as a `Task`: started, then watched one short look per step
(has it ended, what did it print), never waited on. Installing the engine environment,
downloading weights and writing a DICOM-SEG run this way, in the engine environment."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from SAM2RefineLib.tasks import Task

_PERCENT = re.compile(rb"(\d{1,3})%\|")  # a tqdm progress bar
CLI_ERROR = "sam2refine: error: "  # how the engine's command line states an error


class ProcessError(RuntimeError):
    """A program failed; the message has its last lines."""


def processSteps(task: Task, command: Sequence[str], env: dict[str, str] | None = None,
                 log: Callable[[str], None] | None = None, span=(0.0, 1.0)):
    """Run `command` (its output to a temporary file, read as it grows), reporting tqdm
    percentages into `span` of the task's bar; cancelling terminates it. Returns its output."""
    with tempfile.TemporaryDirectory(prefix="sam2refine-") as folder:
        outputPath = Path(folder) / "output.txt"
        with open(outputPath, "wb") as output:
            process = subprocess.Popen(list(command), env={**os.environ, **(env or {})},
                                       stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        seen, pending = 0, b""
        try:
            while True:
                ended = process.poll() is not None
                with open(outputPath, "rb") as output:
                    output.seek(seen)
                    new = output.read()
                seen += len(new)
                pending += new
                *lines, pending = re.split(rb"[\r\n]", pending)
                for line in lines:
                    if log is not None and line.strip() and not _PERCENT.search(line):
                        log(line.decode("utf-8", "replace").rstrip())
                percents = _PERCENT.findall(new)
                if percents:
                    low, high = span
                    task.report(int(1000 * (low + (high - low) * int(percents[-1]) / 100)), 1000)
                if ended:
                    break
                if task.cancelRequested:
                    process.terminate()
                    process.wait()
                    raise ProcessError(f"Cancelled: {task.title}. Run it again to finish it.")
                yield
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        text = outputPath.read_bytes().decode("utf-8", "replace")
    if process.returncode != 0:
        lines = [ln.strip() for ln in re.split(r"[\r\n]", text) if ln.strip() and "%|" not in ln]
        errors = [ln[len(CLI_ERROR):] for ln in lines if ln.startswith(CLI_ERROR)]
        said = errors[-1] if errors else " / ".join(lines[-5:])
        raise ProcessError(f"{task.title} failed (exit status {process.returncode}): {said}")
    return text


def processTask(title: str, command: Sequence[str], env: dict[str, str] | None = None,
                log: Callable[[str], None] | None = None) -> Task:
    """A task running one program; its result is the program's output."""
    return Task(title, lambda task: processSteps(task, command, env, log), cancellable=True)
