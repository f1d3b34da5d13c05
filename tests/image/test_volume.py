"""Volume geometry, reading with SimpleITK, clear errors, and label resampling."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sam2refine.errors import VolumeError
from sam2refine.image.labels import load_label_volume, resample_to
from sam2refine.image.reading import load_volume
from sam2refine.image.volume import Volume
from tests.conftest import rotation

OBLIQUE = np.diag([-1.0, -1.0, 1.0]) @ rotation(2, 12.0) @ rotation(0, 7.0)


def _volume(shape_kji=(6, 7, 8), direction=OBLIQUE, dtype=np.int16, seed: int = 0) -> Volume:
    voxels = np.random.default_rng(seed).integers(-100, 100, shape_kji).astype(dtype)
    return Volume(voxels, (0.7, 0.9, 2.5), (12.5, -30.25, 101.0), direction)


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, prefix: str) -> None:
    """Write a 3D int16 image as one DICOM file per slice (a minimal CT series)."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(str(v) for v in (*direction[0::3], *direction[1::3]))
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0037": orientation,
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(slice_)


# ----- geometry --------------------------------------------------------------------------------
def test_index_and_patient_coordinates_round_trip_and_match_simpleitk():
    volume = _volume()
    image = volume.to_sitk()
    ijk = np.random.default_rng(1).uniform(-1, 9, (25, 3))
    lps = volume.index_to_lps(ijk)
    expected = [image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in ijk]
    np.testing.assert_allclose(lps, expected, atol=1e-9)
    np.testing.assert_allclose(volume.lps_to_index(lps), ijk, atol=1e-9)
    ras = volume.index_to_ras(ijk)
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-12)
    np.testing.assert_allclose(volume.ras_to_index(ras), ijk, atol=1e-9)
    np.testing.assert_allclose(volume.index_to_lps([0, 0, 0]), volume.origin)
    assert volume.index_to_lps(ijk.reshape(5, 5, 3)).shape == (5, 5, 3)


def test_simpleitk_round_trip_keeps_voxels_and_geometry():
    volume = _volume()
    assert volume.shape_ijk == (8, 7, 6)
    back = Volume.from_sitk(volume.to_sitk())
    np.testing.assert_array_equal(back.voxels, volume.voxels)
    assert back.same_geometry(volume, tol=1e-12)
    assert back.voxels.dtype == np.int16
    mask = volume.with_voxels(volume.voxels > 0)
    assert Volume.from_sitk(mask.to_sitk()).voxels.dtype == np.uint8


def test_with_voxels_and_same_geometry():
    volume = _volume()
    labels = volume.with_voxels(np.zeros(volume.voxels.shape, np.uint8))
    assert labels.same_geometry(volume)
    assert labels.direction is not volume.direction
    with pytest.raises(VolumeError, match="does not fit"):
        volume.with_voxels(np.zeros((6, 7, 9)))
    shifted = Volume(volume.voxels, volume.spacing, np.add(volume.origin, 0.01), OBLIQUE)
    assert not shifted.same_geometry(volume)
    assert shifted.same_geometry(volume, tol=0.1)
    with pytest.raises(VolumeError, match="3D"):
        Volume(np.zeros((4, 4)), (1, 1, 1), (0, 0, 0), np.eye(3))


# ----- reading ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_every_file_format_keeps_its_geometry(tmp_path, suffix):
    volume = _volume(direction=rotation(1, 20.0) @ np.diag([1.0, -1.0, 1.0]))
    path = _write(volume.to_sitk(), tmp_path / f"image{suffix}")
    loaded = load_volume(path)
    np.testing.assert_array_equal(loaded.voxels, volume.voxels)
    assert loaded.same_geometry(volume, tol=1e-5)


