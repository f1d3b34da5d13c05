"""Turn prompt coordinates (voxel indices or patient mm) into slice-stack positions, checked."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sam2refine.errors import PromptError
from sam2refine.image.slicing import SliceStack
from sam2refine.image.volume import Volume

COORDINATE_SYSTEMS = ("ijk", "lps", "ras")


class PromptGeometry:
    """Validates prompts against one volume and maps them onto its slice stack."""

    def __init__(self, volume: Volume, stack: SliceStack) -> None:
        self.volume = volume
        self.stack = stack

    def to_ijk(self, points: Iterable[Iterable[float]], coords: str) -> np.ndarray:
        """(n, 3) continuous voxel indices; every point must lie inside the volume."""
        pts = np.asarray(list(points), dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise PromptError(
                "Give points as a list of [x, y, z] triples (voxel i, j, k or mm), at least one."
            )
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
        size = np.array(self.volume.shape_ijk, dtype=np.float64)
        outside = np.any((ijk < -0.5) | (ijk > size - 0.5), axis=1)
        if outside.any():
            bad = pts[np.argmax(outside)]
            raise PromptError(
                f"Prompt point {bad.tolist()} ({coords}) lies outside the volume "
                f"(voxel grid {tuple(int(s) for s in size)}). Place it on the image."
            )
        return ijk

    def points(
        self, points: Iterable[Iterable[float]], coords: str
    ) -> tuple[int, np.ndarray]:
        """Frame of a group of clicks (all on one slice) and their (row, col) pixel positions."""
        frc = self.stack.ijk_to_frc(self.to_ijk(points, coords))
        frames = np.unique(np.rint(frc[:, 0]).astype(int))
        if len(frames) != 1:
            raise PromptError(
                f"Clicks given together must lie on one slice; these fall on slices "
                f"{frames.tolist()} along the {self.stack.axis} axis. Send one call per slice."
            )
        frame = int(frames[0])
        self.check_frame(frame)
        return frame, self._clamp_rc(frc[:, 1:])

    def box(
        self,
        corner_a: Iterable[float],
        corner_b: Iterable[float],
        coords: str,
        frame: int | None,
    ) -> tuple[int, tuple[int, int, int, int]]:
        """Frame and inclusive (r0, c0, r1, c1) of a box given by two opposite corners."""
        frc = self.stack.ijk_to_frc(self.to_ijk([list(corner_a), list(corner_b)], coords))
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
                f"{self.stack.axis} slices (0..{self.stack.num_frames - 1})."
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
