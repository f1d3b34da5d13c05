"""Where the automatic pipeline's first prompts come from: one interface, two sources.

A prompt source turns a volume into organ `Proposals` (a mask per organ, its boxes on the
axial slices it covers, and its z-extent). `UNetPromptSource` runs our U-Net prompt generator;
`LabelFilePromptSource` reads an existing label map (a TotalSegmentator or nnU-Net output, a
.seg.nrrd) and maps its labels to organs by name, so any segmenter's output can seed SAM 2.

Organ names are matched ignoring case and separators ("Kidney Left" = "kidney_left").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from sam2refine.errors import PromptGeneratorError
from sam2refine.image.labels import load_label_volume, resample_to
from sam2refine.image.slicing import SliceStack, slice_stack
from sam2refine.image.volume import Volume
from sam2refine.io.label_names import read_label_names, sidecar_names
from sam2refine.io.organ_names import organ_key
from sam2refine.promptgen.generator import OrganProposal, Proposals, organ_boxes

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
Names = Mapping[int, str] | str | Path | None


@runtime_checkable
class PromptSource(Protocol):
    """Anything that proposes organs for a volume."""

    description: str  # one line naming the source, for logs and messages

    def proposals(self, volume: Volume, organs: Sequence[str] | None = None) -> Proposals:
        """Proposals for `organs` (all the source knows when None) on `volume`'s grid."""
        ...


def match_organs(available: Sequence[str], wanted: Sequence[str] | None, what: str) -> list[str]:
    """The available names for `wanted` (all when None), in the order asked for; a clear
    `PromptGeneratorError` listing what `what` has when a wanted name is missing."""
    if wanted is None:
        return list(available)
    by_key = {organ_key(n): n for n in available}
    missing = [w for w in wanted if organ_key(w) not in by_key]
    if missing:
        have = ", ".join(sorted(available)) or "no named labels"
        raise PromptGeneratorError(
            f"{what} has no organ named {', '.join(repr(m) for m in missing)}. It has: {have}. "
            "Ask for organs it knows, or give a label-names file that names its labels."
        )
    return [by_key[organ_key(w)] for w in wanted]


def proposal_from_mask(name: str, label: int, mask_kji: np.ndarray, stack: SliceStack,
                       probability: np.ndarray | None = None) -> OrganProposal:
    """An organ proposal from a mask on the image grid: boxes and z-extent on `stack`."""
    mask = np.asarray(mask_kji, bool)
    boxes = organ_boxes(mask, stack)
    extent = (min(boxes), max(boxes)) if boxes else None
    prob = mask.astype(np.float16) if probability is None else probability
    return OrganProposal(name=name, label=int(label), probability=prob, mask=mask, boxes=boxes,
                         z_extent=extent)


# ----- sources -------------------------------------------------------------------------------
class LabelFilePromptSource:
    """Proposals from an existing label map, resampled onto the image grid (nearest).

    `names`: a names file (labels.json, dataset.json), a {value: name} mapping, or None to use
    the segment names of a .seg.nrrd or a names file next to the label file.
    """

    def __init__(self, path: str | Path, names: Names = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise PromptGeneratorError(f"Label file not found: {self.path}. Check the path.")
        self._names = names
        self.description = f"label file {self.path.name}"

    def label_names(self) -> dict[int, str]:
        """Label value -> organ name, from wherever this source was told to look."""
        if isinstance(self._names, Mapping):
            return {int(k): str(v) for k, v in self._names.items()}
        if self._names is not None:
            return read_label_names(self._names)
        if self.path.name.lower().endswith(".seg.nrrd"):
            from sam2refine.io.segmentation import read_seg_nrrd

            return {s.label: s.name for s in read_seg_nrrd(self.path)[1]}
        names = sidecar_names(self.path)
        if names is None:
            raise PromptGeneratorError(
                f"No label names for {self.path.name}: put a labels.json or dataset.json next "
                "to it, or give the names file explicitly (--label-names)."
            )
        return names

    def proposals(self, volume: Volume, organs: Sequence[str] | None = None) -> Proposals:
        names = self.label_names()
        labels = self._labels_on(volume)
        present = set(np.unique(labels.voxels).tolist()) - {0}
        in_file = [n for v, n in sorted(names.items()) if v in present]
        if organs is None and not in_file:
            raise PromptGeneratorError(
                f"{self.description} has none of its named labels ({', '.join(names.values())}) "
                "on this image: it was probably made for another scan."
            )
        wanted = match_organs(in_file if organs is None else list(names.values()), organs,
                              self.description)
        value_of = {n: v for v, n in names.items()}
        stack = slice_stack(volume, "axial")
        found = {}
        for name in wanted:
            mask = labels.voxels == value_of[name]
            found[name] = proposal_from_mask(name, value_of[name], mask, stack)
        return Proposals(volume=volume, organs=found)

    def _labels_on(self, volume: Volume) -> Volume:
        if self.path.name.lower().endswith(".seg.nrrd"):
            from sam2refine.io.segmentation import read_seg_nrrd

            labelmap, _ = read_seg_nrrd(self.path)
            return resample_to(labelmap, volume, source=f"The label file {self.path}")
        try:
            return load_label_volume(self.path, volume)
        except PromptGeneratorError:
            raise
        except Exception as exc:  # VolumeError or unreadable: say which source failed
            raise PromptGeneratorError(f"Cannot use {self.path} as prompts: {exc}") from exc


class UNetPromptSource:
    """Proposals from our U-Net prompt generator checkpoint."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        from sam2refine.promptgen.generator import PromptGenerator

        self.path = Path(checkpoint)
        self.generator = PromptGenerator.load(self.path, device)
        self.description = f"prompt generator {self.path.name}"

    def proposals(self, volume: Volume, organs: Sequence[str] | None = None) -> Proposals:
        from sam2refine.promptgen.generator import check_labels

        if organs is not None:
            check_labels(self.generator, list(organs))
        predicted = self.generator.predict(volume)
        wanted = match_organs(list(predicted.organs), organs, self.description)
        return Proposals(volume=volume, organs={n: predicted.organs[n] for n in wanted})


def open_prompt_source(path: str | Path, names: Names = None, device: str = "cpu"
                       ) -> PromptSource:
    """A U-Net checkpoint (.pt, .pth, .ckpt, .safetensors) or a label file, by its name."""
    path = Path(path)
    if path.name.lower().endswith(CHECKPOINT_SUFFIXES):
        if names is not None:
            raise PromptGeneratorError(
                "Label names only apply to label files; a prompt generator knows its labels."
            )
        return UNetPromptSource(path, device)
    return LabelFilePromptSource(path, names)
