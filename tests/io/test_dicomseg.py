"""DICOM-SEG export: conformance (dciodvfy), read-back by dcmqi and highdicom, UID handling.

A real CT series with proper UIDs is built from the shared NIfTI CT (in standard DICOM axial
orientation, while the labels stay in the NIfTI's flipped orientation, so every comparison
goes through patient space).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from sam2refine.cli.main import main
from sam2refine.errors import ExportError
from sam2refine.image.labels import resample_to
from sam2refine.image.reading import load_volume
from sam2refine.image.volume import Volume
from sam2refine.io.colors import default_color
from sam2refine.io.dicom_reference import (
    map_to_reference,
    read_reference_series,
    recover_instance_uids,
)
from sam2refine.io.dicomseg import export_dicom_seg
from sam2refine.io.segmentation import SegmentInfo, write_nifti_labelmap, write_seg_nrrd
from sam2refine.io.terminology import codes_for_segment, load_table, lookup
from tests.conftest import make_phantom, rotation

ORGANS = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left", 7: "pancreas",
          52: "aorta", 63: "inferior_vena_cava", 64: "portal_vein_and_splenic_vein"}


# ----- helpers ---------------------------------------------------------------------------------
def write_dicom_series(volume: Volume, folder: Path) -> dict[str, str]:
    """Write ``volume`` as a single-frame CT series with real UIDs; returns the shared UIDs.

    Files are named in reverse slice order, so readers must sort by position, not by name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uids = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
            "FrameOfReferenceUID": generate_uid()}
    n = volume.voxels.shape[0]
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "Test^Phantom", "SAM2R-TEST", "", "O")
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "tests", 1, k + 1
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "ABDOMEN"
        for key, value in uids.items():
            setattr(ds, key, value)
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in volume.index_to_lps([0, 0, k])]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in volume.direction[:, :2].T.ravel()]
        ds.PixelSpacing = [volume.spacing[1], volume.spacing[0]]
        ds.SliceThickness = volume.spacing[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.voxels.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.KVP, ds.AcquisitionNumber = 0, 1, "", 1
        ds.PixelData = volume.voxels[k].astype("<i2").tobytes()
        ds.save_as(folder / f"img_{n - 1 - k:04d}.dcm", enforce_file_format=True)
    return uids


def standard_axial(volume: Volume) -> Volume:
    """The same voxels on a grid with identity direction (axes flipped as needed)."""
    flips = [volume.direction[a, a] < 0 for a in range(3)]  # i, j, k
    assert np.allclose(np.abs(volume.direction), np.eye(3))
    voxels = volume.voxels[tuple(slice(None, None, -1 if flips[2 - ax] else 1) for ax in range(3))]
    corner = [(volume.shape_ijk[a] - 1) if flips[a] else 0 for a in range(3)]
    return Volume(np.ascontiguousarray(voxels), volume.spacing, volume.index_to_lps(corner),
                  np.eye(3))


def volume_from_affine(array: np.ndarray, affine: np.ndarray) -> Volume:
    """A `Volume` from an array indexed [a0, a1, a2] and a 4x4 index -> LPS affine."""
    columns = affine[:3, [2, 1, 0]]  # our (i, j, k) are the array's axes 2, 1, 0
    spacing = np.linalg.norm(columns, axis=0)
    return Volume(array, spacing, affine[:3, 3], columns / spacing)


def require_tool(name: str) -> str:
    """Path of a command-line tool; a missing tool skips the test, or fails it in CI."""
    beside_python = Path(sys.executable).parent / name  # pip installs dcmqi's tools there
    path = str(beside_python) if beside_python.is_file() else shutil.which(name)
    if path is None:
        message = f"{name} not installed (dciodvfy: apt dicom3tools; dcmqi: pip dcmqi)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# ----- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_series(totalseg_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ct") / "series"
    write_dicom_series(standard_axial(load_volume(totalseg_dir / "example_ct_sm.nii.gz")), folder)
    return folder


@pytest.fixture(scope="module")
def organs(totalseg_dir) -> tuple[Volume, list[SegmentInfo]]:
    """Eight organs of the shared labels on the NIfTI grid, plus one empty segment."""
    labels = Volume.from_sitk(sitk.ReadImage(str(totalseg_dir / "example_seg.nii.gz")))
    voxels = np.where(np.isin(labels.voxels, list(ORGANS)), labels.voxels, 0).astype(np.uint8)
    segments = [SegmentInfo(n, v, default_color(i, n)) for i, (v, n) in enumerate(ORGANS.items())]
    segments.append(SegmentInfo("rib_left_3", 94, (0.9, 0.9, 0.8)))  # declared, no voxel
    return labels.with_voxels(voxels), segments


