"""Simulated prompts: jittered boxes, interior clicks, correction clicks, round plans."""

from __future__ import annotations

import pytest
import torch

from sam2refine.finetune.prompt_simulation import (
    POINT_COUNTS,
    PromptSet,
    binary_to_logits,
    correction_points,
    erosion_depth,
    interior_point,
    jittered_box,
    mask_box,
    plan_prompts,
)


def _disc(size: int = 64, cy: int = 30, cx: int = 26, r: int = 12) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_mask_box_is_first_and_last_covered_pixel():
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[4:9, 10:21] = True
    assert mask_box(mask).tolist() == [10.0, 4.0, 20.0, 8.0]


def test_jittered_box_moves_each_side_by_at_most_ten_percent_and_stays_in_the_image():
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[2:42, 50:64] = True  # touches the right edge
    x0, y0, x1, y1 = mask_box(mask).tolist()
    w, h = x1 - x0 + 1, y1 - y0 + 1
    generator = torch.Generator().manual_seed(0)
    boxes = torch.stack([jittered_box(mask, generator) for _ in range(200)])
    shift = (boxes - torch.tensor([x0, y0, x1, y1])).abs()
    assert (shift[:, 0::2] <= 0.1 * w + 1e-4).all() and (shift[:, 1::2] <= 0.1 * h + 1e-4).all()
    assert boxes.min() >= 0 and boxes[:, 0::2].max() <= 63 and boxes[:, 1::2].max() <= 63
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert shift[:, 1].std() > 0  # really random, not a fixed offset


def test_jittered_box_is_reproducible_for_a_seed():
    mask = _disc()
    a = jittered_box(mask, torch.Generator().manual_seed(3))
    b = jittered_box(mask, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_erosion_depth_counts_layers_from_the_border():
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[1:8, 1:8] = True
    depth = erosion_depth(mask)
    assert depth[0, 0] == 0 and depth[1, 1] == 1 and depth[2, 4] == 2 and depth[4, 4] == 4


def test_interior_point_lies_deep_inside_the_object():
    mask = _disc(r=12)
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        (x, y), = interior_point(mask, generator).tolist()
        assert mask[int(y), int(x)]
        assert (y - 30) ** 2 + (x - 26) ** 2 <= 7**2  # at least ~half the radius from the edge


def test_interior_point_of_a_thin_structure_is_still_inside_it():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[10, 3:30] = True  # one pixel wide
    (x, y), = interior_point(mask, torch.Generator().manual_seed(0)).tolist()
    assert mask[int(y), int(x)]


def test_correction_points_are_positive_on_missed_foreground_and_negative_on_false_positives():
    target = torch.zeros(40, 40, dtype=torch.bool)
    target[5:20, 5:20] = True
    pred = torch.zeros_like(target)
    pred[5:20, 5:12] = True  # misses the right part
    pred[30:35, 30:35] = True  # a false positive blob
    coords, labels = correction_points(pred, target, 9, torch.Generator().manual_seed(0))
    assert coords.shape == (9, 2) and labels.shape == (9,)
    for (x, y), label in zip(coords.long().tolist(), labels.tolist()):
        assert pred[y, x] != target[y, x]  # every click is on an error
        assert label == int(target[y, x])
    assert len({tuple(c) for c in coords.tolist()}) == 9  # distinct pixels


def test_no_correction_points_when_the_prediction_is_perfect():
    target = _disc()
    coords, labels = correction_points(target, target, 5, torch.Generator().manual_seed(0))
    assert coords.shape == (0, 2) and labels.shape == (0,)


def test_small_error_regions_give_fewer_points():
    target = _disc()
    pred = target.clone()
    pred[0, 0] = True
    pred[1, 1] = True
    coords, labels = correction_points(pred, target, 9, torch.Generator().manual_seed(0))
    assert coords.shape == (2, 2) and labels.tolist() == [0, 0]


def test_plans_cover_boxes_points_every_click_count_and_mask_only_rounds():
    generator = torch.Generator().manual_seed(0)
    plans = [plan_prompts(generator, num_rounds=3, mask_only_prob=0.3) for _ in range(300)]
    initials = {p.initial for p in plans}
    rounds = [r for p in plans for r in p.rounds]
    assert initials == {"box", "point"}
    assert {r.num_points for r in rounds if not r.mask_only} == set(POINT_COUNTS)
    mask_only = [r for r in rounds if r.mask_only]
    assert 0.2 < len(mask_only) / len(rounds) < 0.4
    assert all(r.num_points == 0 for r in mask_only)
    assert {r.binarize for r in mask_only} == {True, False}


def test_prompt_set_gives_sam_point_inputs_box_corners_first():
    prompts = PromptSet(box=torch.tensor([1.0, 2.0, 10.0, 12.0]))
    prompts.add_points(torch.tensor([[5.0, 6.0]]), torch.tensor([1]))
    prompts.add_points(torch.tensor([[7.0, 8.0]]), torch.tensor([0]))
    inputs = prompts.point_inputs(torch.device("cpu"))
    assert inputs["point_coords"].tolist() == [[[1, 2], [10, 12], [5, 6], [7, 8]]]
    assert inputs["point_labels"].tolist() == [[2, 3, 1, 0]]
    assert inputs["point_labels"].dtype == torch.int32
    assert PromptSet().point_inputs(torch.device("cpu")) is None


def test_binary_masks_become_sam_style_logits():
    mask = torch.tensor([[True, False]])
    assert binary_to_logits(mask).tolist() == [[10.0, -10.0]]


def test_box_of_an_empty_mask_is_an_error():
    with pytest.raises(ValueError):
        mask_box(torch.zeros(4, 4, dtype=torch.bool))
