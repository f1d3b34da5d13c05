"""Training clips for SAM 2 fine-tuning: runs of consecutive axial slices of one organ.

A clip is what SAM 2 sees as a short video: T consecutive slices in the session's display
orientation (`slice_stack`), windowed with the same intensity preset and resized / padded to
the model's square input exactly as the session does (`model_transform`, `to_model_tensor`),
so fine-tuned weights see at training time what they will see at inference. Each item is one
(case, organ) pair; which slices it covers is drawn per epoch from a seed, so any sampler
(`torch.utils.data.DistributedSampler` included) gives the same clips on every run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sam2refine.datasets.nnunet import DatasetCase, NnUNetDataset
from sam2refine.errors import DatasetError
from sam2refine.image.intensity import frames_to_unit, normalize, parse_preset
from sam2refine.image.reading import load_volume
from sam2refine.image.slicing import slice_stack
from sam2refine.sam.transform import ModelTransform, model_transform, to_model_tensor


@dataclass(frozen=True)
class ClipItem:
    """One organ of one case and the slices (frame indices) where it is present."""

    case_index: int
    organ: str
    label_value: int
    frames_present: tuple[int, ...]


@dataclass
class Clip:
    """Model-ready frames and masks of one clip; frame 0 always shows the organ."""

    images: torch.Tensor  # (T, 3, S, S) float32, SAM 2 normalised
    masks: torch.Tensor  # (T, S, S) bool, model pixels
    case_id: str
    organ: str
    frames: tuple[int, ...]  # slice indices in clip order


@dataclass
class _LoadedCase:
    frames: np.ndarray  # (N, H, W) raw voxel values
    labels: np.ndarray  # (N, H, W) label values
    window: tuple[float, float]
    transform: ModelTransform


class ClipDataset(torch.utils.data.Dataset):
    """(case, organ) items of an `NnUNetDataset` as clips of `clip_length` slices.

    Training items start at a random slice showing the organ and run up or down the volume
    at random (the session propagates both ways); with `train=False` a clip is centred on
    the organ and runs upwards, so validation sees the same clips every epoch.
    """

    def __init__(
        self,
        dataset: NnUNetDataset,
        cases: Sequence[DatasetCase],
        image_size: int,
        clip_length: int = 8,
        intensity: str = "ct",
        axis: str = "axial",
        train: bool = True,
        seed: int = 0,
        cached_cases: int = 4,
    ) -> None:
        if clip_length < 1:
            raise DatasetError(f"The clip length must be at least 1 slice; got {clip_length}.")
        self.dataset = dataset
        self.cases = list(cases)
        self.image_size = int(image_size)
        self.clip_length = int(clip_length)
        self.preset = parse_preset(intensity)
        self.axis = axis
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self._cache: OrderedDict[int, _LoadedCase] = OrderedDict()
        self._cached_cases = max(1, cached_cases)
        self.items = self._index()
        if not self.items:
            raise DatasetError(
                f"No case of {dataset.root} among the {len(self.cases)} selected contains any "
                f"of the labels {sorted(dataset.labels)}; there is nothing to train on."
            )

    def set_epoch(self, epoch: int) -> None:
        """Draw other slices for the training items (call once per epoch, like a sampler's)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Clip:
        item = self.items[index]
        case = self._load(item.case_index)
        frames = self._clip_frames(item, len(case.frames), index)
        raw = case.frames[list(frames)]
        images = to_model_tensor(frames_to_unit(raw, *case.window), case.transform)
        organ = torch.from_numpy(case.labels[list(frames)] == item.label_value)
        resized = case.transform.mask_to_model(organ[:, None].float())[:, 0]
        masks = resized > 0.5
        # An organ a few pixels wide can vanish when the slice is shrunk; keep frame 0's trace.
        if not bool(masks[0].any()):
            masks[0] = resized[0] > 0.0
        return Clip(images, masks, self.cases[item.case_index].case_id, item.organ, frames)

    def _clip_frames(self, item: ClipItem, num_frames: int, index: int) -> tuple[int, ...]:
        present = np.asarray(item.frames_present)
        middle = int(present[len(present) // 2])
        length = min(self.clip_length, num_frames)
        starts = _clip_starts(present, length, num_frames)
        if not starts:  # no full-length clip starts on the organ: take the longer side
            step = 1 if num_frames - middle >= middle + 1 else -1
            length = num_frames - middle if step == 1 else middle + 1
            starts = [(middle, step)]
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            start, step = starts[int(rng.integers(len(starts)))]
        else:
            start, step = min(starts, key=lambda s: (abs(s[0] - middle), -s[1]))
        return tuple(range(start, start + step * length, step))

    def _index(self) -> list[ClipItem]:
        """Scan the label files once for which organs each case shows on which slices."""
        items = []
        for case_index, case in enumerate(self.cases):
            if case.label_path is None:
                continue
            labels = load_volume(case.label_path)
            frames = slice_stack(labels, self.axis).frames(labels.voxels)
            for organ, value in sorted(self.dataset.labels.items(), key=lambda kv: kv[1]):
                present = np.flatnonzero((frames == value).any(axis=(1, 2)))
                if present.size:
                    items.append(ClipItem(case_index, organ, value, tuple(int(f) for f in present)))
        return items

    def _load(self, case_index: int) -> _LoadedCase:
        if case_index in self._cache:
            self._cache.move_to_end(case_index)
            return self._cache[case_index]
        image, labels = self.dataset.load_case(self.cases[case_index])
        stack = slice_stack(image, self.axis)
        loaded = _LoadedCase(
            frames=np.ascontiguousarray(stack.frames(image.voxels)),
            labels=np.ascontiguousarray(stack.frames(labels.voxels)),
            window=normalize(image.voxels, self.preset),
            transform=model_transform(stack, self.image_size),
        )
        self._cache[case_index] = loaded
        while len(self._cache) > self._cached_cases:
            self._cache.popitem(last=False)
        return loaded


def _clip_starts(present: np.ndarray, length: int, num_frames: int) -> list[tuple[int, int]]:
    """(start slice, +1 up / -1 down) of every clip that starts on the organ and fits in the
    volume; those that stay within the organ's slice range if there are any."""
    up = [(int(s), 1) for s in present if s + length <= num_frames]
    down = [(int(s), -1) for s in present if s - length + 1 >= 0]
    inside = ([c for c in up if c[0] + length - 1 <= present.max()]
              + [c for c in down if c[0] - length + 1 >= present.min()])
    return inside or up + down
