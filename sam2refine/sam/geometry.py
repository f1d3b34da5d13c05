"""Turn prompt coordinates (voxel indices, patient mm, or slice positions) into slice-stack
positions, checked against the volume."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sam2refine.errors import PromptError
from sam2refine.image.slicing import SliceStack
from sam2refine.image.volume import Volume

# "slice": (frame, row, col) on the session's slice stack, what a viewer or a stage already has.
COORDINATE_SYSTEMS = ("ijk", "lps", "ras", "slice")


class PromptGeometry:
    """Validates prompts against one volume and maps them onto its slice stack."""

    def __init__(self, volume: Volume, stack: SliceStack) -> None:
        self.volume = volume
        self.stack = stack

    def to_ijk(self, points: Iterable[Iterable[float]], coords: str) -> np.ndarray:
        """(n, 3) continuous voxel indices; every point must lie inside the volume."""
        if coords == "slice":
            return self.stack.frc_to_ijk(self.to_frc(points, coords))
        pts = _as_points(points)
        if coords == "ijk":
            ijk = pts
        elif coords == "lps":
            ijk = self.volume.lps_to_index(pts)
        elif coords == "ras":
            ijk = self.volume.ras_to_index(pts)
        else:
            raise PromptError(
                f"Unknown coordinate system '{coords}'; use one of {COORDINATE_SYSTEMS}."
            )
        shape = self.volume.shape_ijk
        _check_inside(ijk, shape, pts, coords, f"voxel grid {tuple(int(v) for v in shape)}")
        return ijk

    def to_frc(self, points: Iterable[Iterable[float]], coords: str) -> np.ndarray:
        """(n, 3) continuous (frame, row, col) positions; every point must lie inside."""
        if coords != "slice":
            return self.stack.ijk_to_frc(self.to_ijk(points, coords))
        frc = _as_points(points)
        s = self.stack
        _check_inside(frc, (s.num_frames, s.height, s.width), frc, coords,
                      f"{s.num_frames} slices of {s.height} x {s.width} pixels")
        return frc

    def points(
        self, points: Iterable[Iterable[float]], coords: str
    ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Clicks grouped by the slice they fall on, in slice order: (frame, their (row, col)
        pixel positions, their indices in `points`)."""
        frc = self.to_frc(points, coords)
        frames = np.rint(frc[:, 0]).astype(int)
        groups = []
        for frame in np.unique(frames):
            self.check_frame(int(frame))
            index = np.flatnonzero(frames == frame)
            groups.append((int(frame), self._clamp_rc(frc[index, 1:]), index))
        return groups

    def box(
        self,
        corner_a: Iterable[float],
        corner_b: Iterable[float],
        coords: str,
        frame: int | None,
    ) -> tuple[int, tuple[int, int, int, int]]:
        """Frame and inclusive (r0, c0, r1, c1) of a box given by two opposite corners."""
        frc = self.to_frc([list(corner_a), list(corner_b)], coords)
        if frame is None:
            frames = np.unique(np.rint(frc[:, 0]).astype(int))
            if len(frames) != 1:
                raise PromptError(
                    f"The box corners lie on different slices {frames.tolist()}; a box prompt "
                    "is 2D. Pass frame=... to project it onto one slice."
                )
            frame = int(frames[0])
        self.check_frame(frame)
        rc = np.rint(self._clamp_rc(frc[:, 1:])).astype(int)
        r0, r1 = sorted(rc[:, 0])
        c0, c1 = sorted(rc[:, 1])
        if r0 == r1 or c0 == c1:
            raise PromptError(
                "The box has zero area on the slice (its corners share a row or column). "
                "Drag a box that covers the structure."
            )
        return frame, (int(r0), int(c0), int(r1), int(c1))

    def check_frame(self, frame: int) -> None:
        if not 0 <= int(frame) < self.stack.num_frames:
            raise PromptError(
                f"Slice {frame} is outside the volume: there are {self.stack.num_frames} "
                f"{self.stack.axis} slices; give one from 0 to {self.stack.num_frames - 1}."
            )

    def frame_range(self, frame_range: tuple[int, int] | None) -> tuple[int, int]:
        """Inclusive slice range to propagate over (the whole stack by default)."""
        if frame_range is None:
            return 0, self.stack.num_frames - 1
        lo, hi = (int(v) for v in frame_range)
        if lo > hi:
            raise PromptError(
                f"Slice range {lo}..{hi} is empty; give (first, last) with first <= last."
            )
        self.check_frame(lo)
        self.check_frame(hi)
        return lo, hi

    def _clamp_rc(self, rc: np.ndarray) -> np.ndarray:
        limits = np.array([self.stack.height - 1, self.stack.width - 1], dtype=np.float64)
        return np.clip(rc, 0.0, limits)


def _as_points(points: Iterable[Iterable[float]]) -> np.ndarray:
    """(n, 3) finite float coordinates, or a PromptError saying what is wrong."""
    try:
        pts = np.asarray([list(p) for p in points], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PromptError(
            "Give points as a list of [x, y, z] triples of numbers (voxel i, j, k, mm, or "
            f"slice, row, column), at least one; got {exc}."
        ) from exc
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise PromptError(
            "Give points as a list of [x, y, z] triples (voxel i, j, k or mm), at least one."
        )
    if not np.isfinite(pts).all():
        bad = pts[~np.isfinite(pts).all(axis=1)][0]
        raise PromptError(f"Prompt point {bad.tolist()} has a coordinate that is not a finite "
                          "number (NaN or infinity); give numbers on the image.")
    return pts


def _check_inside(positions: np.ndarray, size: Iterable[int], given: np.ndarray, coords: str,
                  grid: str) -> None:
    limits = np.asarray(list(size), dtype=np.float64)
    outside = np.any((positions < -0.5) | (positions > limits - 0.5), axis=1)
    if outside.any():
        raise PromptError(
            f"Prompt point {given[np.argmax(outside)].tolist()} ({coords}) lies outside the "
            f"volume ({grid}). Place it on the image."
        )
