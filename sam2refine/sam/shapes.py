"""Drawn prompts on one slice: a lasso (closed polygon) becomes a filled mask, a scribble (open
polyline) a bounded set of evenly spread clicks and a thin mask along it.

Positions are (row, col) pixel centres on the slice; a pixel belongs to a lasso when its centre
lies inside the polygon (even-odd rule), so a lasso drawn around whole pixels covers them.
"""

from __future__ import annotations

import numpy as np

from sam2refine.errors import PromptError

MAX_SCRIBBLE_CLICKS = 8  # SAM's decoder was trained with a handful of clicks, not hundreds


def lasso_mask(vertices_rc: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie inside the closed polygon `vertices_rc`."""
    poly = _as_polyline(vertices_rc, minimum=3, what="A lasso")
    rows = np.arange(height, dtype=np.float64)
    cols = np.arange(width, dtype=np.float64)
    start, end = poly, np.roll(poly, -1, axis=0)
    mask = np.zeros((height, width), bool)
    for r in rows[(rows >= poly[:, 0].min()) & (rows <= poly[:, 0].max())]:
        # Edges crossing the row's centre line (half-open, so a vertex on the line counts once).
        crosses = (start[:, 0] <= r) != (end[:, 0] <= r)
        if not crosses.any():
            continue
        a, b = start[crosses], end[crosses]
        xs = np.sort(a[:, 1] + (r - a[:, 0]) * (b[:, 1] - a[:, 1]) / (b[:, 0] - a[:, 0]))
        for left, right in zip(xs[0::2], xs[1::2]):
            mask[int(r)] |= (cols >= left) & (cols <= right)
    if not mask.any():
        raise PromptError("The lasso encloses no pixel centre on this slice; draw it around the "
                          "structure.")
    return mask


def scribble_clicks(points_rc: np.ndarray, max_clicks: int = MAX_SCRIBBLE_CLICKS) -> np.ndarray:
    """(n, 2) clicks spread evenly by arc length along a polyline, ends included, n <= max."""
    line = _as_polyline(points_rc, minimum=1, what="A scribble")
    lengths = np.linalg.norm(np.diff(line, axis=0), axis=1)
    total = float(lengths.sum())
    if total < 1.0:
        return line[:1].copy()
    count = int(min(max_clicks, max(2, np.floor(total) + 1)))
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    targets = np.linspace(0.0, total, count)
    return np.stack([np.interp(targets, along, line[:, 0]),
                     np.interp(targets, along, line[:, 1])], axis=1)


def scribble_mask(points_rc: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels a polyline passes through (one pixel thin, no gaps)."""
    line = _as_polyline(points_rc, minimum=1, what="A scribble")
    mask = np.zeros((height, width), bool)
    for a, b in zip(line, line[1:] if len(line) > 1 else line):
        steps = int(np.ceil(np.abs(b - a).max() * 2)) + 1  # half-pixel steps never skip a pixel
        rc = np.rint(np.linspace(a, b, steps)).astype(int)
        keep = (rc[:, 0] >= 0) & (rc[:, 0] < height) & (rc[:, 1] >= 0) & (rc[:, 1] < width)
        mask[rc[keep, 0], rc[keep, 1]] = True
    return mask


def _as_polyline(points: np.ndarray, minimum: int, what: str) -> np.ndarray:
    line = np.asarray(points, dtype=np.float64)
    if line.ndim != 2 or line.shape[1] != 2 or len(line) < minimum:
        raise PromptError(f"{what} needs at least {minimum} points on one slice.")
    keep = np.concatenate([[True], np.any(np.diff(line, axis=0) != 0, axis=1)])
    return line[keep]  # repeated points (a mouse that did not move) add nothing
