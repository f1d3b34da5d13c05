"""SimpleITK as the engine uses it: its console warnings off, its errors as one readable line."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import SimpleITK as sitk


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Keep ITK's console warnings (e.g. 'No Series were found') out of the user's terminal."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def first_line(exc: Exception) -> str:
    """The informative line of a SimpleITK/ITK exception text, without source locations."""
    lines = [re.sub(r"^(ITK ERROR|sitk::ERROR):\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", ln.strip())
             for ln in str(exc).splitlines()]
    useful = [ln for ln in lines if ln and not ln.startswith(("Exception thrown", "Reason:"))]
    return (useful or ["unknown error"])[-1]
