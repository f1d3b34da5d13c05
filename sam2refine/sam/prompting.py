"""Prompts on one slice of one object, and their translation into SAM 2 decoder inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from sam2refine.errors import PromptError
from sam2refine.sam.transform import ModelTransform

MASK_MODES = ("refine", "exact")
# SAM 2 turns a binary mask into logits this way before its memory encoder (sigmoid 20x - 10).
_MASK_LOGIT_SCALE, _MASK_LOGIT_BIAS = 20.0, -10.0


@dataclass
class FramePrompts:
    """Everything the user gave for one object on one slice (frame coordinates: row, col)."""

    points: list[tuple[float, float, int]] = field(default_factory=list)  # row, col, 1=+ / 0=-
    box: tuple[int, int, int, int] | None = None  # inclusive r0, c0, r1, c1
    mask: np.ndarray | None = None  # (H, W) bool
    mask_mode: str = "refine"
    # Whether the slice was prompted before propagation reached it: then SAM 2 segments it
    # from the prompts alone (no memory), as on a first frame; otherwise it corrects the
    # tracked mask using memory and the previous logits.
    initial: bool = True

    def is_empty(self) -> bool:
        return not self.points and self.box is None and self.mask is None


@dataclass
class DecoderInputs:
    """SAM 2 `track_step` inputs for one object (batch of one) on one slice."""

    point_inputs: dict[str, torch.Tensor] | None
    mask_inputs: torch.Tensor | None
    prev_logits: torch.Tensor | None


def decoder_inputs(
    prompts: FramePrompts,
    transform: ModelTransform,
    previous_logits: torch.Tensor | None,
    device: torch.device,
) -> DecoderInputs:
    """Translate a slice's prompts into what SAM 2's decoder takes.

    A mask in "exact" mode goes through SAM 2.1's own mask path, which copies it to the output
    unchanged. In "refine" mode (the default) the mask is turned into its bounding box and a
    positive click at its most interior pixel, and the mask itself is fed as the decoder's
    previous-logits input, the way SAM 2 is trained to refine a mask with corrective clicks:
    the result follows the image while the mask shapes it.
    """
    if prompts.mask is not None and prompts.mask_mode == "exact":
        mask = torch.from_numpy(prompts.mask.astype(np.float32))[None, None]
        model_mask = (transform.mask_to_model(mask) > 0.5).float().to(device)
        return DecoderInputs(None, model_mask, None)
    coords: list[np.ndarray] = []
    labels: list[int] = []
    box = prompts.box
    clicks = list(prompts.points)
    prev = previous_logits
    if prompts.mask is not None:
        box, interior = mask_box_and_interior(prompts.mask)
        clicks = [(interior[0], interior[1], 1), *clicks]
        mask = torch.from_numpy(prompts.mask.astype(np.float32))[None, None]
        prev = transform.mask_to_model(mask) * _MASK_LOGIT_SCALE + _MASK_LOGIT_BIAS
    if box is not None:
        coords.append(transform.box_to_model(*box).reshape(2, 2))
        labels += [2, 3]
    if clicks:
        rc = np.array([(r, c) for r, c, _ in clicks], dtype=np.float64)
        coords.append(np.asarray(transform.points_to_model(rc)).reshape(-1, 2))
        labels += [int(lab) for _, _, lab in clicks]
    point_inputs = {
        "point_coords": torch.tensor(np.concatenate(coords), dtype=torch.float32)[None].to(device),
        "point_labels": torch.tensor(labels, dtype=torch.int32)[None].to(device),
    }
    if prev is not None:
        prev = torch.clamp(prev.to(device), -32.0, 32.0)
    return DecoderInputs(point_inputs, None, prev)


def mask_box_and_interior(mask: np.ndarray) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Bounding box (inclusive) of a 2D mask and the pixel deepest inside it."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise PromptError(
            "The mask prompt is empty. Draw the structure on this slice, or pass the empty mask "
            "with mode='exact' to state that the object is absent here."
        )
    box = (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max()))
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            sitk.GetImageFromArray(padded), insideIsPositive=True, squaredDistance=False,
            useImageSpacing=False,
        )
    )[1:-1, 1:-1]
    distance[~mask.astype(bool)] = -np.inf
    # Elongated shapes have a ridge of equally deep pixels: take the one nearest its middle.
    ridge = np.argwhere(distance >= distance.max() - 0.5)
    r, c = ridge[np.argmin(((ridge - ridge.mean(axis=0)) ** 2).sum(axis=1))]
    return box, (int(r), int(c))
