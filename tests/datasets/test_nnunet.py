"""nnU-Net raw datasets: v2 and v1 dataset.json, case discovery, splits and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sam2refine.datasets.nnunet import DatasetCase, read_dataset, split_cases
from sam2refine.errors import DatasetError
from sam2refine.image.volume import Volume

SHAPE = (6, 10, 12)


def _volume(voxels: np.ndarray, spacing=(0.8, 0.9, 3.0), origin=(10.0, -5.0, 2.0)) -> Volume:
    return Volume(voxels, spacing, origin, np.diag([-1.0, -1.0, 1.0]))


def _write(path: Path, volume: Volume) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(path))


def _make_dataset(root: Path, case_ids=("case_a", "case_b", "case_c"), channels=1,
                  labels=None, version=2) -> Path:
    """A small dataset; each case's image is its index * 10 + a ramp, labels a box of 1 and 2."""
    labels = labels or {"liver": 1, "spleen": 2}
    for n, case_id in enumerate(case_ids):
        image = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) + n * 10
        for c in range(channels):
            _write(root / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", _volume(image + c))
        label = np.zeros(SHAPE, np.uint8)
        label[1:3, 2:5, 3:6] = 1
        label[4, 6:8, 6:9] = 2
        _write(root / "labelsTr" / f"{case_id}.nii.gz", _volume(label))
    if version == 2:
        meta = {"channel_names": {str(c): f"CH{c}" for c in range(channels)},
                "labels": {"background": 0, **labels}, "numTraining": len(case_ids),
                "file_ending": ".nii.gz"}
    else:
        meta = {"modality": {str(c): f"CH{c}" for c in range(channels)},
                "labels": {"0": "background", **{str(v): k for k, v in labels.items()}},
                "numTraining": len(case_ids),
                "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                             for c in case_ids]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_reads_v2_dataset_and_loads_first_channel_with_geometry(tmp_path):
    root = _make_dataset(tmp_path, channels=2)
    ds = read_dataset(root)
    assert ds.labels == {"liver": 1, "spleen": 2}
    assert ds.file_ending == ".nii.gz"
    assert [c.case_id for c in ds.cases] == ["case_a", "case_b", "case_c"]
    assert [p.name for p in ds.cases[1].image_paths] == ["case_b_0000.nii.gz",
                                                          "case_b_0001.nii.gz"]
    assert ds.test_cases == []
    image, labels = ds.load_case("case_b")
    assert image.voxels[0, 0, 0] == 10  # channel 0 of case index 1, not channel 1
    assert labels.same_geometry(image)
    np.testing.assert_allclose(image.direction, np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(image.spacing, (0.8, 0.9, 3.0), rtol=1e-6)
    assert int((labels.voxels == 2).sum()) == 6


def test_reads_v1_dataset_json(tmp_path):
    ds = read_dataset(_make_dataset(tmp_path, version=1))
    assert ds.labels == {"liver": 1, "spleen": 2}
    assert len(ds.cases) == 3


def test_v1_training_list_must_match_the_files(tmp_path):
    root = _make_dataset(tmp_path, version=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/case_z.nii.gz",
                             "label": "./labelsTr/case_z.nii.gz"})
    meta["numTraining"] = 3
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="case_z"):
        read_dataset(root)


def test_test_cases_come_from_images_ts(tmp_path):
    root = _make_dataset(tmp_path)
    _write(root / "imagesTs" / "new_0000.nii.gz", _volume(np.ones(SHAPE, np.int16)))
    ds = read_dataset(root)
    assert [(c.case_id, c.label_path) for c in ds.test_cases] == [("new", None)]


def test_missing_dataset_json_names_the_expected_layout(tmp_path):
    root = _make_dataset(tmp_path)
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="nnU-Net raw format: imagesTr/.*labelsTr/.*dataset"):
        read_dataset(root)


def test_image_without_label_is_an_error(tmp_path):
    root = _make_dataset(tmp_path)
    (root / "labelsTr" / "case_b.nii.gz").unlink()
    with pytest.raises(DatasetError, match="without a label.*case_b"):
        read_dataset(root)


def test_missing_channel_file_is_an_error(tmp_path):
    root = _make_dataset(tmp_path, channels=2)
    (root / "imagesTr" / "case_c_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case_c_0001.nii.gz"):
        read_dataset(root)


def test_num_training_mismatch_is_an_error(tmp_path):
    root = _make_dataset(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 5
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="numTraining = 5.*3 labelled"):
        read_dataset(root)


def test_label_values_not_in_dataset_json_are_an_error(tmp_path):
    root = _make_dataset(tmp_path, labels={"liver": 1})
    with pytest.raises(DatasetError, match=r"values \[2\].*does not declare"):
        read_dataset(root).load_case("case_a")


def test_label_on_another_grid_is_refused_not_resampled(tmp_path):
    root = _make_dataset(tmp_path)
    label = np.zeros(SHAPE, np.uint8)
    _write(root / "labelsTr" / "case_a.nii.gz", _volume(label, spacing=(0.8, 0.9, 2.5)))
    with pytest.raises(DatasetError, match="different geometry.*nnU-Net requires identical"):
        read_dataset(root).load_case("case_a")


def test_wrongly_named_image_says_how_nnunet_names_them(tmp_path):
    root = _make_dataset(tmp_path)
    _write(root / "imagesTr" / "case_d.nii.gz", _volume(np.ones(SHAPE, np.int16)))
    with pytest.raises(DatasetError, match="<case>_<channel:0000>"):
        read_dataset(root)


def test_unknown_case_id_lists_the_cases(tmp_path):
    ds = read_dataset(_make_dataset(tmp_path))
    with pytest.raises(DatasetError, match="no case 'nope'.*case_a"):
        ds.load_case("nope")


def test_split_is_reproducible_disjoint_and_order_independent():
    cases = [DatasetCase(f"c{n:02d}", [Path(f"c{n:02d}_0000.nii.gz")], None) for n in range(10)]
    train, val = split_cases(cases, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert {c.case_id for c in train}.isdisjoint(c.case_id for c in val)
    again_train, again_val = split_cases(list(reversed(cases)), 0.2, seed=3)
    assert [c.case_id for c in again_val] == [c.case_id for c in val]
    assert [c.case_id for c in again_train] == [c.case_id for c in train]
    other = {tuple(c.case_id for c in split_cases(cases, 0.2, seed=s)[1]) for s in range(6)}
    assert len(other) > 1  # the seed matters


def test_split_keeps_one_case_on_each_side_and_refuses_one_case():
    train, val = split_cases(["a", "b", "c"], 0.01)
    assert len(val) == 1 and len(train) == 2
    train, val = split_cases(["a", "b"], 0.9)
    assert len(val) == 1 and len(train) == 1
    with pytest.raises(DatasetError, match="at least 2"):
        split_cases(["a"])
