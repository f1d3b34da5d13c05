"""Lasso and scribble geometry on one slice: filled polygons, evenly spread clicks, thin lines."""

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath

from sam2refine.errors import PromptError
from sam2refine.sam.shapes import lasso_mask, scribble_clicks, scribble_mask


def test_a_rectangular_lasso_covers_exactly_the_pixels_inside():
    mask = lasso_mask([[2.5, 3.5], [2.5, 8.5], [6.5, 8.5], [6.5, 3.5]], 10, 12)
    expected = np.zeros((10, 12), bool)
    expected[3:7, 4:9] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("seed", range(6))
def test_lasso_fill_agrees_with_an_independent_point_in_polygon_test(seed):
    rng = np.random.default_rng(seed)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = rng.uniform(4, 14, 9)
    poly = np.stack([20 + radii * np.sin(angles), 22 + radii * np.cos(angles)], 1) + 0.37
    mask = lasso_mask(poly, 40, 44)
    rows, cols = np.mgrid[0:40, 0:44]
    inside = PolygonPath(poly).contains_points(np.stack([rows.ravel(), cols.ravel()], 1))
    differs = mask.ravel() != inside
    assert differs.sum() <= 2  # only pixel centres lying exactly on an edge may differ


def test_lasso_direction_and_repeated_points_do_not_matter():
    poly = [[5, 5], [5, 5], [5, 15], [15, 15], [15, 5]]
    np.testing.assert_array_equal(lasso_mask(poly, 20, 20), lasso_mask(poly[::-1], 20, 20))


def test_a_degenerate_lasso_is_refused():
    with pytest.raises(PromptError, match="at least 3"):
        lasso_mask([[1, 1], [4, 4]], 10, 10)
    with pytest.raises(PromptError, match="no pixel centre"):
        lasso_mask([[1.1, 1.1], [1.2, 1.9], [1.4, 1.4]], 10, 10)


def test_scribble_clicks_are_bounded_evenly_spread_and_keep_the_ends():
    line = np.array([[0.0, 0.0], [0.0, 30.0], [40.0, 30.0]])  # 70 px long
    clicks = scribble_clicks(line, max_clicks=8)
    assert len(clicks) == 8
    np.testing.assert_allclose(clicks[0], [0, 0])
    np.testing.assert_allclose(clicks[-1], [40, 30])
    steps = np.linalg.norm(np.diff(clicks, axis=0), axis=1)
    assert np.all(steps <= 10.0 + 1e-9) and np.all(steps >= 7.0)  # 10 px of arc; a corner cuts
    short = scribble_clicks(np.array([[3.0, 3.0], [3.0, 5.0]]))
    assert len(short) == 3  # a 2 px scribble gets a click per pixel, not 8
    assert len(scribble_clicks(np.array([[7.0, 7.0]]))) == 1


def test_scribble_mask_is_a_connected_one_pixel_line():
    mask = scribble_mask(np.array([[2.0, 2.0], [2.0, 12.0], [12.0, 20.0]]), 16, 24)
    assert mask[2, 2:13].all()
    from scipy import ndimage

    _, parts = ndimage.label(mask, structure=np.ones((3, 3)))
    assert parts == 1
    assert mask.sum() < 35