@pytest.fixture(scope="module")
def exported(ct_series, organs, tmp_path_factory) -> Path:
    labelmap, segments = organs
    out = tmp_path_factory.mktemp("seg") / "organs.dcm"
    assert export_dicom_seg(labelmap, segments, ct_series, out, algorithm_type="AUTOMATIC") == out
    return out


# ----- conformance and read-back ---------------------------------------------------------------
def test_dciodvfy_reports_no_errors(exported, ct_series):
    for file in (exported, next(ct_series.iterdir())):  # our SEG, and the test CT itself
        result = subprocess.run([require_tool("dciodvfy"), str(file)], capture_output=True,
                                text=True, timeout=60)
        lines = (result.stdout + result.stderr).splitlines()
        print("\n".join(lines))  # warnings are allowed; shown with pytest -s
        assert not [ln for ln in lines if ln.startswith("Error")], file


def test_dcmqi_reads_every_segment_back_voxel_for_voxel(exported, organs, tmp_path):
    labelmap, _ = organs
    subprocess.run([require_tool("segimage2itkimage"), "--inputDICOM", str(exported),
                    "--outputDirectory", str(tmp_path), "-p", "seg", "-t", "nrrd"],
                   check=True, capture_output=True, timeout=120)
    meta = json.loads((tmp_path / "seg-meta.json").read_text())
    attributes = [item[0] for item in meta["segmentAttributes"]]
    assert [a["SegmentLabel"] for a in attributes] == list(ORGANS.values())  # empty one left out
    for attr in attributes:
        value = next(v for v, n in ORGANS.items() if n == attr["SegmentLabel"])
        back = Volume.from_sitk(sitk.ReadImage(str(tmp_path / f"seg-{attr['labelID']}.nrrd")))
        on_grid = resample_to(back, labelmap).voxels
        assert np.array_equal(on_grid > 0, labelmap.voxels == value), attr["SegmentLabel"]
        assert attr["SegmentAlgorithmType"] == "AUTOMATIC"
    kidney = attributes[list(ORGANS.values()).index("kidney_left")]
    assert kidney["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == "64033007"
    assert kidney["SegmentedPropertyTypeModifierCodeSequence"]["CodeValue"] == "7771000"


def test_highdicom_reads_every_segment_back_with_codes_and_references(exported, organs,
                                                                      ct_series):
    import highdicom as hd

    labelmap, _ = organs
    seg = hd.seg.segread(str(exported))
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    for number, item in enumerate(seg.SegmentSequence, start=1):
        value = next(v for v, n in ORGANS.items() if n == item.SegmentLabel)
        volume = seg.get_volume(segment_numbers=[number], combine_segments=True)
        back = volume_from_affine(volume.array, volume.affine)
        assert np.array_equal(resample_to(back, labelmap).voxels > 0, labelmap.voxels == value)
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "123037004")
    liver = seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert (liver.CodeValue, liver.CodeMeaning) == ("10200004", "Liver")
    # empty frames omitted: one frame per (segment, slice where the segment has voxels)
    expected = sum(int(np.any(labelmap.voxels == v, axis=(1, 2)).sum()) for v in ORGANS)
    assert seg.NumberOfFrames == expected < len(ORGANS) * labelmap.voxels.shape[0]
    # references: the study, series, frame of reference and instances of the real series
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(ct_series.iterdir())]
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    series_ref = seg.ReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == sources[0].SeriesInstanceUID
    referenced = {i.ReferencedSOPInstanceUID for i in series_ref.ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in sources}


