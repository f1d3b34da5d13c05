"""DICOM-SEG as a PACS user meets it (issue 15, cases a-f), on two series made on the fly with
full UIDs: one study, one frame of reference, one grid, different pixels (a soft-tissue and a
bone kernel). Every SEG is read back voxel for voxel by highdicom and by dcmqi and checked by
dciodvfy (no errors), names with accents and CJK characters included.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sam2refine.cli.main import main
from sam2refine.image.labels import read_label_map, resample_to
from sam2refine.image.volume import Volume
from sam2refine.io.dicomseg import export_dicom_seg
from sam2refine.io.seg_nrrd import read_seg_nrrd_file
from sam2refine.io.segmentation import SegmentInfo, write_seg_nrrd
from tests.conftest import TEST_IMAGE_SIZE, make_phantom
from tests.io.test_dicomseg import (
    require_tool,
    standard_axial,
    volume_from_affine,
    write_dicom_series,
)

ACCENTS = "Läsion – rechts (Niere, prä-OP)"
CJK = "肝臓 左葉"
LONG = "Segment with a really long descriptive name that no DICOM label can hold in full"


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> dict:
    """Two series of one scan in one folder, and each alone in its own folder."""
    root = tmp_path_factory.mktemp("two-kernels")
    ct = standard_axial(make_phantom((10, 40, 48), seed=3))
    soft = write_dicom_series(ct, root / "soft")
    bone = write_dicom_series(ct.with_voxels(ct.voxels // 3 + 200), root / "bone")
    for path in sorted((root / "bone").iterdir()):  # the same study and frame of reference
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = soft["StudyInstanceUID"]
        ds.FrameOfReferenceUID = soft["FrameOfReferenceUID"]
        ds.SeriesDescription, ds.SeriesNumber = "bone kernel", 2
        ds.save_as(path, enforce_file_format=True)
    both = root / "both"
    both.mkdir()
    for kernel in ("soft", "bone"):
        for path in sorted((root / kernel).iterdir()):
            (both / f"{kernel}_{path.name}").write_bytes(path.read_bytes())
    organs = np.zeros(ct.voxels.shape, np.uint8)
    organs[2:7, 10:24, 8:20] = 1
    organs[3:9, 20:32, 26:40] = 2
    return {"root": root, "ct": ct, "both": both, "soft": soft["SeriesInstanceUID"],
            "bone": bone["SeriesInstanceUID"], "organs": organs}


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True,
                            text=True, timeout=60)
    return [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")]


def highdicom_masks(path: Path, grid: Volume) -> dict[str, np.ndarray]:
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    masks = {}
    for number, item in enumerate(seg.SegmentSequence, start=1):
        volume = seg.get_volume(segment_numbers=[number], combine_segments=True)
        back = volume_from_affine(volume.array, volume.affine)
        masks[item.SegmentLabel] = resample_to(back, grid).voxels > 0
    return masks


def dcmqi_masks(path: Path, grid: Volume, out: Path) -> dict[str, np.ndarray]:
    out.mkdir(exist_ok=True)
    subprocess.run([require_tool("segimage2itkimage"), "--inputDICOM", str(path),
                    "--outputDirectory", str(out), "-p", "seg", "-t", "nrrd"],
                   check=True, capture_output=True, timeout=120)
    meta = json.loads((out / "seg-meta.json").read_text("utf-8"))
    masks = {}
    for item in meta["segmentAttributes"]:
        attr = item[0]
        back = Volume.from_sitk(sitk.ReadImage(str(out / f"seg-{attr['labelID']}.nrrd")))
        masks[attr["SegmentLabel"]] = resample_to(back, grid).voxels > 0
    return masks


def referenced_series(path: Path) -> str:
    return str(pydicom.dcmread(path).ReferencedSeriesSequence[0].SeriesInstanceUID)


def check_seg(path: Path, grid: Volume, expected: dict[str, np.ndarray], tmp: Path) -> None:
    """dciodvfy clean, and both readers give back exactly the expected masks."""
    assert dciodvfy_errors(path) == []
    for masks in (highdicom_masks(path, grid), dcmqi_masks(path, grid, tmp)):
        assert set(masks) == set(expected)
        for name, mask in expected.items():
            assert np.array_equal(masks[name], mask), name


# ----- (a) two series on one grid -----------------------------------------------------------------
def test_a_segment_records_the_series_and_export_references_it(scan, tiny_checkpoint, tmp_path):
    ct = scan["ct"]
    sitk.WriteImage(ct.with_voxels(scan["organs"]).to_sitk(), str(tmp_path / "coarse.nii.gz"))
    (tmp_path / "p.json").write_text(json.dumps({"segments": [
        {"name": "liver", "masks": [{"file": "coarse.nii.gz", "value": 1, "mode": "exact",
                                     "slices": [4]}]}]}))
    common = ["--prompts", str(tmp_path / "p.json"), "--image-size", str(TEST_IMAGE_SIZE),
              "--device", "cpu", "--checkpoint", str(tiny_checkpoint)]
    assert main(["segment", str(scan["both"]), "--out", str(tmp_path / "s.seg.nrrd"),
                 *common]) == 2  # two series and no --series: never chosen silently
    assert not (tmp_path / "s.seg.nrrd").exists()
    assert main(["segment", str(scan["both"]), "--series", scan["bone"], "--out",
                 str(tmp_path / "s.seg.nrrd"), *common]) == 0
    fields = read_seg_nrrd_file(tmp_path / "s.seg.nrrd").fields
    assert fields["SAM2Refine_SourceSeriesInstanceUID"] == scan["bone"]
    assert main(["export", str(tmp_path / "s.seg.nrrd"), "--out", str(tmp_path / "s.dcm")]) == 0
    assert referenced_series(tmp_path / "s.dcm") == scan["bone"]  # not the soft series
    # the series folder moved: the recorded UID still picks the right one
    assert main(["export", str(tmp_path / "s.seg.nrrd"), "--reference-series",
                 str(scan["root"] / "soft"), "--out", str(tmp_path / "wrong.dcm")]) == 2
    assert main(["export", str(tmp_path / "s.seg.nrrd"), "--reference-series",
                 str(scan["both"]), "--out", str(tmp_path / "t.dcm")]) == 0
    assert referenced_series(tmp_path / "t.dcm") == scan["bone"]
    assert dciodvfy_errors(tmp_path / "t.dcm") == []


def test_a_export_without_a_recorded_series_needs_series_uid(scan, tmp_path, capsys):
    ct = scan["ct"]
    sitk.WriteImage(ct.with_voxels(scan["organs"]).to_sitk(), str(tmp_path / "l.nii.gz"))
    (tmp_path / "l.labels.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    args = ["export", str(tmp_path / "l.nii.gz"), "--reference-series", str(scan["both"])]
    assert main([*args, "--out", str(tmp_path / "x.dcm")]) == 2
    assert "holds 2 image series" in capsys.readouterr().err
    assert main([*args, "--series", scan["soft"], "--out", str(tmp_path / "x.dcm")]) == 0
    assert referenced_series(tmp_path / "x.dcm") == scan["soft"]
    check_seg(tmp_path / "x.dcm", ct, {"liver": scan["organs"] == 1,
                                       "spleen": scan["organs"] == 2}, tmp_path / "q")


# ----- (b) a segmentation Slicer saved cropped to its extent --------------------------------------
def _cropped(scan, path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    ct, organs = scan["ct"], scan["organs"]
    k, j, i = (np.flatnonzero(np.any(organs, axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    box = organs[k[0]:k[-1] + 1, j[0]:j[-1] + 1, i[0]:i[-1] + 1]
    offset = (int(i[0]), int(j[0]), int(k[0]))
    corner = Volume(box, ct.spacing, ct.index_to_lps(offset), ct.direction)
    write_seg_nrrd(path, corner, [SegmentInfo("liver", 1, (1, 0, 0)),
                                  SegmentInfo("spleen", 2, (0, 0, 1))],
                   extent_offset=offset,
                   fields={"Segmentation_ConversionParameters": "Crop to reference image "
                           "geometry|0|Crop the model to the extent of reference geometry."})
    return offset, box


def test_b_cropped_slicer_segmentation_exports_on_the_full_grid(scan, tmp_path):
    offset, box = _cropped(scan, tmp_path / "crop.seg.nrrd")
    assert main(["export", str(tmp_path / "crop.seg.nrrd"), "--reference-series",
                 str(scan["root"] / "soft"), "--out", str(tmp_path / "c.dcm")]) == 0
    organs = scan["organs"]
    check_seg(tmp_path / "c.dcm", scan["ct"], {"liver": organs == 1, "spleen": organs == 2},
              tmp_path / "q")
    # re-export to .seg.nrrd keeps the crop, its offset and Slicer's fields
    assert main(["export", str(tmp_path / "crop.seg.nrrd"), "--out",
                 str(tmp_path / "again.seg.nrrd")]) == 0
    again = read_seg_nrrd_file(tmp_path / "again.seg.nrrd")
    assert again.extent_offset == offset
    assert np.array_equal(again.grid.voxels, box)
    assert np.allclose(again.grid.origin, scan["ct"].index_to_lps(offset))
    assert "Segmentation_ConversionParameters" in again.fields


def test_b_slicer_places_a_cropped_file_where_it_belongs(scan, tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core (test extra) is not installed")
    import vtk
    from vtkmodules.util.numpy_support import vtk_to_numpy

    offset, _ = _cropped(scan, tmp_path / "crop.seg.nrrd")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "crop.seg.nrrd"))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    image = slicer.vtkOrientedImageData()
    assert node.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(0), image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    extent = image.GetExtent()
    dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
    mask = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    ijk = np.argwhere(mask)[:, ::-1] + np.array(extent[0::2])
    ras = (ijk_to_ras @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    expected = scan["ct"].index_to_ras(np.argwhere(scan["organs"] == 1)[:, ::-1])
    key = lambda p: p[np.lexsort(np.round(p, 3).T[::-1])]  # noqa: E731
    assert np.allclose(key(ras), key(expected), atol=1e-4)


# ----- (c) the shared labels.json form and --label-names ------------------------------------------
def test_c_labels_json_and_label_names_name_the_segments(scan, tmp_path):
    ct = scan["ct"]
    sitk.WriteImage(ct.with_voxels(scan["organs"]).to_sitk(), str(tmp_path / "seg.nii.gz"))
    (tmp_path / "labels.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    assert main(["export", str(tmp_path / "seg.nii.gz"), "--reference-series",
                 str(scan["root"] / "soft"), "--out", str(tmp_path / "a.dcm")]) == 0
    assert set(highdicom_masks(tmp_path / "a.dcm", ct)) == {"liver", "spleen"}
    (tmp_path / "names.json").write_text(json.dumps({"labels": {"liver": 1, "kidney_left": 2},
                                                     "name": "nnU-Net style"}))
    assert main(["export", str(tmp_path / "seg.nii.gz"), "--label-names",
                 str(tmp_path / "names.json"), "--reference-series", str(scan["root"] / "soft"),
                 "--out", str(tmp_path / "b.dcm")]) == 0
    check_seg(tmp_path / "b.dcm", ct, {"liver": scan["organs"] == 1,
                                       "kidney_left": scan["organs"] == 2}, tmp_path / "q")
    ds = pydicom.dcmread(tmp_path / "b.dcm")
    kidney = next(s for s in ds.SegmentSequence if s.SegmentLabel == "kidney_left")
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"


# ----- (d) names beyond ASCII, and labels beyond 64 characters ------------------------------------
def test_d_accents_cjk_and_long_names_survive_every_reader(scan, tmp_path, caplog):
    ct, organs = scan["ct"], scan["organs"]
    three = organs.copy()
    three[7:9, 2:6, 2:6] = 3
    segments = [SegmentInfo(ACCENTS, 1, (0.9, 0.3, 0.2)), SegmentInfo(CJK, 2, (0.2, 0.6, 0.9)),
                SegmentInfo(LONG, 3, (0.5, 0.5, 0.5))]
    with caplog.at_level(logging.WARNING, logger="sam2refine"):
        out = export_dicom_seg(ct.with_voxels(three), segments, scan["root"] / "soft",
                               tmp_path / "u.dcm")
    assert any("longer than the 64 characters" in r.getMessage() for r in caplog.records)
    ds = pydicom.dcmread(out)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    short = LONG[:61] + "..."
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [ACCENTS, CJK, short]
    check_seg(out, ct, {ACCENTS: three == 1, CJK: three == 2, short: three == 3},
              tmp_path / "q")
    # .seg.nrrd holds them in UTF-8, as Slicer writes, and reads them back
    write_seg_nrrd(tmp_path / "u.seg.nrrd", ct.with_voxels(three), segments)
    assert [s.name for s in read_seg_nrrd_file(tmp_path / "u.seg.nrrd").segments] == [
        ACCENTS, CJK, LONG]


def test_d_slicer_reads_utf8_segment_names(scan, tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core (test extra) is not installed")
    write_seg_nrrd(tmp_path / "u.seg.nrrd", scan["ct"].with_voxels(scan["organs"]),
                   [SegmentInfo(ACCENTS, 1, (1, 0, 0)), SegmentInfo(CJK, 2, (0, 1, 0))])
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "u.seg.nrrd"))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(2)]
    assert names == [ACCENTS, CJK]


# ----- (e) the message counts what it wrote -------------------------------------------------------
def test_e_the_message_counts_the_segments_written_and_names_the_empty_ones(scan, tmp_path,
                                                                            caplog):
    ct = scan["ct"]
    write_seg_nrrd(tmp_path / "s.seg.nrrd", ct.with_voxels(scan["organs"]),
                   [SegmentInfo("liver", 1, (1, 0, 0)), SegmentInfo("spleen", 2, (0, 1, 0)),
                    SegmentInfo("tumor", 3, (0, 0, 1))])
    with caplog.at_level(logging.INFO, logger="sam2refine"):
        assert main(["export", str(tmp_path / "s.seg.nrrd"), "--reference-series",
                     str(scan["root"] / "soft"), "--out", str(tmp_path / "s.dcm")]) == 0
    wrote = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Wrote")]
    assert wrote and "2 segment(s); 1 empty segment(s) left out: tumor" in wrote[-1]
    assert len(pydicom.dcmread(tmp_path / "s.dcm").SegmentSequence) == 2


# ----- (f) overlapping segments, as Slicer saves them (two layers) --------------------------------
def test_f_overlapping_segments_travel_to_dicom_seg_and_seg_nrrd(scan, tmp_path):
    ct = scan["ct"]
    liver = np.zeros(ct.voxels.shape, np.uint8)
    liver[2:7, 10:24, 8:20] = 1
    tumor = np.zeros(ct.voxels.shape, np.uint8)
    tumor[4:6, 14:20, 12:18] = 1  # inside the liver: overlap
    vessel = np.zeros(ct.voxels.shape, np.uint8)
    vessel[3:8, 25:30, 30:34] = 2  # in the tumor's layer, not overlapping anything
    write_seg_nrrd(tmp_path / "layers.seg.nrrd", [ct.with_voxels(liver),
                                                  ct.with_voxels(tumor + vessel)],
                   [SegmentInfo("liver", 1, (1, 0, 0), layer=0),
                    SegmentInfo("liver tumor", 1, (0, 1, 0), layer=1),
                    SegmentInfo("portal vein", 2, (0, 0, 1), layer=1)])
    assert main(["export", str(tmp_path / "layers.seg.nrrd"), "--reference-series",
                 str(scan["root"] / "soft"), "--out", str(tmp_path / "f.dcm")]) == 0
    check_seg(tmp_path / "f.dcm", ct, {"liver": liver == 1, "liver tumor": tumor == 1,
                                       "portal vein": vessel == 2}, tmp_path / "q")
    assert main(["export", str(tmp_path / "layers.seg.nrrd"), "--out",
                 str(tmp_path / "again.seg.nrrd")]) == 0
    again = read_seg_nrrd_file(tmp_path / "again.seg.nrrd")
    assert len(again.layers) == 2 and [s.layer for s in again.segments] == [0, 1, 1]
    for seg, mask in zip(again.segments, (liver == 1, tumor == 1, vessel == 2)):
        assert np.array_equal(again.mask(seg), mask), seg.name


def test_f_layers_that_do_not_overlap_merge_into_one_label_map(scan, tmp_path):
    ct = scan["ct"]
    first = np.zeros(ct.voxels.shape, np.uint8)
    first[1:3, 1:5, 1:5] = 1
    second = np.zeros(ct.voxels.shape, np.uint8)
    second[6:8, 30:35, 30:35] = 1
    write_seg_nrrd(tmp_path / "l.seg.nrrd", [ct.with_voxels(first), ct.with_voxels(second)],
                   [SegmentInfo("a", 1, (1, 0, 0), layer=0), SegmentInfo("b", 1, (0, 1, 0),
                                                                          layer=1)])
    assert main(["export", str(tmp_path / "l.seg.nrrd"), "--out", str(tmp_path / "l.nii.gz")]) == 0
    labels = read_label_map(tmp_path / "l.nii.gz")  # label values 1 and 2 (renumbered)
    names = json.loads((tmp_path / "l.labels.json").read_text())["labels"]
    assert {v["name"] for v in names.values()} == {"a", "b"}
    b_value = int(next(k for k, v in names.items() if v["name"] == "b"))
    assert np.array_equal(labels.voxels == b_value, second == 1)
