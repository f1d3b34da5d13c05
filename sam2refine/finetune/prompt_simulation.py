"""Simulated user prompts for fine-tuning, after SAM-Med2D's interactive training recipe.

A clip's first frame starts from a jittered box or a single interior click; correction rounds
then add N clicks (N from {1, 3, 5, 9}) sampled from where the current prediction is wrong
(missed foreground -> positive, false positive -> negative), with the previous low-resolution
logits fed back as the decoder's mask input. Some rounds drop every click and the box, so the
decoder learns to improve a mask on its own: that is what makes a mask prompt worth more than
a copy of itself.

Everything works on (H, W) bool masks in *model* pixels; coordinates are SAM's (x, y), with a
box given as its first and last covered pixel (SAM 2's `mask_to_box` convention). All random
choices come from a `torch.Generator`, so a seed fixes them on any device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812

POINT_COUNTS = (1, 3, 5, 9)
BOX_LABELS = (2, 3)  # SAM's labels for the top-left and bottom-right box corners


@dataclass
class PromptSet:
    """Clicks and an optional box for one object on one frame, in model (x, y) pixels."""

    box: torch.Tensor | None = None  # (4,) x0, y0, x1, y1
    coords: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2))  # (P, 2)
    labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int32))

    def add_points(self, coords: torch.Tensor, labels: torch.Tensor) -> None:
        """Append clicks (labels 1 = positive, 0 = negative)."""
        self.coords = torch.cat([self.coords.to(coords), coords.float()])
        self.labels = torch.cat([self.labels.to(labels.device), labels.to(torch.int32)])

    def is_empty(self) -> bool:
        return self.box is None and self.labels.numel() == 0

    def point_inputs(self, device: torch.device) -> dict[str, torch.Tensor] | None:
        """SAM 2's `point_inputs` (batch of one): box corners first, then the clicks."""
        if self.is_empty():
            return None
        coords, labels = [self.coords.float().to(device)], [self.labels.to(device)]
        if self.box is not None:
            coords.insert(0, self.box.float().reshape(2, 2).to(device))
            labels.insert(0, torch.tensor(BOX_LABELS, dtype=torch.int32, device=device))
        return {"point_coords": torch.cat(coords)[None], "point_labels": torch.cat(labels)[None]}


@dataclass(frozen=True)
class Round:
    """One correction round: `num_points` new clicks, or a mask-only round (no clicks, no box,
    the previous logits alone; `binarize` turns them into a hard +-10 mask first, as a user's
    drawn mask arrives at inference)."""

    num_points: int
    mask_only: bool = False
    binarize: bool = False


@dataclass(frozen=True)
class PromptPlan:
    """How one clip is prompted: the initial prompt kind and the correction rounds."""

    initial: str  # "box" or "point"
    rounds: tuple[Round, ...]


def plan_prompts(
    generator: torch.Generator,
    num_rounds: int = 2,
    box_prob: float = 0.5,
    mask_only_prob: float = 0.25,
    point_counts: tuple[int, ...] = POINT_COUNTS,
) -> PromptPlan:
    """Draw a clip's prompting plan: box or point first, then `num_rounds` corrections."""
    initial = "box" if _uniform(generator) < box_prob else "point"
    rounds = []
    for _ in range(num_rounds):
        if _uniform(generator) < mask_only_prob:
            rounds.append(Round(0, mask_only=True, binarize=_uniform(generator) < 0.5))
        else:
            pick = int(torch.randint(len(point_counts), (1,), generator=generator))
            rounds.append(Round(point_counts[pick]))
    return PromptPlan(initial, tuple(rounds))


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """(4,) x0, y0, x1, y1: the first and last covered column and row of a non-empty mask."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ValueError("Cannot take the box of an empty mask.")
    return torch.stack([cols[0], rows[0], cols[-1], rows[-1]]).float()


def jittered_box(
    mask: torch.Tensor, generator: torch.Generator, jitter: float = 0.1
) -> torch.Tensor:
    """The mask's box with each side moved by up to `jitter` x the box size, kept in the image.

    SAM-Med2D trains on such boxes so that a box drawn a little loose or tight still works.
    """
    x0, y0, x1, y1 = mask_box(mask).tolist()
    w, h = x1 - x0 + 1.0, y1 - y0 + 1.0
    shift = (torch.rand(4, generator=generator) * 2.0 - 1.0) * jitter
    box = torch.tensor([x0, y0, x1, y1]) + shift * torch.tensor([w, h, w, h])
    height, width = mask.shape
    box[0::2] = box[0::2].clamp(0.0, width - 1.0)
    box[1::2] = box[1::2].clamp(0.0, height - 1.0)
    box[2] = torch.maximum(box[2], box[0])
    box[3] = torch.maximum(box[3], box[1])
    return box.to(mask.device)


def interior_point(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(1, 2) x, y of a random pixel at least half as deep inside the mask as its deepest one.

    A click on the object's edge is ambiguous; users click well inside, so we do too.
    """
    depth = erosion_depth(mask)
    deep = depth >= (depth.max() + 1) // 2
    return _sample_pixels(deep, 1, generator)


def erosion_depth(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) int: how many 3x3 erosions each foreground pixel survives (0 outside)."""
    current = mask.float()[None, None]
    depth = torch.zeros_like(current)
    while bool(current.any()):
        depth += current
        current = 1.0 - F.max_pool2d(1.0 - current, 3, stride=1, padding=1)
    return depth[0, 0].long()


def correction_points(
    pred: torch.Tensor, target: torch.Tensor, num_points: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `num_points` clicks drawn uniformly from the error region of `pred`.

    Returns ((n, 2) x, y, (n,) labels): 1 where foreground was missed, 0 on false positives;
    n is 0 when the prediction is already perfect.
    """
    missed = target & ~pred
    error = missed | (pred & ~target)
    coords = _sample_pixels(error, num_points, generator)
    if coords.numel() == 0:
        return coords, torch.zeros(0, dtype=torch.int32, device=pred.device)
    x, y = coords[:, 0].long(), coords[:, 1].long()
    return coords, missed[y, x].to(torch.int32)


def binary_to_logits(mask: torch.Tensor) -> torch.Tensor:
    """A hard mask as SAM 2 writes one into logits: +10 inside, -10 outside."""
    return mask.float() * 20.0 - 10.0


def _sample_pixels(region: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) float x, y of min(count, |region|) distinct pixels drawn uniformly from region."""
    flat = torch.nonzero(region.flatten()).flatten()
    n = min(count, flat.numel())
    if n == 0:
        return torch.zeros(0, 2, device=region.device)
    pick = torch.randperm(flat.numel(), generator=generator)[:n].to(flat.device)
    index = flat[pick]
    width = region.shape[1]
    return torch.stack([index % width, index // width], dim=1).float()


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator))