def test_semiautomatic_generic_and_slicer_terminology(ct_series, organs, tmp_path):
    import highdicom as hd

    labelmap, _ = organs
    slicer = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^"
              "Anatomical Structure~SCT^28231008^Gallbladder~^^~Anatomic codes~^^~^^")
    segments = [SegmentInfo("Lesion candidate 1", 5, (1.0, 0.0, 0.0)),
                SegmentInfo("my organ", 1, (0.0, 1.0, 0.0), terminology=slicer)]
    voxels = np.where(np.isin(labelmap.voxels, [1, 5]), labelmap.voxels, 0)
    out = export_dicom_seg(labelmap.with_voxels(voxels), segments, ct_series, tmp_path / "s.dcm",
                           series_description="Liver check")
    seg = hd.seg.segread(str(out))
    first, second = seg.SegmentSequence
    assert first.SegmentAlgorithmType == second.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # generic Tissue
    assert first.SegmentLabel == "Lesion candidate 1"
    assert second.SegmentedPropertyTypeCodeSequence[0].CodeValue == "28231008"  # user's choice
    assert seg.SeriesDescription == "Liver check"


# ----- terminology -----------------------------------------------------------------------------
BTCV = ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach",
        "aorta", "inferior vena cava", "portal vein and splenic vein", "pancreas",
        "right adrenal gland", "left adrenal gland"]
AMOS = ["spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
        "aorta", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum",
        "bladder"]  # AMOS's 15th class, "prostate/uterus", is two organs: generic code


def _verhoeff_ok(number: str) -> bool:
    """SNOMED CT identifiers end in a Verhoeff check digit."""
    d = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
         [2, 3, 4, 0, 1, 7, 8, 9, 5, 6], [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
         [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
         [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
         [8, 7, 6, 5, 9, 3, 2, 1, 0, 4], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
    p = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4]]
    for _ in range(6):
        p.append([p[1][p[-1][k]] for k in range(10)])
    check = 0
    for position, digit in enumerate(reversed(number)):
        check = d[check][p[position % 8][int(digit)]]
    return check == 0


def test_terminology_covers_btcv_amos_and_the_shared_labels(totalseg_dir):
    names = json.loads((totalseg_dir / "labels.json").read_text())
    present = set()
    for file in ("example_seg.nii.gz", "example_seg_dicom.nii.gz"):
        voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_dir / file)))
        present |= {names[str(int(v))] for v in np.unique(voxels) if v}
    print(f"{len(present)} structures in the shared label files:", ", ".join(sorted(present)))
    unmapped = [n for n in [*BTCV, *AMOS, *sorted(present)] if lookup(n).is_generic]
    assert not unmapped
    assert lookup("prostate/uterus").is_generic


def test_terminology_codes_are_real_snomed_codes():
    from pydicom.sr._concepts_dict import concepts  # the DICOM standard's code tables (PS3.16)

    dicom = {}
    for by_code in concepts["SCT"].values():
        for code, (meaning, _) in by_code.items():
            dicom.setdefault(code, set()).add(meaning.lower())
    for entry in set(load_table().values()):
        for term in filter(None, (entry.type, entry.region)):
            assert _verhoeff_ok(term.value) and term.value[-3:-1] == "00", term  # concept ids
            if entry.source == "DICOM":
                assert term.meaning.lower() in dicom.get(term.value, ()), term
        assert entry.source in ("DICOM", "TotalSegmentator")
    assert not _verhoeff_ok("10200005")


def test_terminology_matching_is_tolerant():
    for name in ("Kidney_Left", "left kidney", "KIDNEY-L", "kidney (left)"):
        codes = lookup(name)
        assert (codes.type.value, codes.type_modifier.meaning) == ("64033007", "Left"), name
    rib = lookup("rib_right_11")
    assert (rib.type.meaning, rib.type_modifier.meaning) == ("Rib", "Right")
    assert lookup("lung_middle_lobe_right").type_modifier is None
    assert lookup("Liver").type.value == lookup("liver").type.value == "10200004"
    cyst = lookup("kidney_cyst_left")
    assert (cyst.region.meaning, cyst.region_modifier.meaning) == ("Kidney", "Left")
    assert lookup("tumour 3").type.meaning == "Tissue" and lookup("tumour 3").is_generic
    slicer_default = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^"
                      "85756007^Tissue~SCT^85756007^Tissue~^^~Anatomic codes~^^~^^")
    assert codes_for_segment("liver", slicer_default).type.meaning == "Liver"
    assert codes_for_segment("blob", slicer_default).type.meaning == "Tissue"


