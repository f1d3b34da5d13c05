"""The Logic's Auto-segment against Slicer's real core, on the shared real CT seeded by its
TotalSegmentator labels (cut to a few slices, to keep the test fast), run by a real child
engine process (random-init SAM 2.1 tiny at 256 px) or a remote server alike: the segments
equal the engine's own in-process result voxel for voxel, stage outputs and boxes are shown,
one undo step, locked segments untouched, and the DICOM-SEG algorithm type follows who made
the segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from sam2refine.auto.pipeline import auto_segment
from sam2refine.auto.sources import LabelFilePromptSource
from sam2refine.image.reading import load_volume
from sam2refine.sam.session import Session
from tests.slicer.conftest import open_logic

ORGAN = "gallbladder"
ARGS = {"organs": [ORGAN], "stages": 2, "margin": 1}
KEPT = {4: (7, 9), 8: (18, 19)}  # label (gallbladder, right adrenal gland) -> slices kept


@pytest.fixture(scope="module")
def paths(totalseg_dir, tmp_path_factory):
    """The CT, and its labels cut down to the KEPT slices (names from labels.json beside)."""
    import shutil

    import SimpleITK as sitk

    ct, labels = totalseg_dir / "example_ct_sm.nii.gz", totalseg_dir / "example_seg.nii.gz"
    volume = load_volume(labels)
    short = np.zeros_like(volume.voxels)
    for value, (first, last) in KEPT.items():
        short[first: last + 1][volume.voxels[first: last + 1] == value] = value
    folder = tmp_path_factory.mktemp("labels")
    shutil.copy(totalseg_dir / "labels.json", folder / "labels.json")
    sitk.WriteImage(volume.with_voxels(short).to_sitk(), str(folder / "short.nii.gz"))
    return ct, folder / "short.nii.gz"


@pytest.fixture(scope="module")
def reference(tiny_model, paths):
    """The engine alone: what the segment must equal."""
    ct, labels = paths
    return auto_segment(Session(tiny_model, load_volume(ct)), None,
                        LabelFilePromptSource(labels), **ARGS)


@pytest.fixture(scope="module")
def scenario(slicer_core, module, engine, paths):
    slicer_core.scene.Clear(0)
    node = slicer_core.load_volume(paths[0])
    logic = open_logic(module, slicer_core.scene, engine, node)
    steps = []
    message = logic.autoSegment(str(paths[1]), progress=lambda d, t: steps.append((d, t)),
                                **ARGS)
    yield logic, node, message, steps
    logic.closeSession()


def segment_id(logic, name):
    return logic.segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)


def test_segments_equal_the_engine_result_and_stages_are_shown(scenario, reference):
    from SAM2RefineLib.segments import read_segment, tag

    logic, node, message, steps = scenario
    assert message.startswith("Auto-segmented 1 organ(s) from the label file short.nii.gz")
    assert steps[-1] == (1000, 1000) and len(steps) > 3  # progress while the server worked
    organ = reference.prompts[ORGAN]
    seg = segment_id(logic, ORGAN)
    expected = reference.final.label_volume.voxels == organ.obj_id
    assert expected.any()
    np.testing.assert_array_equal(logic.segmentMask(seg), expected)
    segment = logic.segmentationNode.GetSegmentation().GetSegment(seg)
    assert "Gallbladder" in tag(segment, segment.GetTerminologyEntryTagName())
    assert logic.objectIds[seg] == organ.obj_id
    # Earlier stages in segmentation nodes of their own, the proposals' boxes as ROIs.
    for title, stage in (("proposals", reference.unet), ("stage 1", reference.stage1)):
        shown = logic.scene.GetFirstNodeByName(f"CT auto {title}")
        shown_id = shown.GetSegmentation().GetSegmentIdBySegmentName(ORGAN)
        np.testing.assert_array_equal(read_segment(shown, shown_id, node),
                                      stage.label_volume.voxels == organ.obj_id)
    rois = logic.scene.GetNodesByClass("vtkMRMLMarkupsROINode")
    names = sorted(rois.GetItemAsObject(n).GetName() for n in range(rois.GetNumberOfItems()))
    expected_names = ([f"{ORGAN} box"] if len(organ.key_frames) == 1 else
                      [f"{ORGAN} box slice {f}" for f in organ.key_frames])
    assert names == sorted(expected_names)
    assert logic.undoStack.labels() == ["Auto-segment"]


def test_dicom_seg_algorithm_type_follows_who_made_it(scenario, monkeypatch, tmp_path):
    from SAM2RefineLib import backends
    from SAM2RefineLib.tasks import Task

    logic, node, _, _ = scenario
    seen = []

    def export(*args, algorithm_type, **kwargs):
        seen.append(algorithm_type)
        return Task("export", lambda task: iter(()))
    monkeypatch.setattr(backends, "export_dicom_seg_task", export)
    logic.exportDicomSeg(tmp_path / "a.dcm", tmp_path)
    assert logic.algorithmType() == "AUTOMATIC" and seen == ["AUTOMATIC"]
    # Undo takes the whole auto-segment back: the segment it created, shown nodes, its objects.
    created = segment_id(logic, ORGAN)
    obj = logic.objectIds[created]
    logic.undo()
    assert not segment_id(logic, ORGAN)
    assert created not in logic.objectIds
    assert obj not in {o.obj_id for o in logic.session.describe()}
    assert logic.scene.GetNodesByClass("vtkMRMLMarkupsROINode").GetNumberOfItems() == 0
    assert logic.scene.GetFirstNodeByName("CT auto proposals") is None
    # A person prompting makes it semi-automatic.
    organ = logic.addSegment(ORGAN)
    from SAM2RefineLib.volumes import ijk_to_ras

    positive = logic.pointNodes(organ)[0]
    positive.AddControlPoint(*(ijk_to_ras(node) @ np.array([77, 57, 24, 1.0]))[:3])
    logic.addPoints(organ)
    logic.exportDicomSeg(tmp_path / "b.dcm", tmp_path)
    assert seen == ["AUTOMATIC", "SEMIAUTOMATIC"]


def test_locked_segments_are_left_alone(core, start_logic, paths):
    from SAM2RefineLib.segments import write_segment

    node = core.load_volume(paths[0])
    logic = start_logic(core.scene, node)
    same_name, manual = logic.addSegment("Gallbladder"), logic.addSegment("manual")
    painted = np.zeros(logic.volume.voxels.shape, bool)
    painted[18:20, 30:60, :] = True  # over part of the right adrenal gland (axial frame = k)
    write_segment(logic.segmentationNode, manual, node, painted)
    write_segment(logic.segmentationNode, same_name, node, painted[::-1].copy())
    for seg in (same_name, manual):
        logic.setSegmentLocked(seg)
    earlier = logic.addSegment("adrenal_gland_right")  # unlocked: auto-segment replaces it
    drawn = np.zeros_like(painted)
    drawn[5:7, 10:20, 10:20] = True
    write_segment(logic.segmentationNode, earlier, node, drawn)
    message = logic.autoSegment(str(paths[1]), organs=[ORGAN, "adrenal_gland_right"],
                                stages=1, margin=0, showStages=False)
    assert "left locked segment(s) alone: gallbladder" in message
    np.testing.assert_array_equal(logic.segmentMask(same_name), painted[::-1])
    np.testing.assert_array_equal(logic.segmentMask(manual), painted)
    adrenal = segment_id(logic, "adrenal_gland_right")
    engine = logic.session.object_mask(logic.objectIds[adrenal])
    assert (engine & painted).any() and (engine & ~painted).any()  # SAM 2 overlapped it
    np.testing.assert_array_equal(logic.segmentMask(adrenal), engine & ~painted)
    assert len(logic.session.describe()) == 1  # the skipped organ's object is gone
    assert core.scene.GetFirstNodeByName("CT auto proposals") is None
    # Undo gives a segment that existed before its earlier content back and keeps it.
    assert adrenal == earlier
    logic.undo()
    assert segment_id(logic, "adrenal_gland_right") == earlier
    np.testing.assert_array_equal(logic.segmentMask(earlier), drawn)
    np.testing.assert_array_equal(logic.segmentMask(manual), painted)


def test_auto_segment_runs_on_a_remote_server_too(core, module, engine, tiny_model, paths,
                                                  reference):
    """The same step against a server at a URL (Slicer's remote mode): the same segments."""
    from sam2refine.remote.server import ServerThread, create_app

    expected = reference.final.label_volume.voxels == reference.prompts[ORGAN].obj_id
    with ServerThread(create_app(tiny_model)) as url:
        logic = open_logic(module, core.scene, engine)
        logic.startSession(core.load_volume(paths[0]), serverUrl=url)
        logic.autoSegment(str(paths[1]), showStages=False, **ARGS)
        np.testing.assert_array_equal(logic.segmentMask(segment_id(logic, ORGAN)), expected)
        logic.closeSession()
