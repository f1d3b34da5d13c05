"""The U-Net prompt generator (RFMedSAM 2's stage 0): organ proposals SAM 2 starts from.

A 2.5D MONAI U-Net segments each axial slice with its neighbouring slices as extra input
channels (why 2.5D and not 3D: README, "Prompt generator"). Slices are taken along the patient
axial axis with `slice_stack`, scaled with an intensity preset, and resampled in-plane to the
spacing the network was trained at; a sliding window covers slices of any size. Probabilities
go back to the volume's own grid, where each organ becomes a cleaned mask, its box on every
axial slice it touches, and its z-extent: the prompts the SAM 2 stages need.

Checkpoints are plain dictionaries of tensors and numbers (`torch.load(weights_only=True)`),
tagged with `CHECKPOINT_KIND` so that a SAM 2 checkpoint or any other file is refused clearly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F  # noqa: N812

from sam2refine.errors import PromptGeneratorError, SAM2RefineError
from sam2refine.image.intensity import frames_to_unit, normalize, parse_preset
from sam2refine.image.slicing import SliceStack, slice_stack
from sam2refine.image.volume import Volume
from sam2refine.io.organ_names import organ_key
from sam2refine.io.torch_files import load_weights_only
from sam2refine.runtime import autocast, resolve_device

log = logging.getLogger("sam2refine")

CHECKPOINT_KIND = "sam2refine-prompt-generator"
FORMAT_VERSION = 1
Progress = Callable[[int, int], None]  # (slices done, slices in all)


@dataclass(frozen=True)
class PromptGenConfig:
    """Everything needed to rebuild the network and prepare its input the way it was trained."""

    labels: dict[str, int]  # organ name -> label value in the training label maps (no 0)
    image_size: int = 256  # side of the square training crops, pixels at target_spacing
    target_spacing: tuple[float, float] = (1.0, 1.0)  # in-plane mm per row, per column
    context: int = 1  # neighbouring slices on each side given as extra channels
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    intensity: str = "ct"  # an intensity preset name (sam2refine.image.intensity)

    def __post_init__(self) -> None:
        labels = {str(n): int(v) for n, v in dict(self.labels).items()}
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "target_spacing", tuple(float(s) for s in self.target_spacing))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        self._check()

    def _check(self) -> None:
        if not self.labels or any(v <= 0 for v in self.labels.values()):
            raise PromptGeneratorError(
                f"A prompt generator needs organ labels with positive values; got {self.labels}."
            )
        if len(set(self.labels.values())) != len(self.labels):
            raise PromptGeneratorError(f"Two organs share a label value in {self.labels}.")
        if len(self.strides) != len(self.channels) - 1 or len(self.channels) < 2:
            raise PromptGeneratorError(
                f"U-Net channels {self.channels} need exactly one stride fewer ({self.strides})."
            )
        divisor = int(np.prod(self.strides))
        if self.image_size < divisor or self.image_size % divisor:
            raise PromptGeneratorError(
                f"Image size {self.image_size} must be a multiple of {divisor} (the U-Net's "
                "total downsampling); try 128, 192 or 256."
            )
        if len(self.target_spacing) != 2 or min(self.target_spacing) <= 0:
            raise PromptGeneratorError(f"Invalid target spacing {self.target_spacing}.")
        if self.context < 0:
            raise PromptGeneratorError(f"Context slices must be 0 or more; got {self.context}.")
        parse_preset(self.intensity)

    @property
    def organ_names(self) -> list[str]:
        """Organ names in class order (class c + 1 is organ_names[c]; class 0 is background)."""
        return sorted(self.labels, key=self.labels.__getitem__)

    @property
    def num_classes(self) -> int:
        return len(self.labels) + 1

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1

    def to_dict(self) -> dict:
        """Plain types only, so checkpoints load with `weights_only=True`."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> PromptGenConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def build_unet(config: PromptGenConfig) -> torch.nn.Module:
    """The MONAI 2D U-Net for `config` (instance norm: no running statistics to keep in sync
    across DDP processes, and robust to slices that are mostly air)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=config.in_channels, out_channels=config.num_classes,
                channels=config.channels, strides=config.strides,
                num_res_units=config.num_res_units, norm="INSTANCE")


# ----- input preparation (shared by training and inference) -----------------------------------
def resampled_shape(height: int, width: int, spacing_rc: Sequence[float],
                    target_rc: Sequence[float]) -> tuple[int, int]:
    """Frame size after in-plane resampling from `spacing_rc` to `target_rc` mm per pixel."""
    return (max(1, round(height * spacing_rc[0] / target_rc[0])),
            max(1, round(width * spacing_rc[1] / target_rc[1])))


def resize_frames(frames: np.ndarray | torch.Tensor, size: tuple[int, int],
                  mode: str = "bilinear") -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) -> the same at `size`; 'nearest-exact' for label maps."""
    tensor = torch.as_tensor(frames)
    flat = tensor.ndim == 3
    x = tensor[:, None] if flat else tensor
    if tuple(x.shape[-2:]) != tuple(size):
        kind = x.dtype
        x = x.float()
        if mode == "bilinear":
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=size, mode=mode).to(kind)
    return x[:, 0] if flat else x