def test_shared_nifti_keeps_spacing_origin_direction(totalseg_dir):
    path = totalseg_dir / "example_ct_sm.nii.gz"
    volume = load_volume(path)
    image = sitk.ReadImage(str(path))
    assert volume.shape_ijk == (122, 101, 30)
    np.testing.assert_allclose(volume.spacing, (3.0, 3.0, 3.0))
    np.testing.assert_allclose(volume.origin, image.GetOrigin())
    np.testing.assert_allclose(volume.direction, np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(volume.voxels, sitk.GetArrayFromImage(image))


def test_shared_jpeg2000_dicom_series_keeps_its_geometry(totalseg_dir):
    folder = totalseg_dir / "example_ct_dicom"
    volume = load_volume(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    assert volume.shape_ijk == (512, 512, 20)
    np.testing.assert_allclose(volume.spacing, (0.9765625, 0.9765625, 2.0))
    np.testing.assert_allclose(volume.origin, image.GetOrigin())
    np.testing.assert_allclose(volume.direction, np.eye(3))
    np.testing.assert_array_equal(volume.voxels, sitk.GetArrayFromImage(image))
    assert volume.voxels.min() == -1024  # rescaled to Hounsfield units


def test_dicom_folder_with_two_series_needs_a_series_uid(tmp_path):
    """Never the largest silently: the user picks by SeriesInstanceUID, listed in the error."""
    small = _volume((3, 16, 16), direction=np.eye(3), seed=1)
    big = _volume((5, 16, 16), direction=np.eye(3), seed=2)
    _write_dicom_series(small.to_sitk(), tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.7", "a")
    _write_dicom_series(big.to_sitk(), tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.9", "b")
    with pytest.raises(VolumeError, match=r"holds 2 image series: .*1125\.7 \(3 images\).*"
                                          r"1125\.9 \(5 images\).*--series"):
        load_volume(tmp_path / "dicom")
    loaded = load_volume(tmp_path / "dicom", series="1.2.826.0.1.3680043.2.1125.9")
    assert loaded.shape_ijk == (16, 16, 5)
    np.testing.assert_array_equal(loaded.voxels, big.voxels)
    np.testing.assert_allclose(loaded.origin, big.origin, atol=1e-4)
    np.testing.assert_allclose(loaded.spacing, big.spacing, atol=1e-4)
    assert load_volume(tmp_path / "dicom", series="1.2.826.0.1.3680043.2.1125.7").shape_ijk == (
        16, 16, 3)
    with pytest.raises(VolumeError, match="no image series 1.2.3"):
        load_volume(tmp_path / "dicom", series="1.2.3")


def test_four_d_image_with_one_time_point_is_accepted(tmp_path):
    volume = _volume(direction=np.eye(3))
    path = _write(sitk.JoinSeries([volume.to_sitk()]), tmp_path / "one_time_point.nii.gz")
    loaded = load_volume(path)
    np.testing.assert_array_equal(loaded.voxels, volume.voxels)


# ----- reading errors --------------------------------------------------------------------------
def _corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image" * 20))
    return path


def _truncated(name: str):
    def make(tmp_path: Path) -> Path:
        path = _write(_volume().to_sitk(), tmp_path / name)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        return path

    return make


def _image(array: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(array)


ERROR_CASES = {
    "missing": (lambda p: p / "nothing_here.nii.gz", "not found"),
    "corrupt": (_corrupt, r"Cannot read .*broken\.nii\.gz"),
    "text file": (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt",
                  "not a readable image"),
    "cut-off .nii": (_truncated("cut.nii"), "incomplete.*cut off"),
    "cut-off .nii.gz": (_truncated("cut.nii.gz"), "incomplete.*cut off"),
    "cut-off .nrrd": (_truncated("cut.nrrd"), "damaged or incomplete"),
    "2D": (lambda p: _write(_image(np.arange(12.0).reshape(3, 4)), p / "a.nii.gz"), "2D image"),
    "one slice": (lambda p: _write(_image(np.arange(12.0).reshape(1, 3, 4)), p / "s.nrrd"),
                  "2D image"),
    "4D": (lambda p: _write(sitk.JoinSeries([_image(np.arange(24.0).reshape(2, 3, 4))] * 3),
                            p / "t.nii.gz"), "4D image.*time point"),
    "vector": (lambda p: _write(sitk.GetImageFromArray(np.ones((2, 3, 4, 3)), isVector=True),
                                p / "rgb.mha"), "multi-component.*single 3D scalar"),
    "NaN": (lambda p: _write(_image(np.where(np.arange(24).reshape(2, 3, 4) % 5, 1.0, np.nan)),
                             p / "nan.mha"), "5 voxel.*NaN"),
    "inf": (lambda p: _write(_image(np.where(np.arange(24).reshape(2, 3, 4) == 3, np.inf, 1.0)),
                             p / "inf.mha"), "1 voxel.*infinite"),
    "constant": (lambda p: _write(_image(np.full((2, 3, 4), 7, np.int16)), p / "c.nii.gz"),
                 "same value.*nothing to segment"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_unusable_inputs_get_clear_errors(tmp_path, case):
    make, message = ERROR_CASES[case]
    path = make(tmp_path)
    with pytest.raises(VolumeError, match=message):
        load_volume(path)


def test_folders_without_dicom_get_their_own_messages(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VolumeError, match="is empty"):
        load_volume(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("no images here")
    with pytest.raises(VolumeError, match="No DICOM series found"):
        load_volume(other)
    (tmp_path / "nested" / "series").mkdir(parents=True)
    (tmp_path / "nested" / "series" / "x.txt").write_text("x")
    with pytest.raises(VolumeError, match="subfolders"):
        load_volume(tmp_path / "nested")


# ----- labels ----------------------------------------------------------------------------------
def test_labels_on_the_same_grid_are_kept_exactly(totalseg_dir):
    reference = load_volume(totalseg_dir / "example_ct_sm.nii.gz")
    labels = load_label_volume(totalseg_dir / "example_seg.nii.gz", reference)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_dir / "example_seg.nii.gz")))
    assert labels.same_geometry(reference)
    np.testing.assert_array_equal(labels.voxels, expected)


def test_flipped_dicom_labels_line_up_in_patient_space(totalseg_dir):
    reference = load_volume(totalseg_dir / "example_ct_dicom")
    path = totalseg_dir / "example_seg_dicom.nii.gz"
    raw = Volume.from_sitk(sitk.ReadImage(str(path)))
    assert raw.direction[1, 1] == -1  # the trap: same array shape, y axis the other way
    labels = load_label_volume(path, reference)
    assert labels.same_geometry(reference)
    assert labels.voxels.dtype == raw.voxels.dtype
    np.testing.assert_array_equal(labels.voxels, raw.voxels[:, ::-1, :])
    # The label at a physical point is the same before and after resampling.
    for kji in np.argwhere(raw.voxels > 0)[:: 5000]:
        lps = raw.index_to_lps(kji[::-1])
        i, j, k = np.rint(reference.lps_to_index(lps)).astype(int)
        assert labels.voxels[k, j, i] == raw.voxels[tuple(kji)]
    assert set(np.unique(labels.voxels)) == set(np.unique(raw.voxels))


def test_resampling_onto_a_finer_oblique_grid_keeps_label_values():
    coarse = Volume(np.zeros((4, 5, 6), np.uint16), (2.0, 2.0, 3.0), (0, 0, 0), np.eye(3))
    coarse.voxels[1:3, 1:4, 2:5] = 300
    coarse.voxels[3, 4, 5] = 7
    fine = Volume(np.zeros((12, 12, 14), np.int16), (1.0, 1.0, 1.0), (-1.0, -1.0, -1.0),
                  rotation(2, 3.0))
    out = resample_to(coarse, fine)
    assert out.same_geometry(fine)
    assert out.voxels.dtype == np.uint16
    assert set(np.unique(out.voxels)) <= {0, 7, 300}
    centre = coarse.index_to_lps([3, 2, 1.5])
    i, j, k = np.rint(fine.lps_to_index(centre)).astype(int)
    assert out.voxels[k, j, i] == 300


def test_label_marker_value_is_not_confused_with_outside():
    label = Volume(np.full((2, 2, 2), 255, np.uint8), (1, 1, 1), (0, 0, 0), np.eye(3))
    label.voxels[0, 0, 0] = 0
    reference = Volume(np.zeros((2, 2, 4)), (1, 1, 1), (0, 0, 0), np.eye(3))
    out = resample_to(label, reference)
    assert out.voxels.dtype == np.uint8
    np.testing.assert_array_equal(out.voxels[:, :, :2], label.voxels)
    assert not out.voxels[:, :, 2:].any()


def test_float_label_files_are_accepted_when_integer_valued(tmp_path):
    reference = _volume(direction=np.eye(3))
    values = np.zeros(reference.voxels.shape, np.float32)
    values[2:4, 2:5, 3:6] = 2.0
    label = reference.with_voxels(values)
    loaded = load_label_volume(_write(label.to_sitk(), tmp_path / "float.nii.gz"), reference)
    assert np.issubdtype(loaded.voxels.dtype, np.integer)
    np.testing.assert_array_equal(loaded.voxels, values.astype(int))
    values[0, 0, 0] = 0.5
    path = _write(reference.with_voxels(values).to_sitk(), tmp_path / "soft.nii.gz")
    with pytest.raises(VolumeError, match="non-integer.*not a label map"):
        load_label_volume(path, reference)


def test_labels_that_miss_the_image_are_rejected(tmp_path):
    reference = _volume(direction=np.eye(3))
    far = Volume(np.ones((3, 3, 3), np.uint8), (1, 1, 1), (500.0, 500.0, 500.0), np.eye(3))
    path = _write(far.to_sitk(), tmp_path / "other_patient.nii.gz")
    with pytest.raises(VolumeError, match="does not overlap.*different scan"):
        load_label_volume(path, reference)
    with pytest.raises(VolumeError, match="does not overlap"):
        resample_to(far, reference)


def test_label_files_must_be_3d_scalar(tmp_path):
    reference = _volume(direction=np.eye(3))
    two_d = _write(_image(np.ones((3, 4), np.uint8)), tmp_path / "flat.nii.gz")
    with pytest.raises(VolumeError, match="2D image"):
        load_label_volume(two_d, reference)
    vector = _write(sitk.GetImageFromArray(np.ones((2, 3, 4, 2), np.uint8), isVector=True),
                    tmp_path / "vec.nrrd")
    with pytest.raises(VolumeError, match="multi-component"):
        load_label_volume(vector, reference)
    with pytest.raises(VolumeError, match="not found"):
        load_label_volume(tmp_path / "missing.nii.gz", reference)