# ----- reference series: UIDs, geometry ----------------------------------------------------------
def test_recovers_sop_uids_from_file_meta_only():
    ds = Dataset()
    ds.SOPInstanceUID, ds.SOPClassUID = "", ""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    assert recover_instance_uids(ds) == ["SOPInstanceUID", "SOPClassUID"]
    assert (ds.SOPInstanceUID, ds.SOPClassUID) == ("1.2.3.4.5", CTImageStorage)
    kept = Dataset()
    kept.SOPInstanceUID, kept.SOPClassUID = "1.2.3", CTImageStorage
    kept.file_meta = FileMetaDataset()
    kept.file_meta.MediaStorageSOPInstanceUID = "9.9.9"
    assert recover_instance_uids(kept) == [] and kept.SOPInstanceUID == "1.2.3"
    nothing = Dataset()
    nothing.SOPInstanceUID = ""
    assert recover_instance_uids(nothing) == [] and nothing.SOPInstanceUID == ""


def test_shared_anonymised_series_is_refused_by_name(totalseg_dir, tmp_path):
    series = totalseg_dir / "example_ct_dicom"
    first = pydicom.dcmread(next(series.iterdir()))  # JPEG 2000 decodes through pylibjpeg
    assert first.pixel_array.shape == (512, 512)
    labels = load_volume(series).with_voxels(np.zeros((20, 512, 512), np.uint8))
    labels.voxels[5, 100:200, 100:200] = 1
    with pytest.raises(ExportError) as info:
        export_dicom_seg(labels, [SegmentInfo("liver", 1, (1, 0, 0))], series, tmp_path / "s.dcm")
    message = str(info.value)
    assert "StudyInstanceUID and SeriesInstanceUID" in message and "all 20 files" in message
    assert "SOPInstanceUID and SOPClassUID were recovered" in message
    assert "PACS" in message and not (tmp_path / "s.dcm").exists()


def test_reference_series_sorted_by_position(ct_series, totalseg_dir):
    ref = read_reference_series(ct_series)
    assert ref.grid.same_geometry(load_volume(ct_series).with_voxels(np.zeros((30, 101, 122))))
    z = [float(ds.ImagePositionPatient[2]) for ds in ref.datasets]
    assert z == sorted(z) and ref.datasets[0].InstanceNumber == 1


def test_series_folder_with_a_seg_inside_or_a_missing_slice(ct_series, exported, tmp_path):
    folder = Path(shutil.copytree(ct_series, tmp_path / "series"))
    shutil.copy(exported, folder / "earlier_export.dcm")  # not an image: skipped
    assert len(read_reference_series(folder).datasets) == 30
    (folder / "img_0015.dcm").unlink()
    with pytest.raises(ExportError, match="has a gap: img_0016.dcm and img_0014.dcm"):
        read_reference_series(folder)


@pytest.mark.parametrize("change", ["transpose", "flip"])
def test_oblique_grid_maps_through_patient_space(tmp_path, change):
    phantom = make_phantom((5, 7, 6))
    phantom = Volume(phantom.voxels, phantom.spacing, phantom.origin, rotation(0, 20.0))
    write_dicom_series(phantom, tmp_path / "s")
    ref = read_reference_series(tmp_path / "s")
    if change == "transpose":  # i <-> k swapped in the array, same voxel centres
        other = Volume(phantom.voxels.transpose(2, 1, 0), phantom.spacing[::-1], phantom.origin,
                       phantom.direction[:, ::-1])
    else:  # j reversed
        other = Volume(phantom.voxels[:, ::-1, :], phantom.spacing,
                       phantom.index_to_lps([0, 6, 0]), phantom.direction * [1, -1, 1])
    assert np.array_equal(map_to_reference(other, ref), phantom.voxels)


def test_other_geometry_is_refused_naming_the_mismatch(ct_series, organs, tmp_path):
    labelmap, segments = organs
    segments = segments[:1]
    liver = labelmap.with_voxels(np.where(labelmap.voxels == 5, 5, 0).astype(np.uint8))
    half_slice = Volume(liver.voxels, liver.spacing, np.add(liver.origin, [0, 0, 1.5]),
                        liver.direction)
    beyond = Volume(liver.voxels, liver.spacing, np.add(liver.origin, [0, 0, 60.0]),
                    liver.direction)
    coarse = Volume(liver.voxels, (3.5, 3.0, 3.0), liver.origin, liver.direction)
    tilted = Volume(liver.voxels, liver.spacing, liver.origin, rotation(2, 10) @ liver.direction)
    for volume, expected in ((half_slice, "displaced by 1.5 mm"),
                             (beyond, r"labelled voxel\(s\) lie outside the series"),
                             (coarse, "voxel size 3.5"), (tilted, "orientation differs")):
        with pytest.raises(ExportError, match=expected) as info:
            export_dicom_seg(volume, segments, ct_series, tmp_path / "x.dcm")
        assert "reference series" in str(info.value)
    assert not (tmp_path / "x.dcm").exists()


