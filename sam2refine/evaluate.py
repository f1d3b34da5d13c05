"""Per-organ Dice and normalised surface Dice (NSD) of predictions against ground truth.

Results are laid out as the RFMedSAM 2 / MedSAM tables: one row per organ, the mean over
cases in percent, the mean over organs last. Metrics come from MONAI: `compute_dice`, and
`compute_surface_dice` with the voxel spacing (so the tolerance is in mm) and sub-voxel
surface elements, which makes it equal to DeepMind's `surface-distance` NSD that MedSAM's
evaluation uses.

Conventions, per case and organ: prediction and ground truth both empty: Dice 1, NSD 1 (the
organ was rightly left out); exactly one of them empty: Dice 0, NSD 0. Every case counts in
the mean, including those where both are empty. A missing prediction file is an error, or with
``allow_missing`` an empty prediction.
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam2refine.datasets.nnunet import read_label_file
from sam2refine.errors import DatasetError, PromptGeneratorError, VolumeError
from sam2refine.image.labels import resample_to
from sam2refine.image.volume import Volume
from sam2refine.io.label_names import read_label_names
from sam2refine.io.organ_names import organ_key
from sam2refine.io.seg_nrrd import read_seg_nrrd_header
from sam2refine.io.segmentation import read_seg_nrrd

log = logging.getLogger("sam2refine")
LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
_CROP_MARGIN = 2  # voxels around the organs; surfaces need one voxel of background


@dataclass
class OrganScore:
    """Dice and NSD of one organ as fractions in [0, 1]."""

    dice: float
    nsd: float


@dataclass
class CaseScores:
    """The scores of every evaluated organ in one case; `missing`: no prediction file."""

    case_id: str
    organs: dict[str, OrganScore]
    missing: bool = False


@dataclass
class EvaluationResult:
    """Per-case, per-organ scores with the table and CSV views of them."""

    organs: list[str]
    cases: list[CaseScores]
    tolerance_mm: float
    unmatched_predictions: list[str] = field(default_factory=list)

    def organ_means(self) -> dict[str, OrganScore]:
        """Each organ's mean Dice and NSD over all cases."""
        return {
            organ: OrganScore(
                float(np.mean([c.organs[organ].dice for c in self.cases])),
                float(np.mean([c.organs[organ].nsd for c in self.cases])),
            )
            for organ in self.organs
        }

    def mean(self) -> OrganScore:
        """The mean of the organ means (the table's last row)."""
        means = list(self.organ_means().values())
        return OrganScore(float(np.mean([m.dice for m in means])),
                          float(np.mean([m.nsd for m in means])))

    def to_markdown(self) -> str:
        """Organs as rows, Dice / NSD in percent with two decimals, the mean row last."""
        lines = [
            f"Mean over {len(self.cases)} case(s); NSD tolerance {self.tolerance_mm:g} mm.",
            "",
            "| Organ | Dice (%) | NSD (%) |",
            "| --- | ---: | ---: |",
        ]
        rows = [*self.organ_means().items(), ("**Mean**", self.mean())]
        lines += [f"| {name} | {100 * s.dice:.2f} | {100 * s.nsd:.2f} |" for name, s in rows]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """One row per case and organ (fractions), then the organ means and the overall mean."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["case", "organ", "dice", "nsd", "missing_prediction"])
        for case in self.cases:
            for organ in self.organs:
                score = case.organs[organ]
                writer.writerow([case.case_id, organ, f"{score.dice:.6f}", f"{score.nsd:.6f}",
                                 int(case.missing)])
        for organ, score in [*self.organ_means().items(), ("mean", self.mean())]:
            writer.writerow(["mean", organ, f"{score.dice:.6f}", f"{score.nsd:.6f}", ""])
        return out.getvalue()


# ----- metrics ---------------------------------------------------------------------------------
def score_masks(
    pred: np.ndarray, gt: np.ndarray, spacing_ijk: tuple[float, float, float],
    tolerance_mm: float,
) -> OrganScore:
    """Dice and NSD of two boolean [k, j, i] masks on one grid (conventions in the module doc)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return OrganScore(1.0, 1.0)
    if not (has_pred and has_gt):
        return OrganScore(0.0, 0.0)
    import torch
    from monai.metrics import compute_dice, compute_surface_dice

    region = _crop_box(pred | gt)
    y_pred, y = (_one_hot(m[region], torch) for m in (pred, gt))
    dice = compute_dice(y_pred, y, include_background=False)
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        nsd = compute_surface_dice(y_pred, y, [float(tolerance_mm)], include_background=False,
                                   spacing=tuple(float(s) for s in spacing_ijk[::-1]),
                                   use_subvoxels=True)
    return OrganScore(float(dice.item()), float(nsd.item()))


