"""Session mechanics with a random-init SAM 2.1 tiny: where prompts land, what propagation
touches, what a re-prompt may change. Mask quality is not asserted (random weights)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from sam2refine.errors import CancelledError, PromptError
from sam2refine.sam.session import Session

ORGAN_BOX = ((12, 12, 6), (26, 28, 6))  # voxel corners (i, j, k) around the phantom's organ


@pytest.fixture
def session(tiny_model, phantom) -> Session:
    return Session(tiny_model, phantom)


def _organ_mask_on(session: Session, frame: int) -> np.ndarray:
    """A blocky 2D mask (slice orientation) covering the voxels i 12..26, j 12..28."""
    volume_mask = np.zeros(session.volume.voxels.shape, bool)
    volume_mask[frame, 12:29, 12:27] = True
    return session.stack.frames(volume_mask)[frame]


def _snapshot(session: Session, obj: int) -> dict[int, torch.Tensor]:
    o = session.object(obj)
    return {f: out["pred_masks"].clone() for f, out in {**o.tracked, **o.cond}.items()}


def test_box_prompt_returns_the_mask_of_its_slice(session):
    obj = session.add_object("organ")
    result = session.set_box(obj, *ORGAN_BOX)
    assert result.frame == 6  # axial slices follow k on this volume
    assert result.mask.shape == (session.stack.height, session.stack.width)
    assert result.mask.dtype == bool


def test_physical_and_voxel_prompts_land_on_the_same_pixels(session, phantom):
    ijk = np.array([[20.0, 18.0, 4.0], [15.0, 25.0, 4.0]])
    [(frame_v, rc_v, _)] = session.geometry.points(ijk, "ijk")
    [(frame_l, rc_l, _)] = session.geometry.points(phantom.index_to_lps(ijk), "lps")
    [(frame_r, rc_r, _)] = session.geometry.points(phantom.index_to_ras(ijk), "ras")
    assert frame_v == frame_l == frame_r == 4
    np.testing.assert_allclose(rc_l, rc_v, atol=1e-6)
    np.testing.assert_allclose(rc_r, rc_v, atol=1e-6)
    # The pixel a click lands on is the clicked voxel.
    back = session.stack.frc_to_ijk(np.column_stack([[frame_v] * 2, rc_v]))
    np.testing.assert_allclose(back, ijk, atol=1e-6)


def test_exact_mask_prompt_lands_on_the_intended_voxels(session):
    obj = session.add_object("organ")
    mask = _organ_mask_on(session, 5)
    result = session.set_mask(obj, 5, mask, mode="exact")
    np.testing.assert_array_equal(result.mask, mask)
    labels = session.label_volume()
    assert labels.same_geometry(session.volume)
    expected = np.zeros(session.volume.voxels.shape, bool)
    expected[5, 12:29, 12:27] = True
    np.testing.assert_array_equal(labels.voxels == obj, expected)


def test_propagation_covers_exactly_the_requested_range_in_both_directions(session):
    obj = session.add_object("organ")
    session.set_box(obj, *ORGAN_BOX)
    ran = session.propagate(frame_range=(3, 9))
    o = session.object(obj)
    assert sorted(o.tracked) == [3, 4, 5, 7, 8, 9]
    assert ran == 6
    assert {o.reverse[f] for f in (3, 4, 5)} == {True}
    assert {o.reverse[f] for f in (7, 8, 9)} == {False}
    assert not session.object_mask(obj)[[0, 1, 2, 10, 11]].any()
    # The rest of the volume is still pending and is done by the next full propagate().
    assert session.propagate() == 12 - 1 - 6
    assert sorted(set(o.tracked) | set(o.cond)) == list(range(12))


def test_each_slice_is_encoded_at_most_once(session):
    obj = session.add_object("organ")
    session.set_box(obj, *ORGAN_BOX)
    session.propagate()
    session.add_points(obj, [[18, 20, 9]], [1])
    session.propagate()
    assert session.features.encodings == session.num_frames


def test_reprompt_changes_nothing_beyond_the_neighbouring_prompted_slices(session):
    obj = session.add_object("organ")
    session.set_box(obj, (12, 12, 2), (26, 28, 2))
    session.set_box(obj, (12, 12, 6), (26, 28, 6))
    session.propagate()
    before = _snapshot(session, obj)
    [result] = session.add_points(obj, [[18, 20, 4], [25, 13, 4]], [1, 0])
    assert result.frame == 4
    ran = session.propagate()
    after = _snapshot(session, obj)
    assert ran == 2  # slices 3 and 5, between the prompted slices 2 and 6
    for frame in [0, 1, 2, 6, 7, 8, 9, 10, 11]:
        assert torch.equal(before[frame], after[frame]), f"slice {frame} changed"
    assert not torch.equal(before[4], after[4])


def test_correction_after_the_last_prompt_reruns_only_outward(session):
    obj = session.add_object("organ")
    session.set_box(obj, *ORGAN_BOX)
    session.propagate()
    before = _snapshot(session, obj)
    session.add_points(obj, [[18, 20, 9]], [0])
    assert session.propagate() == (9 - 6 - 1) + (11 - 9)
    after = _snapshot(session, obj)
    for frame in range(0, 7):
        assert torch.equal(before[frame], after[frame])


def test_mask_prompt_shapes_the_result(session):
    box_only = session.add_object("box only")
    session.set_box(box_only, *ORGAN_BOX)
    with_mask = session.add_object("box and mask")
    session.set_box(with_mask, *ORGAN_BOX)
    session.set_mask(with_mask, 6, _organ_mask_on(session, 6))
    session.propagate()
    a, b = session.object(box_only), session.object(with_mask)
    assert not torch.equal(a.cond[6]["pred_masks"], b.cond[6]["pred_masks"])
    assert not torch.equal(a.tracked[7]["pred_masks"], b.tracked[7]["pred_masks"])
    # A different mask gives a different refined result on the same slice.
    other = np.zeros_like(_organ_mask_on(session, 6))
    other[5:15, 5:20] = True
    first = session.object(with_mask).cond[6]["pred_masks"].clone()
    session.set_mask(with_mask, 6, other)
    assert not torch.equal(first, session.object(with_mask).cond[6]["pred_masks"])


def test_locked_object_is_kept_and_wins_overlaps(session):
    first = session.add_object("first")
    session.set_mask(first, 6, _organ_mask_on(session, 6), mode="exact")
    second = session.add_object("second")
    big = np.ones((session.stack.height, session.stack.width), bool)
    session.set_mask(second, 6, big, mode="exact")
    session.set_locked(first)
    labels = session.label_volume().voxels[6]
    assert (labels[12:29, 12:27] == first).all()
    assert (labels == second).sum() == big.sum() - 17 * 15
    with pytest.raises(PromptError, match="locked"):
        session.add_points(first, [[18, 20, 6]], [1])
    session.propagate()
    assert not session.object(first).tracked  # locked objects are not re-propagated


def test_cancel_stops_between_slices_and_keeps_finished_work(session):
    obj = session.add_object("organ")
    session.set_box(obj, *ORGAN_BOX)
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == 2:
            cancel.set()

    with pytest.raises(CancelledError, match="after 2 of 11"):
        session.propagate(progress=progress, cancel=cancel)
    assert len(session.object(obj).tracked) == 2
    assert session.propagate() == 9


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, o: s.add_points(o, [[60, 20, 4]], [1]), "outside the volume"),
        (lambda s, o: s.add_points(o, [[10, 20, 4]], [2]), "one label per point"),
        (lambda s, o: s.add_points(o, [[10, 20, 4], [10, 20, 8]], [1]), "one label per point"),
        (lambda s, o: s.add_points(o, [[10, float("nan"), 4]], [1]), "not a finite number"),
        (lambda s, o: s.add_points(o, [["a", 20, 4]], [1]), "triples of numbers"),
        (lambda s, o: s.add_points(o, [[4, 39.6, 20]], [1], coords="slice"), "outside the volume"),
        (lambda s, o: s.set_box(o, (10, 10, 4), (50, 20, 4)), "outside the volume"),
        (lambda s, o: s.set_box(o, (10, 10, 4), (10, 20, 4)), "zero area"),
        (lambda s, o: s.set_box(o, (10, 10, 4), (20, 20, 7)), "different slices"),
        (lambda s, o: s.set_mask(o, 4, np.ones((3, 3), bool)), "shape"),
        (lambda s, o: s.set_mask(o, 4, np.zeros((40, 48), bool)), "empty"),
        (lambda s, o: s.set_mask(o, 40, np.zeros((40, 48), bool)), "outside the volume"),
        (lambda s, o: s.add_points("spleen", [[10, 20, 4]], [1]), "Unknown object"),
        (lambda s, o: s.add_points(o, [[10, 20, 4]], [1], coords="xyz"), "coordinate system"),
    ],
)
def test_bad_prompts_get_clear_errors(session, call, message):
    obj = session.add_object("organ")
    with pytest.raises(PromptError, match=message):
        call(session, obj)


def test_coronal_session_slices_along_the_anterior_posterior_axis(tiny_model, phantom):
    session = Session(tiny_model, phantom, axis="coronal")
    assert session.num_frames == phantom.voxels.shape[1]  # j runs anterior-posterior here
    obj = session.add_object("organ")
    mask = np.zeros((session.stack.height, session.stack.width), bool)
    mask[3:9, 10:30] = True
    session.set_mask(obj, 17, mask, mode="exact")
    k, j, i = np.nonzero(session.label_volume().voxels)
    assert set(j) == {int(session.stack.frc_to_ijk([[17, 0, 0]])[0, 1])}
    assert len(k) == mask.sum()


def test_mask_volume_prompts_its_largest_slice(session):
    obj = session.add_object("organ")
    mask = np.zeros(session.volume.voxels.shape, bool)
    mask[3, 10:14, 10:14] = True
    mask[7, 8:30, 8:30] = True
    (result,) = session.set_mask_volume(obj, mask, mode="exact")
    assert result.frame == 7
    assert result.mask.sum() == 22 * 22
    with pytest.raises(PromptError, match="Resample it onto the image grid"):
        session.set_mask_volume(obj, mask[:5])
    with pytest.raises(PromptError, match="empty"):
        session.set_mask_volume(obj, np.zeros_like(mask))


def test_a_refused_prompt_leaves_the_slice_as_it_was(session):
    obj = session.add_object("organ")
    first = session.set_box(obj, *ORGAN_BOX)
    with pytest.raises(PromptError, match="empty"):
        session.set_mask(obj, 6, np.zeros((40, 48), bool))
    prompts = session.object(obj).prompts[6]
    assert prompts.box is not None and prompts.mask is None
    [again] = session.add_points(obj, [[18, 20, 6]], [1])
    assert again.frame == first.frame


def test_clicks_on_several_slices_prompt_each_slice_once(session):
    obj = session.add_object("organ")
    results = session.add_points(obj, [[18, 20, 8], [18, 20, 4], [25, 13, 4]], [1, 1, 0])
    assert [r.frame for r in results] == [4, 8]
    assert [lab for _, _, lab in session.object(obj).prompts[4].points] == [1, 0]
    assert len(session.object(obj).prompts[8].points) == 1


def test_slice_coordinates_give_the_same_prompt_as_voxels(tiny_model, phantom):
    by_voxel, by_slice = Session(tiny_model, phantom), Session(tiny_model, phantom)
    for s in (by_voxel, by_slice):
        s.add_object("organ")
    frc = by_voxel.stack.ijk_to_frc([[18, 20, 6], [12, 12, 6], [26, 28, 6]])
    [a] = by_voxel.add_points(1, [[18, 20, 6]], [1])
    [b] = by_slice.add_points(1, frc[:1], [1], coords="slice")
    assert a.frame == b.frame and np.array_equal(a.mask, b.mask)
    box_a = by_voxel.set_box(1, (12, 12, 6), (26, 28, 6))
    box_b = by_slice.set_box(1, frc[1], frc[2], coords="slice")
    assert np.array_equal(box_a.mask, box_b.mask)
    assert by_voxel.object(1).prompts[6].box == by_slice.object(1).prompts[6].box
