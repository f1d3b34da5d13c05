"""Dice and NSD against values computed by hand, folder matching, table layout and errors.

The NSD values follow DeepMind's surface elements, which sit on the corners between voxels:
for two 4x4x4 cubes the surface has 5x5 corner points per face, of three kinds with these
areas (a, b, c the voxel spacings along the axes the element spans):
face point: a*b; edge point (edge along a): a * hypot(b, c) / 2; corner point:
|(b*c, a*c, a*b)| / 8.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from sam2refine.cli.main import main
from sam2refine.errors import DatasetError
from sam2refine.evaluate import evaluate_folders, score_masks
from sam2refine.image.volume import Volume
from sam2refine.io.segmentation import SegmentInfo, write_seg_nrrd

SHAPE = (10, 10, 10)


def _cubes(offset: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A 4x4x4 cube and the same cube moved `offset` voxels along k (axis 0)."""
    a = np.zeros(SHAPE, bool)
    b = np.zeros(SHAPE, bool)
    a[2:6, 2:6, 2:6] = True
    b[2 + offset : 6 + offset, 2:6, 2:6] = True
    return a, b


def _cube_areas(sk: float, sj: float, si: float) -> dict[str, float]:
    """Surface-element areas of a 4-voxel cube's 5x5 corner-point layers normal to k."""
    face_k = sj * si  # face points on the two faces normal to k
    face_side = sk * si  # (sj == si in these tests) face points on the four side faces
    edge_along_k = sk * math.hypot(sj, si) / 2
    edge_in_plane = si * math.hypot(sk, sj) / 2  # edges of the k faces
    corner = math.sqrt((sj * si) ** 2 + (sk * si) ** 2 + (sk * sj) ** 2) / 8
    ring = 12 * face_side + 4 * edge_along_k  # one middle layer: the side faces' points
    end_layer = 9 * face_k + 12 * edge_in_plane + 4 * corner  # a whole k face
    return {"ring": ring, "end": end_layer, "face_k": face_k}


def test_dice_of_cubes_offset_by_one_voxel_is_counted():
    a, b = _cubes()
    # overlap 3x4x4 = 48 voxels, 64 in each cube
    assert score_masks(a, b, (1.0, 1.0, 1.0), 2.0).dice == pytest.approx(2 * 48 / 128)


def test_nsd_isotropic_tolerance_below_and_above_the_offset():
    a, b = _cubes()
    areas = _cube_areas(1.0, 1.0, 1.0)
    # Corner layers k=0..4 of cube a; b's surface is the same box moved by one layer. Within a
    # tolerance below one voxel only the points on both surfaces count: a's rings of layers 1-3
    # and the ring of its end layer 4 (b's side faces), which is that layer minus its 9 interior
    # face points. The total has three rings and two end layers. By symmetry b scores the same.
    total = 3 * areas["ring"] + 2 * areas["end"]
    near = 3 * areas["ring"] + areas["end"] - 9 * areas["face_k"]
    assert score_masks(a, b, (1.0, 1.0, 1.0), 0.5).nsd == pytest.approx(near / total, abs=1e-5)
    assert score_masks(a, b, (1.0, 1.0, 1.0), 1.0).nsd == pytest.approx(1.0)


def test_nsd_anisotropic_spacing_tolerance_in_mm():
    a, b = _cubes()
    spacing_ijk = (1.0, 1.0, 3.0)  # the offset is along k: 3 mm
    areas = _cube_areas(3.0, 1.0, 1.0)
    total = 3 * areas["ring"] + 2 * areas["end"]
    # 2.5 mm: the end layer at the shared side is within 1-2 mm of b's side faces; the far end
    # layer is 3 mm from b's surface. 1.5 mm: the centre point of the near end layer is 2 mm
    # from b's side faces, so it drops out.
    near = 3 * areas["ring"] + areas["end"]
    assert score_masks(a, b, spacing_ijk, 2.5).nsd == pytest.approx(near / total, abs=1e-5)
    centre = areas["face_k"]
    assert score_masks(a, b, spacing_ijk, 1.5).nsd == pytest.approx((near - centre) / total,
                                                                     abs=1e-5)
    assert score_masks(a, b, spacing_ijk, 3.0).nsd == pytest.approx(1.0)
    # the same offset along i (1 mm) is within 1.5 mm everywhere
    a_i, b_i = (m.transpose(2, 1, 0) for m in _cubes())
    assert score_masks(a_i, b_i, spacing_ijk, 1.5).nsd == pytest.approx(1.0)


def test_empty_conventions():
    a, _ = _cubes()
    empty = np.zeros(SHAPE, bool)
    both = score_masks(empty, empty, (1, 1, 1), 2.0)
    assert (both.dice, both.nsd) == (1.0, 1.0)
    for pred, gt in ((a, empty), (empty, a)):
        one = score_masks(pred, gt, (1, 1, 1), 2.0)
        assert (one.dice, one.nsd) == (0.0, 0.0)


# ----- folders ---------------------------------------------------------------------------------
def _volume(voxels: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Volume:
    return Volume(voxels.astype(np.uint8), spacing, (5.0, -3.0, 10.0), np.diag([-1.0, -1.0, 1.0]))


def _write_nifti(path, volume: Volume) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(path))


@pytest.fixture
def dataset(tmp_path):
    """labelsTr with two cases (liver 1, spleen 2) and dataset.json one folder up."""
    a, b = _cubes()
    gt1 = a.astype(np.uint8)
    gt1[7:9, 7:9, 7:9] = 2
    gt2 = np.zeros(SHAPE, np.uint8)
    gt2[b] = 1  # no spleen in case 2
    _write_nifti(tmp_path / "ds" / "labelsTr" / "case1.nii.gz", _volume(gt1))
    _write_nifti(tmp_path / "ds" / "labelsTr" / "case2.nii.gz", _volume(gt2))
    meta = {"labels": {"background": 0, "liver": 1, "spleen": 2}, "channel_names": {"0": "CT"}}
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(meta))
    return tmp_path / "ds" / "labelsTr", gt1, gt2