def _crop_box(mask: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - _CROP_MARGIN, 0),
                         min(int(hits[-1]) + _CROP_MARGIN + 1, mask.shape[axis])))
    return tuple(box)


def _one_hot(mask: np.ndarray, torch):  # noqa: ANN001, ANN202 - torch is imported lazily
    foreground = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    return torch.stack([1 - foreground, foreground])[None]  # (batch, class, k, j, i)


def score_case(
    pred: Volume | None, pred_names: Mapping[int, str],
    gt: Volume, gt_names: Mapping[int, str], organs: list[str], tolerance_mm: float,
) -> dict[str, OrganScore]:
    """Scores of `organs` (matched by name, ignoring case and '_'/'-'/spaces) in one case.

    `pred` must be on `gt`'s grid; None stands for an empty prediction.
    """
    pred_values = {organ_key(n): v for v, n in pred_names.items()}
    gt_values = {organ_key(n): v for v, n in gt_names.items()}
    scores = {}
    for organ in organs:
        key = organ_key(organ)
        gt_mask = gt.voxels == gt_values[key] if key in gt_values else np.zeros(gt.voxels.shape,
                                                                                 bool)
        if pred is None or key not in pred_values:
            pred_mask = np.zeros(gt.voxels.shape, bool)
        else:
            pred_mask = pred.voxels == pred_values[key]
        scores[organ] = score_masks(pred_mask, gt_mask, gt.spacing, tolerance_mm)
    return scores


# ----- folders ---------------------------------------------------------------------------------
def case_id_of(path: Path) -> str | None:
    """Case id of a label file: its name without suffix and nnU-Net's `_0000` channel tag."""
    name = path.name
    for suffix in LABEL_SUFFIXES:
        if name.lower().endswith(suffix):
            base = name[: -len(suffix)]
            return base[:-5] if base.endswith("_0000") else base
    return None


def _label_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"The {what} folder {folder} does not exist. Check the path.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case_id = case_id_of(path) if path.is_file() and not path.name.startswith(".") else None
        if case_id is None:
            continue
        if case_id in found:
            raise DatasetError(
                f"Two {what} files for case {case_id}: {found[case_id].name} and {path.name}. "
                "Keep one of them in the folder."
            )
        found[case_id] = path
    if not found:
        raise DatasetError(
            f"The {what} folder {folder} holds no label files ({', '.join(LABEL_SUFFIXES)}); "
            "give the folder that holds them."
        )
    return found


def _read_names_file(path: Path) -> dict[int, str]:
    try:
        return read_label_names(path)
    except PromptGeneratorError as exc:
        raise DatasetError(str(exc)) from exc


def names_of(path: Path, fallback_names: Mapping[int, str] | None) -> dict[int, str] | None:
    """A label file's value -> name table without reading its voxels: a .seg.nrrd's segment
    names, else a ``<base>.labels.json`` next to it, else `fallback_names` (may be None)."""
    if path.name.lower().endswith(".seg.nrrd"):
        try:  # the one .seg.nrrd reader: UTF-8 names, layers
            segments, _ = read_seg_nrrd_header(path)
        except VolumeError as exc:
            raise DatasetError(str(exc)) from exc
        return {int(s.label): s.name for s in segments}
    base = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".gz") else path.stem
    sidecar = path.with_name(f"{base}.labels.json")
    if sidecar.is_file():
        return _read_names_file(sidecar)
    return dict(fallback_names) if fallback_names is not None else None


def read_labelled_file(path: Path) -> Volume:
    """A .seg.nrrd or label map file as a label Volume on its own grid."""
    if path.name.lower().endswith(".seg.nrrd"):
        return read_seg_nrrd(path)[0]
    return read_label_file(path)


