"""Weights, models and sessions: the glue between the module and the engine.

Everything imports the engine lazily, so listing what is missing works before the engine's
requirements (torch, sam2) are installed. Downloads go to the engine's per-user cache
(`~/.cache/sam2refine` or `$SAM2REFINE_CACHE`, outside the extension folder, so reinstalling the
extension keeps them) and are checked against the catalogue's size and SHA-256.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class AutoSegmentUnavailableError(RuntimeError):
    """The automatic pipeline cannot run on this backend (a remote server does not offer it
    yet)."""


@dataclass
class WeightsRow:
    """One catalogue entry as the module lists it."""

    name: str
    description: str
    size_bytes: int | None
    cached: bool
    path: Path


def catalogue() -> list[WeightsRow]:
    """The official checkpoints and whether each is already in the cache."""
    from sam2refine import weights_catalogue

    return [WeightsRow(row.entry.name, row.entry.description, row.entry.size_bytes, row.cached,
                       row.path) for row in weights_catalogue()]


def download_weights(name: str, progress: Callable[[int, int], None] | None = None,
                     cancel: threading.Event | None = None) -> Path:
    """Download and verify `name` into the cache; progress is reported as (percent, 100)."""
    from sam2refine import download_weights

    def report(done: int, total: int | None) -> None:
        if progress is not None and total:
            progress(min(100, int(100 * done / total)), 100)

    return download_weights(name, on_progress=report, cancel=cancel)


def load_model(name: str, image_size: int, checkpoint: str | Path | None = None,
               device: str = "auto", progress: Callable[[int, int], None] | None = None,
               cancel: threading.Event | None = None, *,
               adapters: str | Path | None = None) -> Any:
    """Build SAM 2.1 with verified weights (downloaded into the cache when missing), plus
    fine-tuned `adapters` when given (checked against that checkpoint before loading)."""
    import sam2refine

    def report(done: int, total: int | None) -> None:
        if progress is not None and total:
            progress(min(99, int(100 * done / total)), 100)

    model = sam2refine.load_model(name, int(image_size), checkpoint or None, device,
                                  adapters=adapters or None, on_progress=report, cancel=cancel)
    if progress is not None:
        progress(100, 100)
    return model


def open_session(volume, *, model=None, server_url: str | None = None,
                 token: str | None = None, axis: str = "axial", intensity: str = "ct") -> Any:
    """An in-process `Session` (with `model`) or a remote session on `server_url`."""
    if server_url:
        from sam2refine import Client

        return Client(server_url, token=token or None).open_session(
            volume, axis=axis, intensity=intensity)
    if model is None:
        raise ValueError("Load a model first (or choose a remote server).")
    from sam2refine import Session

    return Session(model, volume, axis=axis, intensity=intensity)


def close_session(session: Any) -> None:
    """Release a session (remote sessions free the server's memory)."""
    for owner in (session, getattr(session, "client", None)):
        close = getattr(owner, "close", None)
        if callable(close):
            close()


def auto_segment_pipeline(session: Any = None) -> Callable[..., Any]:
    """The engine's automatic pipeline (`sam2refine.auto_segment`) for `session`; a
    clear error for remote sessions, where the server does not offer it yet."""
    if session is not None and type(session).__name__ != "Session":
        raise AutoSegmentUnavailableError(
            "Auto-segment is not available on a remote server yet: choose 'This computer' "
            "(local processing) to auto-segment, or prompt and Propagate on the server.")
    from sam2refine import auto_segment

    return auto_segment


def test_connection(url: str, token: str | None = None) -> str:
    """One line describing the server at `url`; raises with the server's message when it
    cannot be reached or refuses the token."""
    from sam2refine import Client, SessionNotFoundError

    if not url:
        raise ValueError("Enter the server URL, e.g. http://gpu-host:8000.")
    with Client(url, token=token or None, timeout=15) as client:
        status = client.health()
        # any authenticated request: an unknown session proves the token is accepted
        with contextlib.suppress(SessionNotFoundError):
            client.request("GET", "/sessions/connection-test")
    return (f"Connected: SAM2Refine {status.get('version', '?')}, "
            f"{status.get('image_size', '?')} px on {status.get('device', '?')}, "
            f"{status.get('sessions', 0)} open session(s).")


def dicom_reference_files(volume_node) -> list[str]:
    """Files of the DICOM series a volume node was loaded from (Slicer's DICOM database)."""
    import slicer

    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    files = [database.fileForInstance(uid) for uid in uids] if database else []
    return [f for f in files if f]


def series_folder(files: list[str], folder: str | Path) -> Path:
    """A folder holding exactly `files` (links, or copies where links are not allowed)."""
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(files):
        target = folder / f"{index:05d}.dcm"
        try:
            target.symlink_to(Path(name).resolve())
        except OSError:
            shutil.copyfile(name, target)
    return folder


def export_dicom_seg(labelmap, segment_infos, reference_folder: str | Path,
                     path: str | Path, algorithm_type: str = "SEMIAUTOMATIC") -> Path:
    """Write a DICOM-SEG of `labelmap` referencing the series in `reference_folder`;
    `algorithm_type` AUTOMATIC when only the automatic pipeline made it."""
    from sam2refine import export_dicom_seg as write

    return write(labelmap, segment_infos, reference_folder, path,
                 algorithm_type=algorithm_type)
