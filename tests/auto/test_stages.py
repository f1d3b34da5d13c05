"""The two SAM 2 stages: key slices, allowed range, corrective clicks, and the stages on a
phantom with the random-init tiny model (what they prompt, where they may write)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sam2refine.auto.sources import LabelFilePromptSource
from sam2refine.auto.stages import (
    RefineSettings,
    allowed_range,
    box_iou,
    corrective_clicks,
    key_frames,
    largest_components,
    plan_organs,
    refreshed_box,
    stage1,
    stage2,
)
from sam2refine.errors import CancelledError, PromptError
from sam2refine.sam.session import Session
from tests.conftest import make_phantom


def frames_with_area(areas, shape=(10, 10)):
    out = np.zeros((len(areas), *shape), bool)
    for f, area in enumerate(areas):
        out[f].flat[:area] = True
    return out


def test_key_slices_are_the_largest_plus_spaced_ones_on_long_organs():
    short = frames_with_area([0, 10, 30, 20, 0])
    assert key_frames(short, every=12, min_area=0.3) == [2]
    long = frames_with_area([0, 5, 40, 50, 60, 80, 70, 60, 50, 20, 10, 0])
    assert key_frames(long, every=3, min_area=0.3) == [2, 5, 8]
    assert key_frames(long, every=2, min_area=0.5) == [3, 5, 7]  # area 20 at 9 is too small


def test_allowed_range_is_the_extent_plus_margin_within_the_volume():
    assert allowed_range((4, 7), 2, 20) == (2, 9)
    assert allowed_range((1, 18), 3, 20) == (0, 19)


def test_refreshed_box_follows_stage1_unless_it_strays():
    proposal = (10, 10, 29, 29)
    near = np.zeros((40, 40), bool)
    near[12:30, 11:31] = True
    assert refreshed_box(near, proposal, 0.5) == (12, 11, 29, 30)
    far = np.zeros((40, 40), bool)
    far[0:5, 30:40] = True
    assert refreshed_box(far, proposal, 0.5) == proposal
    assert refreshed_box(np.zeros((40, 40), bool), proposal, 0.5) == proposal
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 4)) == pytest.approx(0.5)


def test_corrective_clicks_go_inside_the_largest_disagreements():
    missed = np.zeros((6, 30, 30), bool)
    missed[1:4, 2:12, 2:12] = True  # largest region, biggest on every slice 1..3
    missed[4, 20:24, 20:24] = True  # second
    missed[0, 28, 28] = True  # too small to click
    extra = np.zeros_like(missed)
    extra[2, 15:25, 5:9] = True
    clicks = corrective_clicks(missed, extra, max_clicks=3, min_voxels=5)
    flat = sorted((f, r, c, v) for f, group in clicks.items() for r, c, v in group)
    positive = [(f, r, c) for f, r, c, v in flat if v == 1]
    negative = [(f, r, c) for f, r, c, v in flat if v == 0]
    assert len(positive) == 2 and len(negative) == 1
    assert any(missed[f, r, c] and 1 <= f <= 3 for f, r, c in positive)
    assert any((f, r, c) == (4, 21, 21) or (f, r, c) == (4, 22, 22) for f, r, c in positive)
    f, r, c = negative[0]
    assert extra[f, r, c] and f == 2
    assert len(largest_components(missed, 1, 5)) == 1
    assert largest_components(np.zeros((2, 3, 3), bool), 2, 1) == []


def test_settings_are_checked():
    with pytest.raises(PromptError, match="stage-1 prompt"):
        RefineSettings(prompt="scribble")
    with pytest.raises(PromptError, match="margin"):
        RefineSettings(margin=-1)


# ----- the stages with SAM 2 -----------------------------------------------------------------
SHORT = (5, 7)  # the proposal covers only these slices of the phantom's organ (2..10)


@pytest.fixture(scope="module")
def short_proposal(tmp_path_factory):
    """A label file proposing only slices 5..7 of the phantom organ, and its proposals."""
    volume = make_phantom()
    organ = volume.voxels > 100
    labels = np.zeros(organ.shape, np.uint8)
    labels[SHORT[0]: SHORT[1] + 1][organ[SHORT[0]: SHORT[1] + 1]] = 1
    path = tmp_path_factory.mktemp("short") / "organ.nii.gz"
    sitk.WriteImage(volume.with_voxels(labels).to_sitk(), str(path))
    return volume, LabelFilePromptSource(path, {1: "liver"}).proposals(volume)


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["box", "mask"])
def test_stages_never_fill_slices_beyond_the_extent_plus_margin(tiny_model, short_proposal,
                                                                 prompt):
    volume, proposals = short_proposal
    session = Session(tiny_model, volume)
    settings = RefineSettings(margin=1, prompt=prompt, key_every=1, min_error_voxels=1)
    plans = plan_organs(proposals, session, settings)
    plan = plans["liver"]
    assert plan.frame_range == (4, 8) and plan.key_frames == [5, 6, 7]
    seen = []
    first = stage1(session, proposals, plans, settings, lambda d, t: seen.append((d, t)))
    kept = first.label_volume.voxels.copy()
    info = session.describe()[0]
    prompted = set(plan.key_frames)
    assert set(info.prompted_frames) == prompted
    assert set(info.tracked_frames) == set(range(4, 9)) - prompted  # all of it, nothing more
    assert seen[-1] == (5, 5)  # progress over the whole allowed range
    if prompt == "mask":
        assert plan.mask_frames == plan.key_frames and plan.boxes == {}
    else:
        assert set(plan.boxes) == prompted
    second = stage2(session, proposals, plans, settings)
    for result in (first, second):
        frames = session.stack.frames(result.label_volume.voxels)
        assert not frames[:4].any() and not frames[9:].any()
        assert result.label_volume.voxels.dtype == np.uint16
        assert result.label_volume.same_geometry(volume)
    np.testing.assert_array_equal(first.label_volume.voxels, kept)  # stage 1 output is kept
    assert set(session.describe()[0].tracked_frames) <= set(range(4, 9))
    assert second.name == "stage2" and set(second.boxes["liver"]) == prompted
    assert plan.mask_frames == []  # stage 2 prompts with boxes (and clicks)
    clicked = {f for f, group in second.points["liver"].items() if group}
    assert clicked <= set(range(4, 9))
    assert set(session.describe()[0].prompted_frames) == prompted | clicked


@pytest.mark.slow
def test_cancel_stops_stage1(tiny_model, short_proposal):
    import threading

    volume, proposals = short_proposal
    session = Session(tiny_model, volume)
    settings = RefineSettings(margin=1)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        stage1(session, proposals, plan_organs(proposals, session, settings), settings,
               cancel=cancel)
