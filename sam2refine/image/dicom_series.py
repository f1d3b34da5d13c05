"""DICOM series folders read as one volume."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from sam2refine.errors import VolumeError
from sam2refine.image.itk import first_line, quiet_itk

SUPPORTED_FORMATS = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd)"


def read_dicom_folder(folder: Path) -> sitk.Image:
    if not any(folder.iterdir()):
        raise VolumeError(
            f"The folder {folder} is empty. Choose the folder that contains the DICOM files "
            "of the series."
        )
    with quiet_itk():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        files = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series]
    files = [f for f in files if f]
    if not files:
        hint = (
            " It has subfolders: choose the folder that directly contains the DICOM files."
            if any(p.is_dir() for p in folder.iterdir())
            else " Give a DICOM series folder or an image file: " + SUPPORTED_FORMATS + "."
        )
        raise VolumeError(f"No DICOM series found in the folder {folder}.{hint}")
    chosen = max(files, key=len)  # the series with the most files
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chosen)
    try:
        with quiet_itk():
            return reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(
            f"Cannot read the DICOM series in {folder} ({len(chosen)} files): "
            f"{first_line(exc)}. Check that the files are complete and not corrupt."
        ) from exc
