"""Read datasets in nnU-Net raw format, the layout BTCV, AMOS and the Medical Segmentation
Decathlon are shipped in (and our phantom generator writes).

A dataset folder holds ``dataset.json``, ``imagesTr/<case>_<channel:04d><ending>`` (one file per
channel), ``labelsTr/<case><ending>`` and optionally ``imagesTs/``. Both nnU-Net v2's
``dataset.json`` (``channel_names``, ``labels`` name -> value, ``numTraining``, ``file_ending``)
and v1's (``modality``, ``labels`` value -> name, ``training`` list) are accepted.

Only the first channel (``_0000``) is loaded: SAM 2 and our prompt generator work on single
channel CT or MR. The other channels are still required to exist, so a broken download is
noticed here rather than by another tool later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sam2refine.errors import DatasetError, VolumeError
from sam2refine.image.labels import read_label_map
from sam2refine.image.reading import load_volume
from sam2refine.image.volume import Volume

_FORMAT_HINT = (
    "The folder must be in nnU-Net raw format: imagesTr/ (<case>_0000.nii.gz, ...), labelsTr/ "
    "(<case>.nii.gz) and a dataset.json naming the labels."
)
_GEOMETRY_TOL_MM = 1e-3  # NIfTI stores geometry as float32; real mismatches are far larger
CaseT = TypeVar("CaseT")


@dataclass
class DatasetCase:
    """One case: its channel image files (``_0000`` first) and its label file, if any."""

    case_id: str
    image_paths: list[Path]
    label_path: Path | None


@dataclass
class NnUNetDataset:
    """A dataset in nnU-Net raw format; `load_case` reads one case's first channel and labels."""

    root: Path
    labels: dict[str, int]  # organ name -> label value, background excluded
    file_ending: str
    cases: list[DatasetCase]  # imagesTr, every case with its label
    test_cases: list[DatasetCase] = field(default_factory=list)  # imagesTs

    def case(self, case_id: str) -> DatasetCase:
        """The training or test case with this id."""
        for case in (*self.cases, *self.test_cases):
            if case.case_id == case_id:
                return case
        raise DatasetError(
            f"The dataset {self.root} has no case {case_id!r}; its cases are "
            f"{_short_list([c.case_id for c in self.cases])}."
        )

    def load_case(self, case: DatasetCase | str) -> tuple[Volume, Volume | None]:
        """(first-channel image, label map on the same grid or None for unlabelled cases).

        nnU-Net requires a label file to have exactly its image's geometry; a label on another
        grid is refused (resampling it silently could hide a wrong pairing of files).
        """
        if isinstance(case, str):
            case = self.case(case)
        try:
            image = load_volume(case.image_paths[0])
        except VolumeError as exc:
            raise DatasetError(f"Case {case.case_id} of {self.root}: {exc}") from exc
        if case.label_path is None:
            return image, None
        labels = read_label_file(case.label_path)
        if not labels.same_geometry(image, tol=_GEOMETRY_TOL_MM):
            raise DatasetError(
                f"Case {case.case_id}: the label file {case.label_path.name} has a different "
                f"geometry than its image ({_geometry_text(labels)} vs {_geometry_text(image)}). "
                "nnU-Net requires identical geometry (size, spacing, origin, direction); "
                "re-export the label on the image's grid."
            )
        allowed = {0, *self.labels.values()}
        unknown = sorted({int(v) for v in np.unique(labels.voxels)} - allowed)
        if unknown:
            raise DatasetError(
                f"Case {case.case_id}: the label file {case.label_path.name} contains values "
                f"{unknown} that dataset.json does not declare (it declares "
                f"{sorted(allowed)}). Add them to dataset.json's labels or fix the label file."
            )
        return image, labels


