"""Files written atomically: a temporary file beside the destination, renamed into place, so
an interrupted write never leaves half a file where a good one was."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from sam2refine.errors import ExportError

_COMPOUND_SUFFIXES = (".seg.nrrd", ".nii.gz", ".labels.json")


def split_suffix(path: Path) -> tuple[str, str]:
    """Split a file name into (base, suffix), treating ``.seg.nrrd``/``.nii.gz`` as one suffix."""
    name = path.name
    for suffix in _COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return path.stem, path.suffix


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX only; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write_fn: Callable[[Path], None]) -> Path:
    """Write ``path`` via ``write_fn(temp_path)`` then rename it into place; returns ``path``.

    The temporary file sits next to the destination and keeps its suffix in lower case
    (writers choose the format from it). If anything fails the temporary file is removed, the
    exception propagates (an OSError as `ExportError`), and an existing destination is left
    exactly as it was.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ExportError(f"Cannot write {path}: it is a directory; give a file name instead.")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"Cannot create the output folder {parent}: {exc}") from exc
    if not os.access(parent, os.W_OK):
        raise ExportError(f"Cannot write into {parent}: permission denied; choose another folder.")
    if path.exists() and not os.access(path, os.W_OK):
        raise ExportError(f"Cannot overwrite {path}: the file is read-only.")

    base, suffix = split_suffix(path)
    suffix = suffix.lower()  # writers pick the format from it; "o.NII.GZ" is still NIfTI
    tmp = parent / f".{base}.tmp-{secrets.token_hex(4)}{suffix}"
    while tmp.exists():
        tmp = parent / f".{base}.tmp-{secrets.token_hex(4)}{suffix}"
    try:
        write_fn(tmp)
        if not tmp.is_file():
            raise ExportError(f"Writing {path} failed: the writer produced no file.")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, a vanished folder: one line, the old file kept
        tmp.unlink(missing_ok=True)
        raise ExportError(f"Writing {path} failed ({exc.strerror or exc}); nothing was "
                          "replaced. Free some space or choose another folder.") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # durable rename is best effort; the file is complete
        _fsync_dir(parent)
    return path