def prepare_frames(volume: Volume, config: PromptGenConfig) -> tuple[np.ndarray, SliceStack]:
    """Axial frames of `volume` scaled to [0, 1] by the config's preset and resampled in-plane
    to its target spacing: (N, H', W') float32, and the slice stack they came from."""
    stack = slice_stack(volume, "axial")
    low, high = normalize(volume.voxels, parse_preset(config.intensity))
    unit = frames_to_unit(stack.frames(volume.voxels), low, high)
    size = resampled_shape(stack.height, stack.width, stack.spacing_frc[1:],
                           config.target_spacing)
    return resize_frames(unit, size).numpy(), stack


def with_context(frames: torch.Tensor, indices: torch.Tensor, context: int) -> torch.Tensor:
    """(len(indices), 2*context+1, H, W): each frame with its neighbours (repeated at the ends)."""
    offsets = torch.arange(-context, context + 1)
    rows = (indices[:, None] + offsets[None, :]).clamp(0, frames.shape[0] - 1)
    return frames[rows]


def class_probabilities(net: torch.nn.Module, frames: np.ndarray, config: PromptGenConfig,
                        device: torch.device, chunk: int = 32, sw_batch_size: int = 16,
                        progress: Progress | None = None
                        ) -> Iterator[tuple[int, torch.Tensor]]:
    """Softmax probabilities (n, classes, H', W') float32 on the CPU for successive chunks of
    the prepared `frames`, each with its first frame index; windows run batched on `device`."""
    from monai.inferers import sliding_window_inference

    all_frames = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    roi = (config.image_size, config.image_size)
    total = len(all_frames)
    net.eval()
    with torch.inference_mode(), autocast(device):
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total))
            inputs = with_context(all_frames, idx, config.context).to(device)
            probs = sliding_window_inference(
                inputs, roi, sw_batch_size, lambda x: torch.softmax(net(x).float(), 1),
                overlap=0.25, mode="gaussian", padding_mode="constant", cval=0.0)
            yield start, probs.float().cpu()
            if progress is not None:
                progress(int(idx[-1]) + 1, total)


# ----- proposals -----------------------------------------------------------------------------
@dataclass
class OrganProposal:
    """One organ as proposed on a volume's grid."""

    name: str
    label: int
    probability: np.ndarray  # [k, j, i] float16
    mask: np.ndarray  # [k, j, i] bool, thresholded and cleaned of small islands
    boxes: dict[int, tuple[int, int, int, int]]  # axial frame -> inclusive (row0, col0, row1, col1)
    z_extent: tuple[int, int] | None  # first and last axial frame with mask; None if absent


@dataclass
class Proposals:
    """Organ proposals for one volume."""

    volume: Volume
    organs: dict[str, OrganProposal] = field(default_factory=dict)

    def label_volume(self) -> Volume:
        """All organs' masks as one uint16 label map (their label values) on the volume grid."""
        labels = np.zeros(self.volume.voxels.shape, np.uint16)
        for organ in self.organs.values():
            labels[organ.mask] = organ.label
        return self.volume.with_voxels(labels)


def organ_boxes(mask_kji: np.ndarray, stack: SliceStack) -> dict[int, tuple[int, int, int, int]]:
    """Inclusive (row0, col0, row1, col1) of the mask on every axial frame it touches."""
    frames = stack.frames(mask_kji)
    boxes = {}
    for f in np.nonzero(frames.reshape(len(frames), -1).any(1))[0]:
        rows = np.nonzero(frames[f].any(1))[0]
        cols = np.nonzero(frames[f].any(0))[0]
        boxes[int(f)] = (int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1]))
    return boxes


def keep_large_components(mask: np.ndarray, spacing: Sequence[float],
                          keep_fraction: float) -> np.ndarray:
    """The largest connected component of `mask`, plus any other at least `keep_fraction` of its
    size (an organ may be split by the slice geometry; specks elsewhere are false positives)."""
    if not mask.any():
        return mask
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(image, True), sortByObjectSize=True)
    labels = sitk.GetArrayFromImage(components)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(sizes >= keep_fraction * sizes[0])[0] + 1
    return np.isin(labels, keep)