def read_dataset(root: str | Path) -> NnUNetDataset:
    """Read a dataset folder in nnU-Net raw format (v2 or v1 dataset.json).

    Checks that every training image has its label and all its channel files, and that the
    number of cases matches dataset.json; problems raise `DatasetError` naming the file.
    Geometry and label values are checked when a case is loaded.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Dataset folder not found: {root}. {_FORMAT_HINT}")
    meta = _read_dataset_json(root)
    labels = _parse_labels(meta.get("labels"), root)
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DatasetError(
            f"{root / 'dataset.json'} names no image channels: it needs \"channel_names\" "
            "(nnU-Net v2, e.g. {\"0\": \"CT\"}) or \"modality\" (v1)."
        )
    file_ending = str(meta.get("file_ending", ".nii.gz"))
    cases = _training_cases(root, file_ending, len(channels))
    _check_training_list(meta.get("training"), cases, root, file_ending)
    expected = meta.get("numTraining")
    if expected is not None and int(expected) != len(cases):
        raise DatasetError(
            f"{root / 'dataset.json'} says numTraining = {expected}, but labelsTr/ holds "
            f"{len(cases)} labelled case(s). The download may be incomplete, or fix numTraining."
        )
    test_cases = _test_cases(root, file_ending, len(channels))
    return NnUNetDataset(root, labels, file_ending, cases, test_cases)


def split_cases(
    cases: Sequence[CaseT], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[CaseT], list[CaseT]]:
    """Split cases into (training, validation), reproducibly for a seed.

    The split depends only on the case ids and the seed, not on the order the cases come in;
    at least one case goes to each side. Both lists keep the cases sorted by id.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"The validation fraction must be between 0 and 1; got {val_fraction}.")
    if len(cases) < 2:
        raise DatasetError(
            f"Cannot split {len(cases)} case(s) into training and validation; at least 2 needed."
        )
    ordered = sorted(cases, key=_case_key)
    num_val = min(max(1, round(len(ordered) * val_fraction)), len(ordered) - 1)
    chosen = set(np.random.default_rng(seed).permutation(len(ordered))[:num_val].tolist())
    train = [c for n, c in enumerate(ordered) if n not in chosen]
    val = [c for n, c in enumerate(ordered) if n in chosen]
    return train, val


def _case_key(case: Any) -> str:
    return case.case_id if isinstance(case, DatasetCase) else str(case)


# ----- dataset.json ----------------------------------------------------------------------------
def _read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{root} has no dataset.json. {_FORMAT_HINT}")
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); fix or re-download it.") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object with the dataset's description.")
    return meta


def _parse_labels(raw: Any, root: Path) -> dict[str, int]:
    """Organ name -> value from v2 ({"liver": 1}) or v1 ({"1": "liver"}); background dropped."""
    where = root / "dataset.json"
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{where} has no \"labels\" (e.g. {{\"background\": 0, \"liver\": 1}}).")
    pairs: list[tuple[str, Any]] = []
    for key, value in raw.items():
        if isinstance(value, str) and re.fullmatch(r"\d+", str(key)):
            pairs.append((value, key))  # v1: "1": "liver"
        else:
            pairs.append((str(key), value))
    labels: dict[str, int] = {}
    for name, value in pairs:
        if isinstance(value, list):
            raise DatasetError(
                f"{where} defines {name!r} as a region of several labels {value}; region-based "
                "labels are not supported. Give each structure a single label value."
            )
        try:
            number = int(value)
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"{where}: label {name!r} has value {value!r}; use an integer."
            ) from exc
        if number < 0:
            raise DatasetError(f"{where}: label {name!r} has negative value {number}.")
        if number == 0:
            continue
        if number in labels.values():
            raise DatasetError(f"{where}: two labels share the value {number}; make them unique.")
        labels[name] = number
    if not labels:
        raise DatasetError(f"{where} declares only the background; add the organs' labels.")
    return labels


# ----- case files ------------------------------------------------------------------------------
def _files_ending(folder: Path, ending: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(ending) and not p.name.startswith("."))


def _channel_files(folder: Path, ending: str) -> dict[str, dict[int, Path]]:
    """case id -> {channel: path} for files named <case>_<channel:04d><ending>."""
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
    found: dict[str, dict[int, Path]] = {}
    for path in _files_ending(folder, ending):
        match = pattern.fullmatch(path.name)
        if match is None:
            raise DatasetError(
                f"{path} is not named <case>_<channel:0000>{ending}, as nnU-Net expects images "
                f"to be (e.g. case_001_0000{ending}). Rename it (a Medical Segmentation "
                "Decathlon download converts with nnUNetv2_convert_MSD_dataset)."
            )
        found.setdefault(match.group(1), {})[int(match.group(2))] = path
    return found