def test_empty_segmentation_is_refused(ct_series, organs, tmp_path):
    labelmap, segments = organs
    empty = labelmap.with_voxels(np.zeros_like(labelmap.voxels))
    with pytest.raises(ExportError, match="empty"):
        export_dicom_seg(empty, segments, ct_series, tmp_path / "x.dcm")


def test_atomic_write_leaves_no_partial_file(ct_series, organs, tmp_path, monkeypatch):
    import highdicom as hd

    labelmap, segments = organs
    out = tmp_path / "seg.dcm"
    out.write_bytes(b"previous")

    def broken_save(self, path, *args, **kwargs):
        Path(path).write_bytes(b"DICM partial")
        raise OSError("disk full")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", broken_save)
    with pytest.raises(ExportError, match="disk full"):
        export_dicom_seg(labelmap, segments, ct_series, out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]


# ----- command line ----------------------------------------------------------------------------
def test_cli_exports_dicom_seg_from_recorded_series(ct_series, organs, tmp_path, capsys):
    labelmap, segments = organs
    source = tmp_path / "organs.seg.nrrd"
    write_seg_nrrd(source, labelmap, segments,
                   fields={"SAM2Refine_SourceSeries": str(ct_series),
                           "SAM2Refine_AlgorithmType": "SEMIAUTOMATIC"})
    out = tmp_path / "organs.dcm"
    assert main(["export", str(source), "--format", "dicom-seg", "--out", str(out),
                 "--series-description", "CLI test"]) == 0
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SeriesDescription == "CLI test"
    assert {s.SegmentAlgorithmType for s in ds.SegmentSequence} == {"SEMIAUTOMATIC"}
    assert main(["export", str(source), "--out", str(tmp_path / "copy.nii.gz")]) == 0


def test_cli_nifti_needs_reference_series_and_reports_one_line(ct_series, organs, tmp_path,
                                                               capsys, totalseg_dir):
    labelmap, segments = organs
    source = write_nifti_labelmap(tmp_path / "organs.nii.gz", labelmap, segments)
    out = tmp_path / "organs.dcm"
    assert main(["export", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--reference-series" in err and not out.exists()
    shared = str(totalseg_dir / "example_ct_dicom")
    assert main(["export", str(source), "--reference-series", shared, "--out", str(out)]) == 2
    assert "StudyInstanceUID" in capsys.readouterr().err
    assert main(["export", str(source), "--reference-series", str(ct_series), "--out", str(out),
                 "--algorithm-type", "AUTOMATIC"]) == 0
    names = [s.SegmentLabel for s in pydicom.dcmread(out).SegmentSequence]
    assert names == [ORGANS[v] for v in sorted(ORGANS)]  # from the .labels.json sidecar


def test_cli_segment_on_dicom_then_export_finds_the_series(tmp_path, tiny_checkpoint):
    from tests.conftest import TEST_IMAGE_SIZE

    write_dicom_series(standard_axial(make_phantom()), tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    mask = np.zeros(volume.voxels.shape, np.uint8)
    mask[4:8, 14:26, 12:24] = 1
    sitk.WriteImage(volume.with_voxels(mask).to_sitk(), str(tmp_path / "mask.nii.gz"))
    prompts = {"segments": [{"name": "liver", "masks": [{"file": "mask.nii.gz", "mode": "exact",
                                                         "slices": [5]}]}], "range": [5, 6]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    assert main(["segment", str(tmp_path / "ct"), "--prompts", str(tmp_path / "prompts.json"),
                 "--out", str(tmp_path / "seg.seg.nrrd"), "--checkpoint", str(tiny_checkpoint),
                 "--image-size", str(TEST_IMAGE_SIZE), "--device", "cpu"]) == 0
    assert main(["export", str(tmp_path / "seg.seg.nrrd"), "--out", str(tmp_path / "s.dcm")]) == 0
    seg = pydicom.dcmread(tmp_path / "s.dcm")
    source = pydicom.dcmread(next((tmp_path / "ct").iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
