"""What every command checks of the files it will write."""

from __future__ import annotations

from pathlib import Path

from sam2refine.errors import SAM2RefineError


def check_output_suffix(out: Path) -> None:
    name = out.name.lower()
    if not name.endswith((".seg.nrrd", ".nii", ".nii.gz")):
        raise SAM2RefineError(
            f"Output {out} must end in .seg.nrrd (Slicer segmentation) or .nii/.nii.gz."
        )
