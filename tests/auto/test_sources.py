"""Prompt sources: label files (NIfTI + names files, .seg.nrrd) mapped to organs by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from sam2refine.auto.sources import (
    LabelFilePromptSource,
    PromptSource,
    match_organs,
    open_prompt_source,
    organ_key,
    read_label_names,
)
from sam2refine.errors import PromptGeneratorError
from sam2refine.image.slicing import slice_stack
from sam2refine.io.segmentation import SegmentInfo, write_seg_nrrd
from tests.conftest import make_phantom


def two_organs(volume):
    """Labels 3 (a block on slices 3..8) and 7 (a smaller block on slices 5..6)."""
    labels = np.zeros(volume.voxels.shape, np.uint8)
    labels[3:9, 10:20, 12:30] = 3
    labels[5:7, 25:30, 5:9] = 7
    return volume.with_voxels(labels)


def write_labels(volume, path):
    sitk.WriteImage(volume.to_sitk(), str(path))
    return path


def test_label_names_from_the_known_file_formats(tmp_path):
    shared = tmp_path / "labels.json"
    shared.write_text(json.dumps({"0": "background", "3": "liver", "7": "Kidney_Left"}))
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"labels": {"background": 0, "liver": 3, "kidney_left": 7}}))
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"labels": {"0": "background", "3": "liver", "7": "kidney_left"}}))
    ours = tmp_path / "x.labels.json"
    ours.write_text(json.dumps({"labels": {"3": {"name": "liver", "color": [1, 0, 0]}}}))
    assert read_label_names(shared) == {3: "liver", 7: "Kidney_Left"}
    assert read_label_names(v2) == read_label_names(v1) == {3: "liver", 7: "kidney_left"}
    assert read_label_names(ours) == {3: "liver"}
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(PromptGeneratorError, match="names no labels"):
        read_label_names(empty)


def test_names_match_ignoring_case_and_separators():
    assert organ_key("Kidney Left") == organ_key("kidney_left") == "kidney left"
    assert match_organs(["kidney_left", "liver"], ["LIVER", "Kidney-Left"], "x") == [
        "liver", "kidney_left"]
    with pytest.raises(PromptGeneratorError, match=r"no organ named 'heart'.*has: kidney_left"):
        match_organs(["kidney_left", "liver"], ["heart"], "the file")


def test_label_file_gives_masks_boxes_and_extent_on_the_axial_stack(tmp_path):
    volume = make_phantom()
    labels = two_organs(volume)
    path = write_labels(labels, tmp_path / "seg.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps({"3": "liver", "7": "kidney_left"}))
    source = LabelFilePromptSource(path)
    assert isinstance(source, PromptSource)
    proposals = source.proposals(volume, ["Kidney Left", "liver"])
    assert list(proposals.organs) == ["kidney_left", "liver"]
    liver = proposals.organs["liver"]
    np.testing.assert_array_equal(liver.mask, labels.voxels == 3)
    assert liver.label == 3 and liver.z_extent == (3, 8)
    stack = slice_stack(volume, "axial")
    frame = stack.frames(labels.voxels == 3)[5]
    rows, cols = np.nonzero(frame)
    assert liver.boxes[5] == (rows.min(), cols.min(), rows.max(), cols.max())
    assert sorted(liver.boxes) == list(range(3, 9))
    label_volume = proposals.label_volume()
    assert label_volume.same_geometry(volume)
    np.testing.assert_array_equal(label_volume.voxels, labels.voxels)


def test_label_file_on_another_grid_is_resampled_in_patient_space(tmp_path):
    volume = make_phantom()
    labels = two_organs(volume)
    flipped = labels.voxels[:, ::-1, :].copy()  # stored with the j axis reversed
    direction = volume.direction.copy()
    direction[:, 1] *= -1
    origin = volume.index_to_lps([0, volume.shape_ijk[1] - 1, 0])
    other = type(volume)(flipped, volume.spacing, tuple(origin), direction)
    path = write_labels(other, tmp_path / "seg.nrrd")
    proposals = LabelFilePromptSource(path, {3: "liver", 7: "kidney_left"}).proposals(volume)
    np.testing.assert_array_equal(proposals.organs["liver"].mask, labels.voxels == 3)


def test_seg_nrrd_segment_names_are_used(tmp_path):
    volume = make_phantom()
    labels = two_organs(volume)
    path = tmp_path / "in.seg.nrrd"
    write_seg_nrrd(path, labels, [SegmentInfo("Liver", 3, (1, 0, 0)),
                                  SegmentInfo("Kidney left", 7, (0, 1, 0))])
    proposals = open_prompt_source(path).proposals(volume)
    assert sorted(proposals.organs) == ["Kidney left", "Liver"]
    assert proposals.organs["Kidney left"].z_extent == (5, 6)


def test_unusable_label_files_fail_clearly(tmp_path):
    volume = make_phantom()
    path = write_labels(two_organs(volume), tmp_path / "seg.nii.gz")
    with pytest.raises(PromptGeneratorError, match="No label names"):
        LabelFilePromptSource(path).proposals(volume)
    source = LabelFilePromptSource(path, {3: "liver", 7: "kidney_left"})
    with pytest.raises(PromptGeneratorError, match="has: kidney_left, liver"):
        source.proposals(volume, ["spleen"])
    unrelated = LabelFilePromptSource(path, {1: "spleen", 2: "heart"})
    with pytest.raises(PromptGeneratorError, match="none of its named labels"):
        unrelated.proposals(volume)
    far = make_phantom()
    far.origin = (5000.0, 0.0, 0.0)
    elsewhere = write_labels(two_organs(far), tmp_path / "far.nii.gz")
    with pytest.raises(PromptGeneratorError, match="does not overlap"):
        LabelFilePromptSource(elsewhere, {3: "liver"}).proposals(volume)
    with pytest.raises(PromptGeneratorError, match="not found"):
        LabelFilePromptSource(tmp_path / "missing.nii.gz")


# ----- U-Net checkpoints ---------------------------------------------------------------------
def tiny_unet_checkpoint(path, labels):
    """An untrained, very small prompt generator checkpoint for `labels`."""
    from sam2refine.promptgen.generator import (
        CHECKPOINT_KIND,
        FORMAT_VERSION,
        PromptGenConfig,
        build_unet,
        write_checkpoint,
    )

    config = PromptGenConfig(labels=labels, image_size=32, channels=(4, 8), strides=(2,),
                             num_res_units=0)
    payload = {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION,
               "model": build_unet(config).state_dict(), "config": config.to_dict()}
    return write_checkpoint(path, payload)


def test_unet_source_proposes_the_organs_it_knows(tmp_path):
    path = tiny_unet_checkpoint(tmp_path / "unet.pt", {"liver": 1, "spleen": 2})
    source = open_prompt_source(path)
    assert isinstance(source, PromptSource) and "unet.pt" in source.description
    volume = make_phantom()
    proposals = source.proposals(volume, ["Spleen"])
    assert list(proposals.organs) == ["spleen"]
    organ = proposals.organs["spleen"]
    assert organ.mask.shape == volume.voxels.shape and organ.label == 2


def test_unusable_checkpoints_fail_clearly(tmp_path, tiny_checkpoint):
    path = tiny_unet_checkpoint(tmp_path / "unet.pt", {"liver": 1, "spleen": 2})
    with pytest.raises(PromptGeneratorError, match=r"trained for other labels.*'heart'"):
        open_prompt_source(path).proposals(make_phantom(), ["liver", "heart"])
    with pytest.raises(PromptGeneratorError, match="a SAM 2 checkpoint"):
        open_prompt_source(tiny_checkpoint)
    with pytest.raises(PromptGeneratorError, match="only apply to label files"):
        open_prompt_source(path, {1: "liver"})