def check_labels(generator: PromptGenerator, wanted_names: Sequence[str]) -> None:
    """A `PromptGeneratorError` naming every wanted organ the generator was not trained for."""
    known = {organ_key(n) for n in generator.labels}
    missing = [n for n in wanted_names if organ_key(n) not in known]
    if missing:
        raise PromptGeneratorError(
            f"The prompt generator {generator.source} was trained for other labels: it has no "
            f"{', '.join(repr(m) for m in missing)} (it knows: {', '.join(generator.labels)}). "
            "Train one on a dataset with these organs, or ask for organs it knows."
        )


class PromptGenerator:
    """A trained prompt generator on a device: volume in, organ proposals out."""

    def __init__(self, net: torch.nn.Module, config: PromptGenConfig, device: torch.device,
                 source: str = "(in memory)") -> None:
        self.net = net.to(device).eval()
        self.config = config
        self.device = device
        self.source = source

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> PromptGenerator:
        """The generator stored in a checkpoint written by `train-prompt-generator`."""
        data = read_checkpoint(path)
        config = data["config"]
        net = build_unet(config)
        try:
            net.load_state_dict(data["model"], strict=True)
        except (RuntimeError, KeyError, TypeError) as exc:
            raise PromptGeneratorError(
                f"{path} does not match the U-Net its settings describe ({exc}); the file is "
                "damaged or was edited. Use the checkpoint training wrote."
            ) from exc
        return cls(net, config, resolve_device(device), source=Path(path).name)

    @property
    def labels(self) -> dict[str, int]:
        """Organ name -> label value, as in the training dataset."""
        return dict(self.config.labels)

    def predict(self, volume: Volume, progress: Progress | None = None,
                keep_fraction: float = 0.25) -> Proposals:
        """Every organ's probability, cleaned mask, per-slice boxes and z-extent on `volume`'s
        own grid (the network sees slices resampled to its training spacing)."""
        frames, stack = prepare_frames(volume, self.config)
        size = (stack.height, stack.width)
        names = self.config.organ_names
        probs = np.zeros((len(names), stack.num_frames, *size), np.float16)
        winners = np.zeros((stack.num_frames, *size), np.uint8)
        for start, chunk in class_probabilities(self.net, frames, self.config, self.device,
                                                progress=progress):
            chunk = resize_frames(chunk, size)
            stop = start + len(chunk)
            probs[:, start:stop] = chunk[:, 1:].transpose(0, 1).numpy().astype(np.float16)
            winners[start:stop] = chunk.argmax(1).numpy().astype(np.uint8)
        organs = {}
        for c, name in enumerate(names):
            mask = keep_large_components(stack.to_volume(winners == c + 1),
                                         volume.spacing[::-1], keep_fraction)
            boxes = organ_boxes(mask, stack)
            organs[name] = OrganProposal(
                name=name, label=self.config.labels[name], probability=stack.to_volume(probs[c]),
                mask=mask, boxes=boxes, z_extent=(min(boxes), max(boxes)) if boxes else None)
        return Proposals(volume=volume, organs=organs)


# ----- checkpoints ---------------------------------------------------------------------------
def write_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write a checkpoint atomically (a crash never leaves half a file behind)."""
    from sam2refine.io.atomic import atomic_write

    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | Path) -> dict:
    """A prompt generator checkpoint, with "config" as a `PromptGenConfig`; missing, corrupt,
    unsafe or other kinds of files (a SAM 2 checkpoint, say) are a `PromptGeneratorError`."""
    data = load_weights_only(
        path, PromptGeneratorError, what="a prompt generator checkpoint",
        missing=f"Prompt generator checkpoint not found: {path}. Check the path, or train one "
                "with `sam2refine train-prompt-generator DATASET --out DIR`.",
        remedy="Use best.pt or last.pt from `train-prompt-generator`.")
    if not isinstance(data, dict) or data.get("kind") != CHECKPOINT_KIND:
        raise PromptGeneratorError(f"{path} is {_describe(data)}, not a prompt generator "
                                   "checkpoint. Give the best.pt or last.pt that "
                                   "`train-prompt-generator` wrote.")
    if data.get("format_version") != FORMAT_VERSION:
        raise PromptGeneratorError(
            f"{path} has prompt generator format {data.get('format_version')}; this version of "
            f"sam2refine reads format {FORMAT_VERSION}. Retrain or update sam2refine."
        )
    try:
        data["config"] = PromptGenConfig.from_dict(data["config"])
    except (KeyError, TypeError, SAM2RefineError) as exc:
        raise PromptGeneratorError(f"{path} has unusable settings: {exc}") from exc
    if not isinstance(data.get("model"), dict):
        raise PromptGeneratorError(f"{path} has no network weights; the file is damaged.")
    return data


def _describe(data: object) -> str:
    if isinstance(data, dict):
        state = data.get("model", data)
        if isinstance(state, dict) and any(str(k).startswith("image_encoder.") for k in state):
            return "a SAM 2 checkpoint"
    return "another kind of file"
