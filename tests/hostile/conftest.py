"""The hostile-input suites' world: a workspace of good files to break, and the checks every
refusal must pass (exit status 2 / HTTP 4xx, one line naming the problem and what to do, no
traceback, every file that was there before byte-identical and nothing new)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sam2refine.image.volume import Volume
from sam2refine.io.segmentation import SegmentInfo, write_seg_nrrd
from tests.conftest import make_phantom
from tests.io.test_dicomseg import standard_axial, write_dicom_series

# A refusal says what to do: one of these words (or "... instead") appears in every message.
ACTION = re.compile(
    r"\b(give|choose|check|use|add|remove|fix|re-?export|retrieve|save|copy|export|put|pass|"
    r"start|stop|rename|leave|see|free|convert|extract|resample|separate|declare|set|close|place|drag|"
    r"send|crop|restart|keep|name|segment|draw|open|delete|download|install|listen|wait|"
    r"write|try|run|ask|expected|must|needs?|should|did you mean|known keys)\b", re.IGNORECASE)


@dataclass
class Case:
    """One hostile input: `setup(workspace)` breaks something, `args` (``{w}`` = workspace,
    ``{ckpt}`` = the tiny checkpoint) runs, the one-line error must match `expect`."""

    id: str
    args: list[str]
    expect: str
    setup: Callable[[Path], object] | None = None
    status: int = 2
    marks: list = field(default_factory=list)

    def param(self):  # noqa: ANN201 - a pytest ParameterSet
        return pytest.param(self, id=self.id, marks=self.marks)


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (folders are walked, links not followed)."""
    found = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*"))
        for path in paths:
            if path.is_file() and not path.is_symlink():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_symlink():
                found[str(path)] = "link -> " + str(path.readlink())
    return found


def assert_refusal(message: str, expect: str) -> None:
    """One line, no traceback, names the problem (`expect`), says what to do."""
    lines = [line for line in message.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{message}"
    assert "Traceback" not in message and "File \"" not in message, message
    assert re.search(expect, message), f"{expect!r} not in: {message}"
    assert ACTION.search(message), f"the message says nothing to do: {message}"


# ----- the workspace -----------------------------------------------------------------------------
def _write(volume: Volume, path: Path) -> Path:
    sitk.WriteImage(volume.to_sitk(), str(path), useCompression=path.name.endswith(".gz"))
    return path


def build_workspace(root: Path) -> Path:
    """Good inputs for every verb: a CT, prompts, masks, labels with names, a .seg.nrrd made
    on a DICOM series, a folder with two series on one grid, a phantom dataset."""
    from sam2refine.datasets.phantoms import write_phantom_dataset

    root.mkdir(parents=True, exist_ok=True)
    ct = make_phantom((12, 40, 48))
    _write(ct, root / "ct.nii.gz")
    organ = np.zeros(ct.voxels.shape, np.uint8)
    organ[4:8, 14:26, 12:24] = 1
    organ[4:8, 28:34, 30:40] = 2
    _write(ct.with_voxels(organ), root / "labels.nii.gz")
    (root / "labels.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    _write(ct.with_voxels((organ == 1).astype(np.uint8)), root / "coarse.nii.gz")
    (root / "prompts.json").write_text(json.dumps({"segments": [
        {"name": "liver", "boxes": [{"corners": [[12, 14, 6], [24, 26, 6]]}],
         "points": [{"position": [18, 20, 6]}]},
        {"name": "spleen", "masks": [{"file": "coarse.nii.gz", "value": 1}]}]}))
    axial = standard_axial(ct)
    write_dicom_series(axial, root / "dicom")
    write_dicom_series(axial, root / "two" / "soft")
    write_dicom_series(axial.with_voxels(axial.voxels // 2 + 7), root / "two" / "bone")
    for kernel in ("soft", "bone"):
        for path in sorted((root / "two" / kernel).iterdir()):
            path.rename(root / "two" / f"{kernel}_{path.name}")
        (root / "two" / kernel).rmdir()
    write_recorded_seg(root)
    write_phantom_dataset(root / "dataset", 2, shape_kji=(8, 24, 28))
    (root / "preds").mkdir()
    shutil.copy(root / "dataset" / "labelsTr" / "phantom_000.nii.gz", root / "preds")
    shutil.copy(root / "dataset" / "labelsTr" / "phantom_001.nii.gz", root / "preds")
    return root


_RECORDED: dict = {}


def write_recorded_seg(root: Path) -> Path:
    """seg.seg.nrrd as `segment` writes it on root/dicom (that series recorded in it)."""
    from sam2refine.image.reading import load_image

    if "uid" not in _RECORDED:  # every workspace copy holds the same series
        axial, uid = load_image(root / "dicom")
        _RECORDED.update(uid=uid, grid=axial.with_voxels((axial.voxels > 100).astype(np.uint8)))
    return write_seg_nrrd(root / "seg.seg.nrrd", _RECORDED["grid"],
                          [SegmentInfo("liver", 1, (0.8, 0.4, 0.3))],
                          fields={"SAM2Refine_SourceSeries": str((root / "dicom").resolve()),
                                  "SAM2Refine_SourceSeriesInstanceUID": _RECORDED["uid"]})


@pytest.fixture(scope="session")
def workspace_template(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("hostile") / "template")


@pytest.fixture
def workspace(workspace_template, tmp_path) -> Path:
    """A fresh copy of the good inputs for each case."""
    root = Path(shutil.copytree(workspace_template, tmp_path / "w", symlinks=True))
    write_recorded_seg(root)  # recorded on this copy's series
    return root
