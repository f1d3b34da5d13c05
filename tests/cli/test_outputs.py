"""The one check every verb makes before writing: no output is an input, or another output."""

from __future__ import annotations

import os

import pytest

from sam2refine.cli.outputs import check_output_suffix, check_outputs, segmentation_outputs
from sam2refine.errors import ExportError


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ct.nii.gz").write_bytes(b"ct")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "img1.dcm").write_bytes(b"dicom")
    return tmp_path


def test_new_outputs_beside_the_inputs_are_fine(files):
    check_outputs([files / "seg.seg.nrrd", files / "series" / "new.dcm"],
                  [files / "ct.nii.gz", files / "series", None])


@pytest.mark.parametrize("output", [
    "ct.nii.gz", "series/../ct.nii.gz", "./ct.nii.gz", "series/img1.dcm", "series"])
def test_an_input_by_any_other_name_is_refused(files, output):
    with pytest.raises(ExportError, match="overwrite|input folder|is a folder"):
        check_outputs([files / output], [files / "ct.nii.gz", files / "series"])


def test_links_to_an_input_are_refused(files):
    os.symlink(files / "ct.nii.gz", files / "soft.nii.gz")
    os.link(files / "ct.nii.gz", files / "hard.nii.gz")
    for name in ("soft.nii.gz", "hard.nii.gz"):
        with pytest.raises(ExportError, match="would overwrite the input"):
            check_outputs([files / name], [files / "ct.nii.gz"])


def test_two_outputs_with_one_name_are_refused(files):
    with pytest.raises(ExportError, match="are the same file"):
        check_outputs([files / "a.nii.gz", files / "x" / ".." / "a.nii.gz"], [])


def test_folders_in_the_way_are_refused_before_any_work(files):
    (files / "out.seg.nrrd").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        check_outputs([files / "out.seg.nrrd"], [])
    with pytest.raises(ExportError, match="is a file, not a folder"):
        check_outputs([files / "ct.nii.gz" / "seg.seg.nrrd"], [])


def test_nifti_outputs_include_their_names_file(files):
    assert segmentation_outputs(files / "SEG.NII.GZ") == [files / "SEG.NII.GZ",
                                                          files / "SEG.labels.json"]
    assert segmentation_outputs(files / "s.seg.nrrd") == [files / "s.seg.nrrd"]
    check_output_suffix(files / "o.NII.GZ")
    with pytest.raises(ExportError, match=r"\.seg\.nrrd"):
        check_output_suffix(files / "o.png")