def _default_names(gt_dir: Path, labels: Mapping[str, int] | None,
                   dataset_json: str | Path | None) -> dict[int, str] | None:
    """Names for NIfTI ground truth: `labels`, the dataset.json given, or one found beside."""
    if labels is not None:
        return {int(v): str(n) for n, v in labels.items() if int(v) != 0}
    if dataset_json is not None:
        return _read_names_file(Path(dataset_json))
    for candidate in (gt_dir.parent / "dataset.json", gt_dir / "dataset.json"):
        if candidate.is_file():
            return _read_names_file(candidate)
    return None


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    labels: Mapping[str, int] | None = None,
    tolerance_mm: float = 2.0,
    dataset_json: str | Path | None = None,
    allow_missing: bool = False,
) -> EvaluationResult:
    """Score every ground-truth case in `gt_dir` against the prediction with the same case id.

    Files: .seg.nrrd (segment names) or label maps (NIfTI, NRRD, MHA). Ground-truth label
    maps are named by `labels` (name -> value), `dataset_json`, or a dataset.json in
    `gt_dir`'s parent (nnU-Net's labelsTr layout). Predictions are matched to the ground truth
    by organ name, NIfTI predictions without names by label value; a prediction on another
    grid is resampled onto the ground truth's grid in patient space (nearest neighbour).
    """
    if not tolerance_mm > 0:
        raise DatasetError(f"The NSD tolerance must be positive; got {tolerance_mm} mm.")
    pred_dir, gt_dir = Path(pred_dir).expanduser(), Path(gt_dir).expanduser()
    gt_files = _label_files(gt_dir, "ground-truth")
    pred_files = _label_files(pred_dir, "prediction")
    missing = sorted(set(gt_files) - set(pred_files))
    if missing and not allow_missing:
        raise DatasetError(
            f"No prediction in {pred_dir} for {len(missing)} ground-truth case(s): "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (expected e.g. "
            f"{missing[0]}.seg.nrrd). Segment them, or use --allow-missing to score them as empty."
        )
    default_names = _default_names(gt_dir, labels, dataset_json)
    gt_tables = {case_id: names_of(path, default_names) for case_id, path in gt_files.items()}
    for case_id, table in gt_tables.items():
        if table is None:
            raise DatasetError(
                f"No organ names for the ground truth {gt_files[case_id].name}: give "
                "--dataset-json (an nnU-Net dataset.json or labels.json), or put dataset.json "
                "next to its folder."
            )
    organs = _organ_list(labels, default_names, gt_tables.values())
    cases = []
    for case_id, gt_path in gt_files.items():
        gt = read_labelled_file(gt_path)
        pred, pred_names = _prediction_on(pred_files.get(case_id), gt, gt_tables[case_id])
        if pred is None:
            log.info("%s: no prediction, scored as empty", case_id)
        scores = score_case(pred, pred_names, gt, gt_tables[case_id], organs, tolerance_mm)
        cases.append(CaseScores(case_id, scores, missing=pred is None))
    unmatched = sorted(set(pred_files) - set(gt_files))
    if unmatched:
        log.info("Predictions without ground truth (not scored): %s", ", ".join(unmatched))
    return EvaluationResult(organs, cases, float(tolerance_mm), unmatched)


def _organ_list(labels: Mapping[str, int] | None, default_names: Mapping[int, str] | None,
                tables: Iterable[Mapping[int, str]]) -> list[str]:
    """`labels`' names, else dataset.json's by value, else every name any ground truth has."""
    if labels is not None:
        return [str(n) for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if int(v) != 0]
    if default_names is not None:
        return [default_names[v] for v in sorted(default_names)]
    organs: list[str] = []
    for table in tables:
        organs += [n for _, n in sorted(table.items()) if n not in organs]
    return organs


def _prediction_on(
    path: Path | None, gt: Volume, gt_names: Mapping[int, str]
) -> tuple[Volume | None, dict[int, str]]:
    """The prediction resampled onto `gt`'s grid with its names (the GT's when it has none)."""
    if path is None:
        return None, {}
    pred = read_labelled_file(path)
    names = names_of(path, gt_names)
    if not pred.same_geometry(gt):
        pred = resample_to(pred, gt, source=f"The prediction {path}")
    return pred, names or {}
