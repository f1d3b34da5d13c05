"""Volume slices as SAM 2 video frames, and frame pixels <-> SAM 2 model pixels.

Slices are cut along a *patient* axis (axial, coronal, sagittal) found from the direction
matrix, never along raw array order, and shown in radiological display orientation (patient
right on image left), the orientation medical SAM-style models are trained on:

- axial: frames inferior -> superior; rows anterior -> posterior; columns right -> left.
- coronal: frames posterior -> anterior; rows superior -> inferior; columns right -> left.
- sagittal: frames right -> left; rows superior -> inferior; columns anterior -> posterior.

Each role (frame, row, column) takes the voxel axis (i, j or k) closest to its patient axis,
so oblique volumes work too (the dominant axis is used; nothing is resampled).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import ArrayLike

from sam2refine.errors import VolumeError
from sam2refine.volume import Volume

AXES = ("axial", "coronal", "sagittal")

# For each view: (LPS axis, sign) that frame, row and column indices increase along.
# LPS axes: 0 = x (towards patient Left), 1 = y (Posterior), 2 = z (Superior).
_ROLES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "axial": ((2, +1), (1, +1), (0, +1)),
    "coronal": ((1, -1), (2, -1), (0, +1)),
    "sagittal": ((0, +1), (2, -1), (1, +1)),
}


@dataclass(frozen=True)
class SliceStack:
    """Maps volume voxels <-> frames (N, H, W) in radiological display orientation."""

    axis: str
    perm: tuple[int, int, int]  # voxel index axis (0=i, 1=j, 2=k) used as frame, row, col
    flip: tuple[bool, bool, bool]  # whether frame, row, col run against that voxel axis
    vol_shape_ijk: tuple[int, int, int]
    spacing_frc: tuple[float, float, float]  # mm per frame step, per row, per column

    @property
    def num_frames(self) -> int:
        return self.vol_shape_ijk[self.perm[0]]

    @property
    def height(self) -> int:
        return self.vol_shape_ijk[self.perm[1]]

    @property
    def width(self) -> int:
        return self.vol_shape_ijk[self.perm[2]]

    def _flips(self) -> tuple[slice, ...]:
        return tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)

    def frames(self, voxels_kji: np.ndarray) -> np.ndarray:
        """(N, H, W) frames of a [k, j, i] array: a view, so slicing it copies one frame only."""
        voxels_kji = np.asarray(voxels_kji)
        if voxels_kji.shape != self.vol_shape_ijk[::-1]:
            raise VolumeError(
                f"Array of shape {voxels_kji.shape} does not match the volume grid "
                f"{self.vol_shape_ijk[::-1]} ([k, j, i])."
            )
        return voxels_kji.transpose([2 - p for p in self.perm])[self._flips()]

    def to_volume(self, frames: np.ndarray) -> np.ndarray:
        """Inverse of `frames`: (N, H, W) -> a contiguous [k, j, i] array."""
        frames = np.asarray(frames)
        expected = (self.num_frames, self.height, self.width)
        if frames.shape != expected:
            raise VolumeError(
                f"Frames of shape {frames.shape} do not match the slice stack {expected}."
            )
        order = [self.perm.index(2 - a) for a in range(3)]
        return np.ascontiguousarray(frames[self._flips()].transpose(order))

    def ijk_to_frc(self, ijk: ArrayLike) -> np.ndarray:
        """Voxel indices (i, j, k), shape (..., 3), integer or continuous -> (frame, row, col)."""
        ijk = _triples(ijk)
        frc = ijk[..., list(self.perm)]
        for n, axis in enumerate(self.perm):
            if self.flip[n]:
                frc[..., n] = (self.vol_shape_ijk[axis] - 1) - frc[..., n]
        return frc

    def frc_to_ijk(self, frc: ArrayLike) -> np.ndarray:
        """(frame, row, col), shape (..., 3), integer or continuous -> voxel indices (i, j, k)."""
        frc = _triples(frc)
        ijk = np.empty_like(frc)
        for n, axis in enumerate(self.perm):
            value = frc[..., n]
            if self.flip[n]:
                value = (self.vol_shape_ijk[axis] - 1) - value
            ijk[..., axis] = value
        return ijk


def _triples(points: ArrayLike) -> np.ndarray:
    points = np.array(points)  # a copy: callers' arrays are never modified
    if points.shape[-1:] != (3,):
        raise ValueError(f"Expected coordinates of shape (..., 3); got {points.shape}.")
    if not np.issubdtype(points.dtype, np.number):
        raise ValueError(f"Expected numeric coordinates; got {points.dtype}.")
    return points


def slice_stack(volume: Volume, axis: str = "axial") -> SliceStack:
    """The slice stack of `volume` along a patient axis ('axial', 'coronal' or 'sagittal')."""
    name = str(axis).strip().lower()
    if name not in _ROLES:
        raise VolumeError(f"Unknown slice axis '{axis}'; use one of: {', '.join(AXES)}.")
    roles = _ROLES[name]
    direction = np.asarray(volume.direction, dtype=np.float64)

    # The assignment of voxel axes to roles that best follows the patient axes (exhaustive
    # over the six permutations, so oblique volumes never map two roles to one voxel axis).
    def score(perm: tuple[int, ...]) -> float:
        return sum(abs(direction[lps, v]) for (lps, _), v in zip(roles, perm))

    perm = max(itertools.permutations(range(3)), key=score)
    flip = tuple(
        bool(direction[lps, v] * sign < 0) for (lps, sign), v in zip(roles, perm)
    )
    return SliceStack(
        axis=name,
        perm=(perm[0], perm[1], perm[2]),
        flip=(flip[0], flip[1], flip[2]),
        vol_shape_ijk=volume.shape_ijk,
        spacing_frc=tuple(float(volume.spacing[v]) for v in perm),
    )


# ----- frame pixels <-> model pixels --------------------------------------------------------
@dataclass(frozen=True)
class ModelTransform:
    """Frame pixels (H, W, with row/col spacing) <-> SAM 2 model pixels (S, S).

    The frame is resized to keep its physical aspect ratio (never stretched) into the
    top-left `scaled_height` x `scaled_width` of the S x S canvas; the rest is zero padding.
    """

    image_size: int
    height: int
    width: int
    scaled_height: int
    scaled_width: int
    scale_row: float  # model pixels per frame pixel along rows
    scale_col: float

    def points_to_model(self, rc: ArrayLike) -> np.ndarray:
        """(n, 2) frame (row, col) pixel positions -> (n, 2) model (x, y), SAM's convention.

        SAM's prompt encoder adds 0.5 to a coordinate (pixel index -> pixel centre), so a
        frame pixel centre r + 0.5 maps to model index (r + 0.5) * scale - 0.5.
        """
        rc = np.asarray(rc, dtype=np.float64)
        x = (rc[..., 1] + 0.5) * self.scale_col - 0.5
        y = (rc[..., 0] + 0.5) * self.scale_row - 0.5
        return np.stack([x, y], axis=-1)

    def box_to_model(self, r0: float, c0: float, r1: float, c1: float) -> np.ndarray:
        """Inclusive frame pixel bounds -> (4,) model x0, y0, x1, y1.

        The box covers frame pixels [c0, c1 + 1) which become model pixels [c0 * s,
        (c1 + 1) * s); SAM 2 is trained on boxes given as the first and last *covered* pixel
        index (`mask_to_box`), so the corners are c0 * s and (c1 + 1) * s - 1.
        """
        x0, y0 = c0 * self.scale_col, r0 * self.scale_row
        x1 = max(x0, (c1 + 1) * self.scale_col - 1.0)
        y1 = max(y0, (r1 + 1) * self.scale_row - 1.0)
        return np.array([x0, y0, x1, y1], dtype=np.float64)

    def resize_to_content(self, frame: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) float -> (..., C, scaled_height, scaled_width), bilinear, no padding."""
        if tuple(frame.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"Expected frames of size {(self.height, self.width)}; got {tuple(frame.shape)}."
            )
        lead = frame.shape[:-2]
        if (self.scaled_height, self.scaled_width) == (self.height, self.width):
            return frame
        flat = frame.reshape(-1, 1, self.height, self.width)
        resized = F.interpolate(
            flat, (self.scaled_height, self.scaled_width), mode="bilinear",
            align_corners=False, antialias=False,
        )
        return resized.reshape(*lead, self.scaled_height, self.scaled_width)

    def image_to_model(self, frame: torch.Tensor) -> torch.Tensor:
        """(C, H, W) or (N, C, H, W) float -> (..., C, S, S): resized, zero-padded bottom/right."""
        content = self.resize_to_content(frame)
        pad = (0, self.image_size - self.scaled_width, 0, self.image_size - self.scaled_height)
        return F.pad(content, pad, value=0.0)

    def mask_to_model(self, mask: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) float mask -> (N, 1, S, S), exactly as images are mapped."""
        return self.image_to_model(mask)

    def logits_to_frame(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, 1, s, s) logits at any square resolution s -> (N, 1, H, W) on the frame grid.

        Crops the content area and resizes it bilinearly (align_corners=False), done in one
        sampling step so that content sizes that are fractional at low resolution stay exact.
        """
        if logits.ndim != 4 or logits.shape[-1] != logits.shape[-2]:
            raise ValueError(f"Expected (N, C, s, s) logits; got {tuple(logits.shape)}.")
        n, _, s, _ = logits.shape
        opts = {"dtype": logits.dtype, "device": logits.device}
        factor = s / self.image_size
        ys = _sample_coords(self.height, self.scale_row * factor, self.scaled_height * factor, s,
                            opts)
        xs = _sample_coords(self.width, self.scale_col * factor, self.scaled_width * factor, s,
                            opts)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
        grid = grid.unsqueeze(0).expand(n, -1, -1, -1)
        return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)


