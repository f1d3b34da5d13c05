"""The module's Logic against Slicer's real core (slicer-core: MRML nodes, segmentations,
markups, storage nodes) on the shared real CT, with a real child engine process serving the
random-init SAM 2.1 tiny at 256 px (Slicer's local mode).

Prompts are placed the way a user places them (fiducials and ROIs in RAS), and every result
is compared with an engine `Session` driven directly in voxel coordinates in this process with
the same weights: equal arrays mean the whole chain (volume node -> engine volume -> upload,
markups -> prompts, results -> segment labelmaps on Slicer's grid) is right, voxel for voxel.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from sam2refine.image.reading import load_volume
from sam2refine.sam.session import Session
from tests.slicer.conftest import open_logic

LIVER_POINT = (77, 57, 24)  # ijk, inside the liver (examples/example_ct_sm.prompts.json)
SPLEEN_BOX = ((10, 22, 22), (39, 51, 22))
RANGE = (23, 24)  # a short propagation keeps the test fast on CPU


def ras_of(node, ijk) -> np.ndarray:
    from SAM2RefineLib.volumes import ijk_to_ras

    return (ijk_to_ras(node) @ np.array([*ijk, 1.0]))[:3]


def place_point(node, markups, ijk) -> None:
    markups.AddControlPoint(*ras_of(node, ijk))


def place_roi(core, node, corner_a, corner_b):
    a, b = ras_of(node, corner_a), ras_of(node, corner_b)
    roi = core.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(*((a + b) / 2))
    roi.SetSize(*np.abs(a - b))
    return roi


@pytest.fixture(scope="module")
def ct_path(totalseg_dir):
    return totalseg_dir / "example_ct_sm.nii.gz"


@pytest.fixture(scope="module")
def reference(tiny_model, ct_path):
    """The engine alone, prompted in voxel coordinates: what the segments must equal."""
    session = Session(tiny_model, load_volume(ct_path))
    liver, spleen = session.add_object("liver"), session.add_object("spleen")
    steps = {"points": session.add_points(liver, [LIVER_POINT], [1])[0].mask.copy()}
    steps["box"] = session.set_box(spleen, *SPLEEN_BOX).mask.copy()
    session.propagate(frame_range=RANGE)
    steps["liver"], steps["spleen"] = session.object_mask(liver), session.object_mask(spleen)
    return steps


def run_scenario(core, module, engine, ct_path, **session_args):
    """Points on the liver, a box on the spleen, propagation; returns the states seen."""
    node = core.load_volume(ct_path)
    logic = open_logic(module, core.scene, engine)
    logic.startSession(node, **session_args)
    liver, spleen = logic.addSegment("liver"), logic.addSegment("spleen")
    positive, _ = logic.pointNodes(liver)
    place_point(node, positive, LIVER_POINT)
    states = {"empty": (logic.segmentMask(liver), logic.segmentMask(spleen))}
    points = logic.addPoints(liver)
    states["points"] = (logic.segmentMask(liver), logic.segmentMask(spleen))
    box = logic.setBox(spleen, place_roi(core, node, *SPLEEN_BOX))
    states["box"] = (logic.segmentMask(liver), logic.segmentMask(spleen))
    logic.propagate(frameRange=RANGE)
    states["propagated"] = (logic.segmentMask(liver), logic.segmentMask(spleen))
    return logic, node, (liver, spleen), (points, box), states


@pytest.fixture(scope="module")
def scenario(slicer_core, module, engine, ct_path):
    slicer_core.scene.Clear(0)
    found = run_scenario(slicer_core, module, engine, ct_path)
    yield found
    found[0].closeSession()


def test_volume_node_is_the_engine_volume(core, ct_path):
    from SAM2RefineLib.volumes import ijk_to_ras, ras_matrix_of, volume_from_node, world_to_node

    node = core.load_volume(ct_path)
    volume, expected = volume_from_node(node), load_volume(ct_path)
    np.testing.assert_array_equal(volume.voxels, expected.voxels)
    assert volume.same_geometry(expected)
    np.testing.assert_allclose(ras_matrix_of(volume), ijk_to_ras(node), atol=1e-9)
    # A linear parent transform: world points come back into the volume's own frame.
    transform = core.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    import vtk

    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 12.5)
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(world_to_node(node, [[12.5, 1.0, 2.0]]), [[0.0, 1.0, 2.0]])


def test_prompts_land_on_the_session_voxels(scenario, reference):
    logic, node, (liver, spleen), (points, box), states = scenario
    assert points[0].frame == LIVER_POINT[2] and box.frame == SPLEEN_BOX[0][2]
    np.testing.assert_array_equal(points[0].mask, reference["points"])
    np.testing.assert_array_equal(box.mask, reference["box"])
    liver_after_points = states["points"][0]
    assert liver_after_points.any()
    assert not np.delete(liver_after_points, LIVER_POINT[2], axis=0).any()  # one slice only
    np.testing.assert_array_equal(logic.stack.frames(liver_after_points)[24], reference["points"])
    np.testing.assert_array_equal(states["propagated"][0], reference["liver"])
    np.testing.assert_array_equal(states["propagated"][1], reference["spleen"])
    # Segments carry their names, colours and terminology.
    segment = logic.segmentationNode.GetSegmentation().GetSegment(liver)
    from SAM2RefineLib.segments import tag

    assert segment.GetName() == "liver"
    assert "SCT^10200004^Liver" in tag(segment, segment.GetTerminologyEntryTagName())


def test_seg_nrrd_reads_back_identically(scenario, tmp_path):
    import slicerio

    from sam2refine.io.segmentation import read_seg_nrrd

    logic, node, (liver, spleen), _, _ = scenario
    path = logic.exportSegNrrd(tmp_path / "out.seg.nrrd")
    data = slicerio.read_segmentation(str(path))
    voxels = data["voxels"] if data["voxels"].ndim == 4 else data["voxels"][None]
    by_name = {s["name"]: s for s in data["segments"]}
    assert set(by_name) == {"liver", "spleen"}
    for name, segment_id in (("liver", liver), ("spleen", spleen)):
        info = by_name[name]
        layer = voxels[info["layer"]].transpose(2, 1, 0)  # [i, j, k] -> [k, j, i]
        np.testing.assert_array_equal(layer == info["labelValue"], logic.segmentMask(segment_id))
    np.testing.assert_allclose(np.asarray(data["ijkToLPS"])[:3, 3], logic.volume.origin)
    if voxels.shape[0] == 1:  # single layer: the engine's reader agrees
        back, infos = read_seg_nrrd(path)
        assert back.same_geometry(logic.volume)


def test_undo_restores_each_previous_state(scenario, module, slicer_core):
    logic, node, (liver, spleen), _, states = scenario
    positive, _ = logic.pointNodes(liver)
    assert logic.undoStack.labels() == ["Points on liver", "Box on spleen", "Propagate"]
    for expected in ("box", "points", "empty"):
        logic.undo()
        np.testing.assert_array_equal(logic.segmentMask(liver), states[expected][0])
        np.testing.assert_array_equal(logic.segmentMask(spleen), states[expected][1])
    assert not logic.canUndo()
    assert positive.GetNumberOfControlPoints() == 0  # the undone click is gone
    info = {o.obj_id: o for o in logic.session.describe()}
    assert info[logic.objectIds[liver]].prompted_frames == []  # prompts withdrawn
    assert info[logic.objectIds[spleen]].prompted_frames == []
    with pytest.raises(ValueError, match="Nothing to undo"):
        logic.undo()


def test_locked_segments_are_never_overwritten(core, start_logic, ct_path):
    node = core.load_volume(ct_path)
    logic = start_logic(core.scene, node)
    kept, other = logic.addSegment("liver"), logic.addSegment("stomach")
    painted = np.zeros(logic.volume.voxels.shape, bool)
    painted[24, 40:70, 50:90] = True  # a "manual" segment the AI must not touch
    from SAM2RefineLib.segments import write_segment

    write_segment(logic.segmentationNode, kept, node, painted)
    logic.setMaskFromSegment(kept, mode="exact")
    logic.setSegmentLocked(kept)
    before = logic.segmentMask(kept)
    result = logic.setBox(other, place_roi(core, node, (30, 20, 24), (100, 90, 24)))
    assert result.mask.sum() > 0
    logic.propagate(frameRange=(24, 25))
    np.testing.assert_array_equal(logic.segmentMask(kept), before)
    assert not (logic.segmentMask(other) & before).any()  # locked voxels were not taken
    assert logic.segmentMask(other).any()
    with pytest.raises(ValueError, match="locked"):
        logic.setMaskFromSegment(kept)
    logic.undo()  # the propagation touched only the unlocked segment
    logic.undo()  # the box too
    with pytest.raises(ValueError, match="Unlock liver"):
        logic.undo()  # the mask step changed the now locked segment


def test_exact_mask_prompt_keeps_physical_voxels(core, start_logic, totalseg_dir):
    """An exact mask prompt from real labels (loaded by Slicer's own reader) comes back on
    exactly those voxels when Slicer exports the segment to a labelmap on the label grid."""
    import slicer
    import vtk

    node = core.load_volume(totalseg_dir / "example_ct_sm.nii.gz")
    labels = core.volumes_logic.AddArchetypeVolume(
        str(totalseg_dir / "example_seg.nii.gz"), "labels", 1)
    from SAM2RefineLib.segments import write_segment
    from SAM2RefineLib.volumes import volume_from_node

    liver_labels = volume_from_node(labels).voxels == 5
    logic = start_logic(core.scene, node)
    source, target = logic.addSegment("drawn"), logic.addSegment("liver")
    write_segment(logic.segmentationNode, source, node, liver_labels)
    (result,) = logic.setMaskFromSegment(target, source, mode="exact")
    exported = core.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(target)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        logic.segmentationNode, ids, exported, labels)
    got = volume_from_node(exported).voxels > 0
    expected = np.zeros_like(liver_labels)
    expected[result.frame] = liver_labels[result.frame]  # axial frame = k here
    assert expected.sum() > 500
    np.testing.assert_array_equal(got, expected)
    assert core.scene.GetNodesByClass("vtkMRMLMarkupsROINode").GetNumberOfItems() == 0


def test_remote_server_gives_the_same_segments(core, module, engine, tiny_model, ct_path,
                                               scenario):
    """Remote mode (a server at a URL, with a token) runs the very same steps."""
    from SAM2RefineLib import backends

    from sam2refine.remote.server import ServerThread, create_app

    with ServerThread(create_app(tiny_model, token="secret")) as url:
        logic, node, (liver, spleen), (points, box), states = run_scenario(
            core, module, engine, ct_path, serverUrl=url, token="secret")
        assert logic.link.mode == "remote" and logic.session.client.url == url
        for name in ("points", "box", "propagated"):
            np.testing.assert_array_equal(states[name][0], scenario[4][name][0])
            np.testing.assert_array_equal(states[name][1], scenario[4][name][1])
        logic.undo()
        np.testing.assert_array_equal(logic.segmentMask(liver), scenario[4]["box"][0])
        assert "Connected" in backends.test_connection_task(url, "secret").run()
        with pytest.raises(Exception, match="Wrong access token"):
            backends.test_connection_task(url, "wrong").run()
        logic.closeSession()


def test_cancelled_propagation_keeps_finished_slices(core, start_logic, ct_path):
    node = core.load_volume(ct_path)
    logic = start_logic(core.scene, node)
    liver = logic.addSegment("liver")
    place_point(node, logic.pointNodes(liver)[0], LIVER_POINT)
    logic.addPoints(liver)
    cancel = threading.Event()
    message = logic.propagate(frameRange=(14, 29), progress=lambda done, total: cancel.set(),
                              cancel=cancel)
    done = int(message.split("cancelled after ")[1].split(" of ")[0])
    assert 1 <= done < 15, message
    frames = logic.stack.frames(logic.segmentMask(liver)).reshape(logic.stack.num_frames, -1)
    filled = set(np.nonzero(frames.any(1))[0].tolist())
    tracked = logic.session.object(logic.objectIds[liver]).tracked_frames
    assert len(tracked) == done  # the server stopped between slices, and kept those done
    assert 24 in filled and filled <= {24, *tracked}
    assert logic.undoStack.labels()[-1] == "Propagate"


def test_dicom_seg_export_references_the_series(core, start_logic, totalseg_dir, tmp_path):
    pytest.importorskip("highdicom")
    import highdicom as hd
    from SAM2RefineLib.processes import ProcessError
    from SAM2RefineLib.segments import write_segment
    from SAM2RefineLib.volumes import ras_matrix_of

    from tests.io.test_dicomseg import standard_axial, write_dicom_series

    series = tmp_path / "series"
    write_dicom_series(standard_axial(load_volume(totalseg_dir / "example_ct_sm.nii.gz")), series)
    volume = load_volume(series)
    node = core.add_volume(volume.voxels, ras_matrix_of(volume), "DICOM CT")
    logic = start_logic(core.scene, node)
    liver = logic.addSegment("liver")
    drawn = np.zeros(volume.voxels.shape, bool)
    drawn[10, 40:70, 30:80] = True
    write_segment(logic.segmentationNode, liver, node, drawn)
    with pytest.raises(ValueError, match="not loaded from DICOM"):
        logic.exportDicomSeg(tmp_path / "x.dcm")
    with pytest.raises(ProcessError, match="StudyInstanceUID"):  # the anonymised shared series
        logic.exportDicomSeg(tmp_path / "x.dcm", totalseg_dir / "example_ct_dicom")
    path = logic.exportDicomSeg(tmp_path / "seg.dcm", series)
    seg = hd.seg.segread(str(path))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver"]
    assert "10200004" in str(seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0])
    assert int(np.count_nonzero(seg.pixel_array)) == int(drawn.sum())


def test_engine_serves_fine_tuned_adapters(core, module, tiny_checkpoint, tmp_path, ct_path):
    """The child engine loads adapters on top of its checkpoint: the Logic's masks equal the
    adapted model's in this process; a missing adapters file is said in one line."""
    import torch

    from sam2refine.remote.local_engine import EngineStoppedError
    from sam2refine.sam.adapter_files import save_adapters
    from sam2refine.sam.adapters import add_adapters, named_adapters
    from sam2refine.sam.model import build_model, load_model
    from sam2refine.sam.weights import sha256_file
    from tests.conftest import TEST_IMAGE_SIZE

    base = add_adapters(build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, tiny_checkpoint, "cpu"))
    with torch.no_grad():
        for _, adapter in named_adapters(base):
            for p in adapter.parameters():
                p.add_(0.01)
    path = save_adapters(base, tmp_path / "organ.safetensors",
                         base_model_name="sam2.1_hiera_tiny",
                         base_checkpoint_sha256=sha256_file(tiny_checkpoint),
                         image_size=TEST_IMAGE_SIZE)
    adapted = load_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, tiny_checkpoint, "cpu",
                         adapters=path)
    want = Session(adapted, load_volume(ct_path))
    want = want.add_points(want.add_object("liver"), [LIVER_POINT], [1])[0].mask
    node = core.load_volume(ct_path)
    logic = module.SAM2RefineLogic(core.scene)
    logic.configureLocal("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, str(tiny_checkpoint), "cpu",
                         adapters=str(path), python=sys.executable)
    try:
        logic.startSession(node)
        liver = logic.addSegment("liver")
        place_point(node, logic.pointNodes(liver)[0], LIVER_POINT)
        (got,) = logic.addPoints(liver)
        np.testing.assert_array_equal(got.mask, want)
        logic.configureLocal("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, str(tiny_checkpoint), "cpu",
                             adapters=str(tmp_path / "missing.safetensors"),
                             python=sys.executable)
        with pytest.raises(EngineStoppedError) as caught:
            logic.startSession(node)
        assert "missing.safetensors" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        logic.shutdown()
