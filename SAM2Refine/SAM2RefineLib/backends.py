"""The module's other errands with the engine: the weights catalogue and their download, a
server connection test, and DICOM-SEG export with the DICOM sources it references.

Anything heavy runs in the engine's environment as a program (`processes.py`), never in
Slicer's process: downloads go to the engine's per-user cache (`~/.cache/sam2refine` or
`$SAM2REFINE_CACHE`, outside the extension folder, so reinstalling the extension keeps them)
and are checked against the catalogue's size and SHA-256 by the engine.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from SAM2RefineLib.processes import processSteps
from SAM2RefineLib.tasks import Task


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


def engine_environment() -> dict[str, str]:
    """Environment of an engine program: only the engine's code on its path, so none of
    Slicer's bundled packages shadows the engine environment's own."""
    from sam2refine import engine_code_folder

    return {"PYTHONPATH": str(engine_code_folder()), "PYTHONNOUSERSITE": "1"}


def download_weights_task(name: str, python: str) -> Task:
    """Download and verify `name` into the cache (progress from the download bar)."""
    command = [python, "-m", "sam2refine", "weights", "download", name]
    return Task(f"Downloading {name}",
                lambda task: processSteps(task, command, engine_environment()), cancellable=True)


def test_connection_task(url: str, token: str | None = None) -> Task:
    """One line describing the server at `url`; fails with the server's message when it
    cannot be reached or refuses the token."""
    def body(task):
        from sam2refine import Client, SessionNotFoundError, check_server

        if not url:
            raise ValueError("Enter the server URL, e.g. http://gpu-host:8000.")
        client = Client(url, token=token or None, timeout=10)
        status = check_server(client)
        yield
        # any authenticated request: an unknown session proves the token is accepted
        with contextlib.suppress(SessionNotFoundError):
            client.request("GET", "/sessions/connection-test")
        client.close()
        return (f"Connected: SAM2Refine {status.get('version', '?')}, "
                f"{status.get('image_size', '?')} px on {status.get('device', '?')}, "
                f"{status.get('sessions', 0)} open session(s).")
    return Task("Testing the connection", body)


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


def export_dicom_seg_task(labelmap, segment_infos, path: str | Path, python: str,
                          reference_folder: str | Path | None = None,
                          reference_files: list[str] | None = None,
                          algorithm_type: str = "SEMIAUTOMATIC") -> Task:
    """Write a DICOM-SEG of `labelmap` (an engine `Volume`, labels named by `segment_infos`)
    referencing the series in `reference_folder` (or made of `reference_files`), with the
    engine's `export` command in the engine environment (highdicom, pydicom 3 live there)."""
    def body(task):
        from sam2refine import write_nifti_labelmap

        with tempfile.TemporaryDirectory(prefix="sam2refine-export-") as folder:
            source = Path(folder) / "segmentation.nii"
            write_nifti_labelmap(source, labelmap, segment_infos)
            reference = Path(reference_folder) if reference_folder else series_folder(
                reference_files or [], Path(folder) / "series")
            yield
            command = [python, "-m", "sam2refine", "export", str(source), "--reference-series",
                       str(reference), "--out", os.fspath(path), "--algorithm-type",
                       algorithm_type]
            yield from processSteps(task, command, engine_environment())
        return Path(path)
    return Task("Exporting DICOM-SEG", body, cancellable=True)