def _sample_coords(count: int, scale: float, content: float, size: int, opts: dict):
    """Normalised grid_sample positions of `count` output pixel centres inside the content.

    Output pixel p samples input position (p + 0.5) * scale - 0.5 (as F.interpolate does),
    clamped to the content area like a crop would.
    """
    pos = (torch.arange(count, dtype=torch.float64) + 0.5) * scale - 0.5
    pos = pos.clamp(0.0, max(content - 1.0, 0.0))
    return ((2.0 * pos + 1.0) / size - 1.0).to(**opts)


def model_transform(stack: SliceStack, image_size: int) -> ModelTransform:
    """The frame <-> model pixel transform of `stack` for a model of `image_size` pixels.

    Frames keep their physical aspect ratio: the longer physical side fills the canvas.
    """
    size = int(image_size)
    if size < 1:
        raise ValueError(f"Model image size must be positive; got {image_size}.")
    height, width = stack.height, stack.width
    extent_rows = height * stack.spacing_frc[1]
    extent_cols = width * stack.spacing_frc[2]
    mm_per_pixel = max(extent_rows, extent_cols) / size
    scaled_h = min(max(round(extent_rows / mm_per_pixel), 1), size)
    scaled_w = min(max(round(extent_cols / mm_per_pixel), 1), size)
    return ModelTransform(
        image_size=size,
        height=height,
        width=width,
        scaled_height=scaled_h,
        scaled_width=scaled_w,
        scale_row=scaled_h / height,
        scale_col=scaled_w / width,
    )
