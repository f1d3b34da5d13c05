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


def test_segment_gives_organ_colours_and_the_dicom_terminology(case, tiny_checkpoint):
    from sam2refine.io.colors import default_color
    from sam2refine.io.seg_nrrd import read_seg_nrrd_file

    prompts = {"segments": [{"name": name, "points": [{"position": [18, 20, 6]}]}
                            for name in ("liver", "kidney_left", "kidney_right", "my blob")]}
    (case / "prompts.json").write_text(json.dumps(prompts))
    assert main(_segment(case, checkpoint=tiny_checkpoint)) == 0
    segments = read_seg_nrrd_file(case / "seg.seg.nrrd").segments
    colors = {s.name: s.color for s in segments}
    assert colors["liver"] == pytest.approx(default_color(0, "liver"), abs=1e-5)
    assert colors["kidney_left"] != pytest.approx(colors["kidney_right"], abs=1e-3)
    terms = {s.name: s.terminology for s in segments}
    assert "SCT^10200004^Liver" in terms["liver"]
    assert "SCT^64033007^Kidney~SCT^7771000^Left" in terms["kidney_left"]
    assert terms["my blob"] is None  # unknown: Slicer's default, the name carries the meaning


def test_upper_case_output_suffix_is_written(case, tiny_checkpoint):
    assert main(_segment(case, checkpoint=tiny_checkpoint, out="SEG.NII.GZ")) == 0
    written = Volume.from_sitk(sitk.ReadImage(str(case / "SEG.NII.GZ")))
    assert written.same_geometry(load_volume(case / "ct.nii.gz"))
    assert json.loads((case / "SEG.labels.json").read_text())["labels"]["4"]["name"] == "organ"
    assert not [p for p in case.iterdir() if ".tmp-" in p.name]


def test_interrupted_segment_writes_nothing(case, tiny_checkpoint, capsys, monkeypatch):
    from sam2refine.sam.session import Session

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "propagate", interrupted)
    before = sorted(p.name for p in case.iterdir())
    assert main(_segment(case, checkpoint=tiny_checkpoint)) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in case.iterdir()) == before


def test_the_console_command_refuses_to_overwrite_its_input(case):
    """The real entry point, in its own process: one line, exit 2, the CT unchanged."""
    import subprocess
    import sys

    ct = (case / "ct.nii.gz").read_bytes()
    for args, expected in (
            (["segment", str(case / "ct.nii.gz"), "--prompts", str(case / "prompts.json"),
              "--out", str(case / "ct.nii.gz")], "would overwrite the input"),
            (["serve", "--port", "99999"], "99999 is not a port")):
        result = subprocess.run([sys.executable, "-m", "sam2refine", *args], capture_output=True,
                                text=True, timeout=120, cwd=case)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr
    assert (case / "ct.nii.gz").read_bytes() == ct
