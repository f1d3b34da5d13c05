"""The prompt tools as a clinician uses them, on Slicer's real core with the child engine:
each segment's own prompt markups (coloured like it, hidden with it, following its name and
removal), a box placed with two clicks sends the whole drawn box, a box spanning several
slices limits its segment's propagation to them, and undo takes the step's markups away."""

from __future__ import annotations

import numpy as np
import pytest

from sam2refine.image.reading import load_volume
from sam2refine.sam.session import Session
from tests.slicer.test_logic import LIVER_POINT, SPLEEN_BOX, place_point, ras_of


@pytest.fixture(scope="module")
def ct_path(totalseg_dir):
    return totalseg_dir / "example_ct_sm.nii.gz"


def frames_with(logic, mask) -> list[int]:
    frames = logic.stack.frames(mask).reshape(logic.stack.num_frames, -1)
    return np.nonzero(frames.any(1))[0].tolist()


def test_each_segment_has_its_own_prompt_nodes(core, start_logic, ct_path):
    from SAM2RefineLib import promptnodes

    node = core.load_volume(ct_path)
    logic = start_logic(core.scene, node)
    liver, spleen = logic.addSegment("liver"), logic.addSegment("spleen")
    (liver_in, liver_out), (spleen_in, spleen_out) = logic.pointNodes(liver), logic.pointNodes(
        spleen)
    assert len({n.GetID() for n in (liver_in, liver_out, spleen_in, spleen_out)}) == 4
    assert logic.pointNodes(liver)[0] is liver_in  # found again, not made twice
    segmentation = logic.segmentationNode.GetSegmentation()
    for segment_id, nodes in ((liver, (liver_in, liver_out)), (spleen, (spleen_in, spleen_out))):
        color = segmentation.GetSegment(segment_id).GetColor()
        for markups in nodes:
            np.testing.assert_allclose(markups.GetDisplayNode().GetSelectedColor(), color)
    cross = liver_out.GetDisplayNode().Cross2D
    assert liver_out.GetDisplayNode().GetGlyphType() == cross != liver_in.GetDisplayNode(
        ).GetGlyphType()
    place_point(node, liver_in, LIVER_POINT)
    logic.addPoints(liver)
    assert spleen_in.GetNumberOfControlPoints() == 0  # clicks never pile up across segments
    # Hidden with its segment, shown with it; named after it; gone with it.
    display = logic.segmentationNode.GetDisplayNode()
    display.SetSegmentVisibility(liver, False)
    assert not liver_in.GetDisplayNode().GetVisibility()
    assert not liver_out.GetDisplayNode().GetVisibility()
    assert spleen_in.GetDisplayNode().GetVisibility()
    display.SetSegmentVisibility(liver, True)
    assert liver_in.GetDisplayNode().GetVisibility()
    segmentation.GetSegment(liver).SetName("left liver")
    assert liver_in.GetName() == "left liver +"
    segmentation.GetSegment(spleen).SetColor(0.1, 0.2, 0.3)
    np.testing.assert_allclose(spleen_in.GetDisplayNode().GetSelectedColor(), (0.1, 0.2, 0.3))
    spleen_id = spleen_in.GetID()
    segmentation.RemoveSegment(spleen)
    assert core.scene.GetNodeByID(spleen_id) is None
    assert promptnodes.prompt_nodes(core.scene, logic.segmentationNode, spleen) == []


def test_a_box_placed_with_two_clicks_sends_the_whole_box(core, start_logic, ct_path,
                                                          tiny_model):
    """Slicer defines an ROI by two clicks, firing PointPositionDefinedEvent for each, and
    pads a flat one to its shorter side: the prompt is sent once, with the drawn box."""
    from SAM2RefineLib.promptnodes import BoxPlacement, new_box_node

    node = core.load_volume(ct_path)
    logic = start_logic(core.scene, node)
    spleen = logic.addSegment("spleen")
    roi = new_box_node(core.scene, logic.segmentationNode, spleen)
    placed = []
    BoxPlacement(roi, placed.append)
    roi.AddControlPoint(*ras_of(node, SPLEEN_BOX[0]))  # first corner
    assert placed == []  # nothing sent for half a box
    roi.AddControlPoint(*ras_of(node, SPLEEN_BOX[1]))  # second corner, same slice
    assert placed == [roi]
    drawn = np.abs(ras_of(node, SPLEEN_BOX[1]) - ras_of(node, SPLEEN_BOX[0]))
    np.testing.assert_allclose(roi.GetSize(), drawn, atol=1e-6)  # flat again, as drawn
    result = logic.setBox(spleen, roi)
    reference = Session(tiny_model, load_volume(ct_path))
    want = reference.set_box(reference.add_object("spleen"), *SPLEEN_BOX)
    assert result.frame == want.frame == SPLEEN_BOX[0][2]
    np.testing.assert_array_equal(result.mask, want.mask)
    assert result.mask.sum() > 100 and logic.segmentRanges == {}  # a 2D box sets no range
    logic.undo()
    assert core.scene.GetNodeByID(roi.GetID()) is None  # the tool's box goes with its step


def test_a_3d_box_limits_its_segments_propagation(core, start_logic, ct_path):
    from SAM2RefineLib.promptnodes import new_box_node

    node = core.load_volume(ct_path)
    logic = start_logic(core.scene, node)
    liver, spleen = logic.addSegment("liver"), logic.addSegment("spleen")
    place_point(node, logic.pointNodes(liver)[0], LIVER_POINT)
    logic.addPoints(liver)
    (i0, j0, _), (i1, j1, _) = SPLEEN_BOX
    low, high = ras_of(node, (i0, j0, 20)), ras_of(node, (i1, j1, 24))  # slices 20..24
    roi = new_box_node(core.scene, logic.segmentationNode, spleen)
    roi.SetCenter(*((low + high) / 2))
    roi.SetSize(*np.abs(high - low))
    result = logic.setBox(spleen, roi)
    assert result.frame == 22  # the box on the centre slice
    assert logic.segmentRanges == {spleen: (20, 24)}
    message = logic.propagate(frameRange=(18, 26))
    assert message == "Propagated 2 segment(s)."
    spleen_frames = frames_with(logic, logic.segmentMask(spleen))
    assert spleen_frames and set(spleen_frames) <= set(range(20, 25))
    tracked = logic.session.object(logic.objectIds[spleen]).tracked_frames
    assert set(tracked) == {20, 21, 23, 24}  # the engine never ran it elsewhere
    liver_tracked = logic.session.object(logic.objectIds[liver]).tracked_frames
    assert {18, 26} <= set(liver_tracked)  # the limit is the spleen's alone
    logic.undo()  # the propagation
    logic.undo()  # the box: its range and its ROI go too
    assert logic.segmentRanges == {} and core.scene.GetNodeByID(roi.GetID()) is None
    assert not logic.segmentMask(spleen).any()