def test_folders_match_cases_and_names_and_average(tmp_path, dataset):
    gt_dir, gt1, gt2 = dataset
    a, b = _cubes()
    pred_dir = tmp_path / "pred"
    # case 1 as a .seg.nrrd with other value assignments and name spelling: liver shifted by
    # one voxel (Dice 0.75), spleen exact (1.0); case 2 a NIfTI named by the GT's values:
    # liver exact, no spleen in either (1.0 by convention)
    pred1 = np.zeros(SHAPE, np.uint8)
    pred1[b] = 7
    pred1[gt1 == 2] = 3
    write_seg_nrrd(pred_dir / "case1.seg.nrrd", _volume(pred1),
                   [SegmentInfo("Liver", 7, (1, 0, 0)), SegmentInfo("SPLEEN", 3, (0, 1, 0))])
    _write_nifti(pred_dir / "case2_0000.nii.gz", _volume(gt2))
    result = evaluate_folders(pred_dir, gt_dir, tolerance_mm=2.0)
    assert result.organs == ["liver", "spleen"]
    assert [c.case_id for c in result.cases] == ["case1", "case2"]
    scores = {c.case_id: c.organs for c in result.cases}
    assert scores["case1"]["liver"].dice == pytest.approx(0.75)
    assert scores["case1"]["spleen"].dice == pytest.approx(1.0)
    assert scores["case2"]["spleen"].dice == 1.0 and scores["case2"]["spleen"].nsd == 1.0
    means = result.organ_means()
    assert means["liver"].dice == pytest.approx((0.75 + 1.0) / 2)
    assert result.mean().dice == pytest.approx(((0.75 + 1.0) / 2 + 1.0) / 2)

    table = result.to_markdown().splitlines()
    assert table[2] == "| Organ | Dice (%) | NSD (%) |"
    assert table[4] == "| liver | 87.50 | 100.00 |"  # 1 voxel offset is within 2 mm
    assert table[5] == "| spleen | 100.00 | 100.00 |"
    assert table[-1] == "| **Mean** | 93.75 | 100.00 |"
    rows = result.to_csv().splitlines()
    assert rows[0] == "case,organ,dice,nsd,missing_prediction"
    assert "case1,liver,0.750000,1.000000,0" in rows
    assert rows[-1] == "mean,mean,0.937500,1.000000,"


def test_prediction_on_another_grid_is_resampled_in_patient_space(tmp_path, dataset):
    gt_dir, gt1, gt2 = dataset
    pred_dir = tmp_path / "pred"
    # the same labels at twice the resolution along i (half the spacing), same origin corner
    fine = np.repeat(gt1, 2, axis=2)
    fine_volume = Volume(fine, (0.5, 1.0, 1.0), (5.0 + 0.25, -3.0, 10.0),
                         np.diag([-1.0, -1.0, 1.0]))
    _write_nifti(pred_dir / "case1.nii.gz", fine_volume)
    _write_nifti(pred_dir / "case2.nii.gz", _volume(gt2))
    result = evaluate_folders(pred_dir, gt_dir, labels={"liver": 1, "spleen": 2})
    assert result.mean().dice == pytest.approx(1.0)


def test_missing_prediction_is_an_error_or_scored_empty(tmp_path, dataset):
    gt_dir, _, gt2 = dataset
    pred_dir = tmp_path / "pred"
    _write_nifti(pred_dir / "case2.nii.gz", _volume(gt2))
    _write_nifti(pred_dir / "other.nii.gz", _volume(gt2))
    with pytest.raises(DatasetError, match="No prediction.*case1.*--allow-missing"):
        evaluate_folders(pred_dir, gt_dir)
    result = evaluate_folders(pred_dir, gt_dir, allow_missing=True)
    case1 = result.cases[0]
    assert case1.missing and case1.organs["liver"].dice == 0.0
    assert result.unmatched_predictions == ["other"]


def test_ground_truth_without_names_is_an_error(tmp_path):
    a, _ = _cubes()
    _write_nifti(tmp_path / "gt" / "c.nii.gz", _volume(a))
    _write_nifti(tmp_path / "pred" / "c.nii.gz", _volume(a))
    with pytest.raises(DatasetError, match="No organ names.*--dataset-json"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "liver"}))
    result = evaluate_folders(tmp_path / "pred", tmp_path / "gt", dataset_json=names)
    assert result.organs == ["liver"] and result.mean().dice == 1.0


def test_evaluate_command_prints_and_writes_the_table(tmp_path, dataset, capsys):
    gt_dir, gt1, gt2 = dataset
    pred_dir = tmp_path / "pred"
    _write_nifti(pred_dir / "case1.nii.gz", _volume(gt1))
    _write_nifti(pred_dir / "case2.nii.gz", _volume(gt2))
    md, out_csv = tmp_path / "out" / "table.md", tmp_path / "out" / "scores.csv"
    code = main(["evaluate", str(pred_dir), str(gt_dir), "--tolerance-mm", "1",
                 "--out-md", str(md), "--out-csv", str(out_csv)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| **Mean** | 100.00 | 100.00 |" in printed and "tolerance 1 mm" in printed
    assert md.read_text() == printed
    assert out_csv.read_text().startswith("case,organ,dice,nsd")
    assert main(["evaluate", str(tmp_path / "nowhere"), str(gt_dir)]) == 2
