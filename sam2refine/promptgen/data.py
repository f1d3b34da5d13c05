"""Training data for the U-Net prompt generator: prepared cases, slice samples, augmentation.

Each case is prepared once exactly as inference prepares volumes (`promptgen.prepare_frames`)
and cached as memory-mapped arrays, so real CT datasets need not fit in memory. Samples are
axial slices with their neighbours as channels, cropped to the training size (a third of them
centred on an organ, as nnU-Net oversamples foreground); augmentation runs batched on the
device: small rotations and scalings, intensity scale and shift, noise, and never left-right
flips, which would turn a left kidney into a right one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import Dataset

from sam2refine.errors import DatasetError
from sam2refine.image.slicing import slice_stack
from sam2refine.image.volume import Volume
from sam2refine.io.atomic import atomic_write
from sam2refine.promptgen.generator import PromptGenConfig, prepare_frames, resize_frames


@dataclass
class PreparedCase:
    """One case as the network sees it: (N, H', W') frames in [0, 1] and class indices."""

    case_id: str
    frames: np.ndarray  # float16
    classes: np.ndarray  # uint8: 0 background, c = config.organ_names[c - 1]


def organ_labels(dataset_labels: dict[str, int]) -> dict[str, int]:
    """The dataset's organs (background dropped); region-based labels are refused."""
    organs = {}
    for name, value in dataset_labels.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise DatasetError(f"Label '{name}' is {value!r}; the prompt generator needs one "
                               "integer value per organ (no nnU-Net region labels).")
        if int(value) != 0:
            organs[str(name)] = int(value)
    if not organs:
        raise DatasetError("The dataset's dataset.json names no organ labels besides background.")
    return organs


def prepare_case(image: Volume, label: Volume, config: PromptGenConfig) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """(frames float16, classes uint8) of one case on the network's grid."""
    if label.voxels.shape != image.voxels.shape:
        raise DatasetError(f"Label map shape {label.voxels.shape} differs from the image's "
                           f"{image.voxels.shape}.")
    frames, stack = prepare_frames(image, config)
    values = np.asarray(label.voxels).astype(np.int64)
    classes = np.zeros(values.shape, np.uint8)
    for c, name in enumerate(config.organ_names, 1):
        classes[values == config.labels[name]] = c
    classes = resize_frames(stack.frames(classes).copy(), frames.shape[1:], "nearest-exact")
    return frames.astype(np.float16), classes.numpy().astype(np.uint8)


def median_spacing(cases) -> tuple[float, float]:
    """Median in-plane (row, column) spacing of the cases' axial slices, from file headers."""
    import SimpleITK as sitk

    spacings = []
    for case in cases:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.image_paths[0]))
        reader.ReadImageInformation()
        direction = np.asarray(reader.GetDirection()[:9], np.float64).reshape(3, 3)
        probe = Volume(np.zeros((1, 1, 1), np.uint8), reader.GetSpacing()[:3], (0, 0, 0),
                       direction)
        spacings.append(slice_stack(probe, "axial").spacing_frc[1:])
    return tuple(float(s) for s in np.median(np.asarray(spacings), axis=0))


def load_prepared(dataset, cases, config: PromptGenConfig, cache: Path, rank: int,
                  world: int) -> list[PreparedCase]:
    """The cases prepared for `config`; rank 0 fills the cache, every rank memory-maps it."""
    key = hashlib.sha1(json.dumps([config.intensity, config.target_spacing,
                                   sorted(config.labels.items())]).encode()).hexdigest()[:10]
    paths = {c.case_id: (cache / f"{c.case_id}.{key}.img.npy",
                         cache / f"{c.case_id}.{key}.seg.npy") for c in cases}
    if rank == 0:
        cache.mkdir(parents=True, exist_ok=True)
        for case in cases:
            img_path, seg_path = paths[case.case_id]
            if not (img_path.is_file() and seg_path.is_file()):
                frames, classes = prepare_case(*dataset.load_case(case), config)
                atomic_write(img_path, lambda tmp, a=frames: np.save(tmp, a))
                atomic_write(seg_path, lambda tmp, a=classes: np.save(tmp, a))
    barrier(world)
    return [PreparedCase(c.case_id, np.load(paths[c.case_id][0], mmap_mode="r"),
                         np.load(paths[c.case_id][1], mmap_mode="r")) for c in cases]


