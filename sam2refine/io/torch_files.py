"""Reading files written by `torch.save` without running code from them.

Every checkpoint this package reads (SAM 2 weights, prompt generator and fine-tuning states) is
loaded with `weights_only=True`; this module turns the ways that can fail into one clear error
of the caller's type, telling apart a missing file, a damaged one and a pickle of
Python objects.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import torch

_READ_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
                OSError, struct.error)  # struct.error: files of a few bytes


def load_weights_only(path: str | Path, error: type[Exception], *, what: str, missing: str,
                      remedy: str) -> object:
    """`torch.load(path, weights_only=True)` on the CPU. A missing file raises `error(missing)`;
    one that cannot be read raises `error` naming `what` the file should have been and
    `remedy`, what the user can do."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The restricted unpickler rejects garbage bytes ("Unsupported operand") and genuine
        # pickles of Python objects ("Unsupported global") alike; only the latter is unsafe.
        if "Unsupported global" in str(exc):
            raise error(
                f"{path} contains Python objects besides tensors, so loading it would need "
                f"weights_only=False, which can run arbitrary code. {remedy}"
            ) from exc
        raise _unreadable(path, error, what, remedy, exc) from exc
    except _READ_ERRORS as exc:
        raise _unreadable(path, error, what, remedy, exc) from exc


def _unreadable(path: Path, error: type[Exception], what: str, remedy: str,
                exc: Exception) -> Exception:
    return error(f"{path} could not be read as {what} ({type(exc).__name__}); the file is "
                 f"corrupt or truncated, or another kind of file. {remedy}")