def _image_paths(case_id: str, channels: dict[int, Path], num_channels: int) -> list[Path]:
    missing = [c for c in range(num_channels) if c not in channels]
    if missing:
        first = next(iter(channels.values()))
        names = ", ".join(f"{case_id}_{c:04d}{first.name[len(case_id) + 5:]}" for c in missing)
        raise DatasetError(
            f"Case {case_id} is missing channel file(s) {names} in {first.parent} "
            f"(dataset.json declares {num_channels} channel(s)). Re-copy the dataset."
        )
    return [channels[c] for c in range(num_channels)]


def _training_cases(root: Path, ending: str, num_channels: int) -> list[DatasetCase]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise DatasetError(f"{root} has no imagesTr/ or no labelsTr/ folder. {_FORMAT_HINT}")
    images = _channel_files(images_dir, ending)
    label_files = {p.name[: -len(ending)]: p for p in _files_ending(labels_dir, ending)}
    unlabelled = sorted(set(images) - set(label_files))
    if unlabelled:
        raise DatasetError(
            f"Image(s) without a label in {labels_dir}: {_short_list(unlabelled)} (expected "
            f"{labels_dir / (unlabelled[0] + ending)}). Add the label files or remove the images."
        )
    without_image = sorted(set(label_files) - set(images))
    if without_image:
        raise DatasetError(
            f"Label(s) without an image in {images_dir}: {_short_list(without_image)} (expected "
            f"{images_dir / (without_image[0] + '_0000' + ending)}). Re-copy the images."
        )
    if not label_files:
        raise DatasetError(f"{labels_dir} holds no {ending} label files. {_FORMAT_HINT}")
    return [DatasetCase(cid, _image_paths(cid, images[cid], num_channels), label_files[cid])
            for cid in sorted(label_files)]


def _check_training_list(
    training: Any, cases: list[DatasetCase], root: Path, ending: str
) -> None:
    """nnU-Net v1 lists the training cases in dataset.json; they must be the labelled ones."""
    if not isinstance(training, list):
        return
    listed = set()
    for entry in training:
        label = entry.get("label") if isinstance(entry, dict) else None
        if isinstance(label, str) and label.endswith(ending):
            listed.add(Path(label).name[: -len(ending)])
    found = {c.case_id for c in cases}
    if listed and listed != found:
        missing, extra = sorted(listed - found), sorted(found - listed)
        detail = "; ".join(part for part in (
            f"listed but missing in labelsTr/: {_short_list(missing)}" if missing else "",
            f"in labelsTr/ but not listed: {_short_list(extra)}" if extra else "") if part)
        raise DatasetError(
            f"The \"training\" list of {root / 'dataset.json'} does not match the files ({detail})."
            " Re-copy the dataset or fix dataset.json."
        )


def _test_cases(root: Path, ending: str, num_channels: int) -> list[DatasetCase]:
    """imagesTs/ cases; their labels are taken from labelsTs/ where a dataset ships them."""
    images = _channel_files(root / "imagesTs", ending)
    cases = []
    for cid in sorted(images):
        label = root / "labelsTs" / f"{cid}{ending}"
        paths = _image_paths(cid, images[cid], num_channels)
        cases.append(DatasetCase(cid, paths, label if label.is_file() else None))
    return cases


def read_label_file(path: str | Path) -> Volume:
    """A label map file (NIfTI, NRRD, ...) as an integer Volume on its own grid, read by the
    engine's one label map reader (`image.labels.read_label_map`)."""
    try:
        return read_label_map(path)
    except VolumeError as exc:
        raise DatasetError(str(exc)) from exc


def _geometry_text(volume: Volume) -> str:
    spacing = ", ".join(f"{s:g}" for s in volume.spacing)
    origin = ", ".join(f"{o:.1f}" for o in volume.origin)
    return f"size {volume.shape_ijk}, spacing ({spacing}) mm, origin ({origin})"


def _short_list(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