class SliceSamples(Dataset):
    """Training samples: (context channels, S, S) float32 crops and (S, S) int64 classes.

    Each sample's crop is drawn from a generator seeded by (seed, draw, index), where `draw`
    is set per pass over the data, so runs are reproducible with any number of workers."""

    def __init__(self, cases: list[PreparedCase], config: PromptGenConfig, seed: int,
                 foreground_fraction: float) -> None:
        self.cases, self.config, self.seed = cases, config, seed
        self.foreground_fraction = foreground_fraction
        self.index = [(c, f) for c, case in enumerate(cases) for f in range(len(case.frames))]
        self.draw = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.draw, n])
        c, f = self.index[n]
        case, context, size = self.cases[c], self.config.context, self.config.image_size
        rows = np.clip(np.arange(f - context, f + context + 1), 0, len(case.frames) - 1)
        classes = np.asarray(case.classes[f])
        top, left = _crop_origin(classes, size, rng, self.foreground_fraction)
        image = _crop(np.asarray(case.frames[rows], np.float32), top, left, size)
        return torch.from_numpy(image), torch.from_numpy(_crop(classes, top, left, size).astype(
            np.int64))


def _crop_origin(classes: np.ndarray, size: int, rng: np.random.Generator,
                 foreground_fraction: float) -> tuple[int, int]:
    """Top-left corner of a size x size crop (negative or beyond the frame means padding)."""
    lows = [min(0, n - size) for n in classes.shape]
    highs = [max(0, n - size) for n in classes.shape]
    if rng.random() < foreground_fraction:
        rows, cols = np.nonzero(classes)
        if len(rows):
            pick = rng.integers(len(rows))
            centre = (rows[pick] - size // 2, cols[pick] - size // 2)
            return tuple(int(np.clip(c, lo, hi)) for c, lo, hi in zip(centre, lows, highs))
    return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(lows, highs))


def _crop(array: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """array[..., top:top+size, left:left+size], zero-padded where it leaves the array."""
    out = np.zeros((*array.shape[:-2], size, size), array.dtype)
    h, w = array.shape[-2:]
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + size, h), min(left + size, w)
    out[..., r0 - top:r1 - top, c0 - left:c1 - left] = array[..., r0:r1, c0:c1]
    return out


def augment(images: torch.Tensor, classes: torch.Tensor, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation (±15°) and scale (0.85-1.15) on 70% of samples, intensity scale
    (0.97-1.03) and shift (±0.01), Gaussian noise; no flips (left/right organs stay put)."""
    b, device = images.shape[0], images.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=gen) * (hi - lo) + lo).to(device)

    spatial = (torch.rand(b, generator=gen) < 0.7).to(device)
    angle = torch.deg2rad(uniform(-15.0, 15.0)) * spatial
    scale = torch.where(spatial, uniform(0.85, 1.15), torch.ones_like(angle))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
    classes = F.grid_sample(classes[:, None].float(), grid, mode="nearest",
                            align_corners=False)[:, 0].long()
    # CT numbers are calibrated and organs differ by a few HU: contrast changes stay small
    # (±3 %, ±4 HU on the 400 HU abdomen window), as scanners differ.
    images = images * uniform(0.97, 1.03)[:, None, None, None] + uniform(-0.01, 0.01)[
        :, None, None, None]
    noise = torch.randn(images.shape, generator=gen).to(device)
    return images + noise * uniform(0.0, 0.02)[:, None, None, None], classes


def barrier(world: int) -> None:
    """Wait for every training process (a no-op when training alone)."""
    if world > 1:
        dist.barrier()
