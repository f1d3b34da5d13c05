"""What every command checks of the files it will write, before it reads or computes anything.

- An output suffix the writers know (`check_output_suffix`), in any case ("o.NII.GZ").
- No output is one of the command's inputs (`check_outputs`): paths are compared resolved
  (symlinks, "..", case on case-insensitive file systems) and by inode (hard links), and an
  existing file inside an input folder (a DICOM series) counts as an input. Outputs must
  also differ from each other. So `segment CT.nii.gz --out CT.nii.gz` stops with one line and
  the CT is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sam2refine.errors import ExportError as OutputError  # an output that cannot be written

SEGMENTATION_SUFFIXES = (".seg.nrrd", ".nii", ".nii.gz")


def check_output_suffix(out: Path) -> None:
    name = out.name.lower()
    if not name.endswith(SEGMENTATION_SUFFIXES):
        raise OutputError(
            f"Output {out} must end in .seg.nrrd (Slicer segmentation) or .nii/.nii.gz."
        )


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) when the file exists)."""
    resolved = Path(os.path.realpath(os.path.expanduser(path)))
    try:
        stat = resolved.stat()
        return os.path.normcase(str(resolved)), (stat.st_dev, stat.st_ino)
    except OSError:
        return os.path.normcase(str(resolved)), None


def _input_files(inputs: Iterable[Path | str | None]) -> list[tuple[Path, bool]]:
    """(input path, is a folder) for every given input."""
    found = []
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(item).expanduser()
        found.append((path, path.is_dir()))
    return found


def _check_writable(out: Path) -> None:
    """Refuse at once what the write would fail on after minutes of work."""
    if out.is_dir():
        raise OutputError(f"The output {out} is a folder; give a file name.")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"Cannot write {out}: {parent} is a file, not a folder. "
                                  "Choose another output path.")
            break


def check_outputs(outputs: Iterable[Path | str | None], inputs: Iterable[Path | str | None]
                  ) -> None:
    """Refuse any output that is an input, lies in an input folder over an existing file, or
    repeats another output. Call before any work, with every file the command will write
    (sidecars included) and every file or folder it reads."""
    sources = _input_files(inputs)
    known = [(path, folder, *_identity(path)) for path, folder in sources]
    seen: dict[str, Path] = {}
    for item in outputs:
        if item is None or str(item) == "":
            continue
        out = Path(item).expanduser()
        _check_writable(out)
        name, inode = _identity(out)
        if name in seen:
            raise OutputError(f"{seen[name]} and {out} are the same file; give each output its "
                              "own name.")
        seen[name] = out
        for path, folder, source_name, source_inode in known:
            same = name == source_name or (inode is not None and inode == source_inode)
            inside = folder and inode is not None and name.startswith(source_name + os.sep)
            if same and folder:
                raise OutputError(f"The output {out} is the input folder {path}; give a file "
                                  "name outside it.")
            if same or inside:
                what = (f"the file {out}, which is in the input folder {path}" if inside
                        else f"the input {path}")
                raise OutputError(
                    f"The output would overwrite {what}; nothing was written. Choose another "
                    "output name (inputs are never overwritten)."
                )


def segmentation_outputs(out: Path) -> list[Path]:
    """Every file writing a segmentation to ``out`` creates (NIfTI adds its names file)."""
    from sam2refine.io.segmentation import nifti_sidecar

    out = Path(out)
    return [out, nifti_sidecar(out)] if out.name.lower().endswith((".nii", ".nii.gz")) else [out]
