"""Frame pixels <-> SAM 2 model pixels: pad to a square keeping the physical aspect ratio."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import ArrayLike

from sam2refine.image.slicing import SliceStack

# The mean / std SAM 2 normalises its (0..1) RGB input with.
SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)


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


def to_model_tensor(frames_unit: np.ndarray, transform: ModelTransform) -> torch.Tensor:
    """(N, H, W) frames in [0, 1] -> (N, 3, S, S) float32 SAM 2 input.

    Grey values go to 3 identical channels, normalised with SAM 2's mean/std; the padding
    holds what intensity 0 normalises to, so it looks black like the darkest tissue/air.
    Only the output and one resized channel are allocated, so a single slice (N=1) is cheap.
    """
    frames_unit = np.asarray(frames_unit)
    if frames_unit.ndim != 3:
        raise ValueError(f"Expected frames of shape (N, H, W); got {frames_unit.shape}.")
    grey = torch.from_numpy(np.ascontiguousarray(frames_unit, dtype=np.float32))
    content = transform.resize_to_content(grey.unsqueeze(1))[:, 0]  # (N, h, w)
    size, h, w = transform.image_size, transform.scaled_height, transform.scaled_width
    out = torch.empty((grey.shape[0], 3, size, size), dtype=torch.float32)
    for channel, (mean, std) in enumerate(zip(SAM2_MEAN, SAM2_STD)):
        plane = out[:, channel]
        plane.fill_((0.0 - mean) / std)
        plane[:, :h, :w].copy_(content).sub_(mean).div_(std)
    return out
