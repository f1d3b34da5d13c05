"""`sam2refine segment` end to end as a user runs it, and its one-line errors."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import SimpleITK as sitk

from sam2refine.cli.main import main
from sam2refine.image.reading import load_volume
from sam2refine.image.volume import Volume
from sam2refine.io.segmentation import read_seg_nrrd
from tests.conftest import TEST_IMAGE_SIZE, make_phantom


@pytest.fixture
def case(tmp_path):
    """A phantom NIfTI, a coarse organ mask file and a prompts JSON using all prompt kinds."""
    volume = make_phantom()
    sitk.WriteImage(volume.to_sitk(), str(tmp_path / "ct.nii.gz"))
    organ = np.zeros(volume.voxels.shape, np.uint8)
    organ[4:8, 14:26, 12:24] = 3
    sitk.WriteImage(volume.with_voxels(organ).to_sitk(), str(tmp_path / "coarse.nii.gz"))
    centre_lps = volume.index_to_lps([[20, 20, 6]])[0].tolist()
    prompts = {
        "coordinates": "ijk",
        "segments": [
            {"name": "organ", "label": 4, "boxes": [{"corners": [[12, 12, 6], [26, 28, 6]]}],
             "points": [{"position": [18, 20, 6]}, {"position": [40, 5, 6], "positive": False}]},
            {"name": "organ from mask", "masks": [{"file": "coarse.nii.gz", "value": 3}]},
            {"name": "clicked in mm", "coordinates": "lps",
             "points": [{"position": centre_lps, "positive": True}]},
        ],
    }
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    return tmp_path


def _segment(case, *extra: str, checkpoint=None, out="seg.seg.nrrd") -> list[str]:
    args = ["segment", str(case / "ct.nii.gz"), "--prompts", str(case / "prompts.json"),
            "--out", str(case / out), "--image-size", str(TEST_IMAGE_SIZE), "--device", "cpu"]
    if checkpoint is not None:
        args += ["--checkpoint", str(checkpoint)]
    return args + list(extra)


def test_segment_writes_a_slicer_segmentation_on_the_source_geometry(case, tiny_checkpoint):
    assert main(_segment(case, checkpoint=tiny_checkpoint)) == 0
    labels, segments = read_seg_nrrd(case / "seg.seg.nrrd")
    source = load_volume(case / "ct.nii.gz")
    assert labels.same_geometry(source)
    assert [(s.name, s.label) for s in segments] == [
        ("organ", 4), ("organ from mask", 5), ("clicked in mm", 6)]
    assert set(np.unique(labels.voxels)) <= {0, 4, 5, 6}


def test_segment_writes_nifti_with_label_names(case, tiny_checkpoint):
    assert main(_segment(case, checkpoint=tiny_checkpoint, out="seg.nii.gz")) == 0
    written = Volume.from_sitk(sitk.ReadImage(str(case / "seg.nii.gz")))
    assert written.same_geometry(load_volume(case / "ct.nii.gz"))
    sidecar = json.loads((case / "seg.labels.json").read_text())
    assert sidecar["labels"]["4"]["name"] == "organ"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: (c / "ct.nii.gz").unlink(), "not found"),
        (lambda c: (c / "ct.nii.gz").write_bytes(b"garbage"), "ct.nii.gz"),
        (lambda c: sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(c / "ct.nii.gz")), "2D"),
        (lambda c: (c / "prompts.json").write_text("{"), "not valid JSON"),
        (lambda c: (c / "prompts.json").write_text(json.dumps(
            {"segments": [{"name": "x", "points": [{"position": [999, 0, 0]}]}]})),
         "outside the volume"),
        (lambda c: (c / "prompts.json").write_text(json.dumps(
            {"segments": [{"name": "x", "boxes": [{"corners": [[5, 5, 3], [5, 9, 3]]}]}]})),
         "zero area"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, tiny_checkpoint, capsys, change, message):
    change(case)
    assert main(_segment(case, checkpoint=tiny_checkpoint)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sam2refine: error:") and "Traceback" not in err
    assert message in err
    assert not (case / "seg.seg.nrrd").exists()


def test_wrong_size_checkpoint_is_refused(case, tiny_checkpoint, capsys):
    assert main(_segment(case, "--model", "sam2.1_hiera_small", checkpoint=tiny_checkpoint)) == 2
    assert "sam2.1_hiera_tiny checkpoint" in capsys.readouterr().err


def test_unreachable_weights_say_how_to_pass_a_checkpoint(case, capsys, monkeypatch):
    monkeypatch.setenv("SAM2REFINE_CACHE", str(case / "cache"))
    monkeypatch.setenv("SAM2REFINE_WEIGHTS_BASE_URL", f"http://127.0.0.1:{_closed_port()}/")
    assert main(_segment(case)) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert not list((case / "cache").glob("*.part"))


def test_bad_output_suffix(case, tiny_checkpoint, capsys):
    assert main(_segment(case, checkpoint=tiny_checkpoint, out="seg.png")) == 2
    assert ".seg.nrrd" in capsys.readouterr().err


def test_weights_list(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus",
                 "sam2.1_hiera_large"):
        assert name in out
