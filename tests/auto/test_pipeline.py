"""The automatic pipeline end to end: phantoms and the shared real CT, the `auto` command
(one volume, a folder), saved prompts that `segment` replays, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from sam2refine.auto.pipeline import auto_segment, save_prompts
from sam2refine.auto.sources import LabelFilePromptSource
from sam2refine.auto.stages import RefineSettings
from sam2refine.cli.main import main
from sam2refine.errors import PromptError, SAM2RefineError
from sam2refine.image.reading import load_volume
from sam2refine.image.slicing import slice_stack
from sam2refine.io.segmentation import read_seg_nrrd, read_seg_nrrd_fields
from sam2refine.sam.session import Session
from tests.conftest import TEST_IMAGE_SIZE, make_phantom

pytestmark = pytest.mark.slow
def write(volume, path):
    sitk.WriteImage(volume.to_sitk(), str(path))
    return path


def phantom_case(folder, name="case", organ_frames=(3, 9), seed=0):
    """A phantom CT file and a label file proposing its organ (label 2, 'Liver') on
    `organ_frames`; returns (volume, image path, label path)."""
    volume = make_phantom(seed=seed)
    labels = np.zeros(volume.voxels.shape, np.uint8)
    lo, hi = organ_frames
    labels[lo: hi + 1][volume.voxels[lo: hi + 1] > 100] = 2
    image = write(volume, folder / f"{name}.nii.gz")
    label = write(volume.with_voxels(labels), folder / f"{name}_labels.nii.gz")
    return volume, image, label


def model_args(tiny_checkpoint):
    return ["--checkpoint", str(tiny_checkpoint), "--image-size", str(TEST_IMAGE_SIZE),
            "--device", "cpu"]


@pytest.fixture(scope="module")
def phantom_result(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("auto")
    volume, _, labels = phantom_case(folder)
    steps = []
    result = auto_segment(tiny_model, volume, LabelFilePromptSource(labels, {2: "Liver"}),
                          margin=1, progress=lambda done, total: steps.append((done, total)))
    return volume, result, steps


def test_auto_segment_keeps_every_stage_on_the_source_grid(phantom_result):
    volume, result, steps = phantom_result
    assert [s.name for s in result.stages] == ["unet", "stage1", "stage2"]
    assert result.final is result.stage2
    proposed = np.zeros(volume.voxels.shape, np.uint16)
    proposed[3:10][volume.voxels[3:10] > 100] = 2
    np.testing.assert_array_equal(result.unet.label_volume.voxels, proposed)
    stack = slice_stack(volume, "axial")
    for stage in result.stages:
        assert stage.label_volume.same_geometry(volume)
        assert stage.seconds >= 0
        frames = stack.frames(stage.label_volume.voxels)
        assert not frames[:2].any() and not frames[11:].any()  # extent 3..9 plus margin 1
        assert set(np.unique(stage.label_volume.voxels)) <= {0, 2}
    assert not np.array_equal(result.stage1.label_volume.voxels, proposed)  # SAM 2 made it
    assert result.unet.boxes == result.stage1.boxes
    assert any(result.stage2.points["Liver"].values())  # stage 2 clicked where they disagree
    segment = result.segments()[0]
    assert (segment.name, segment.label) == ("Liver", 2)
    assert result.prompts["Liver"].frame_range == (2, 10)
    assert steps[-1] == (300, 300) and steps == sorted(steps)


def test_auto_segment_adds_to_an_existing_session(tiny_model, tmp_path):
    volume, _, labels = phantom_case(tmp_path, organ_frames=(5, 6))
    session = Session(tiny_model, volume)
    session.add_object("Liver", 2)  # e.g. a segment the user made first
    result = auto_segment(session, None, LabelFilePromptSource(labels, {2: "Liver"}),
                          stages=1, margin=0)
    (organ,) = result.prompts.values()
    assert organ.obj_id == 3 and session.object(3).name == "Liver (2)"
    assert set(np.unique(result.final.label_volume.voxels)) <= {0, 3}


@pytest.mark.parametrize("prompt", ["box", "mask"])
def test_saved_prompts_replay_stage1_exactly(tiny_model, tiny_checkpoint, tmp_path, prompt):
    volume, image, labels = phantom_case(tmp_path, organ_frames=(4, 7))
    result = auto_segment(tiny_model, volume, LabelFilePromptSource(labels, {2: "Liver"}),
                          stages=1, settings=RefineSettings(margin=1, prompt=prompt,
                                                            key_every=3))
    path = save_prompts(result, tmp_path / "auto.prompts.json")
    saved = json.loads(path.read_text())
    (segment,) = saved["segments"]
    assert segment["range"] == [3, 8] and segment["label"] == 2
    assert bool(segment.get("masks")) == (prompt == "mask")
    out = tmp_path / "replay.seg.nrrd"
    assert main(["segment", str(image), "--prompts", str(path), "--out", str(out),
                 *model_args(tiny_checkpoint)]) == 0
    replayed, _ = read_seg_nrrd(out)
    np.testing.assert_array_equal(replayed.voxels, result.stage1.label_volume.voxels)


def test_auto_command_on_the_shared_real_ct(tiny_checkpoint, totalseg_dir, tmp_path):
    ct = totalseg_dir / "example_ct_sm.nii.gz"
    out = tmp_path / "auto.seg.nrrd"
    code = main(["auto", str(ct), "--prompts-from", str(totalseg_dir / "example_seg.nii.gz"),
                 "--organs", "Gallbladder", "--margin", "1", "--keep-stages", "--save-prompts",
                 str(tmp_path / "p.json"), "--out", str(out), *model_args(tiny_checkpoint)])
    assert code == 0
    source = load_volume(ct)
    labels, segments = read_seg_nrrd(out)
    assert labels.same_geometry(source)
    assert [(s.name, s.label) for s in segments] == [("gallbladder", 4)]
    assert read_seg_nrrd_fields(out)["SAM2Refine_AlgorithmType"] == "AUTOMATIC"
    frames = slice_stack(source, "axial").frames(labels.voxels)
    assert not frames[:1].any() and not frames[16:].any()  # gallbladder 2..14, margin 1
    assert frames.any()
    for stage in ("unet", "stage1"):
        assert read_seg_nrrd(tmp_path / f"auto.{stage}.seg.nrrd")[0].same_geometry(source)
    assert json.loads((tmp_path / "p.json").read_text())["segments"][0]["range"] == [1, 15]


def test_auto_command_over_a_folder(tiny_checkpoint, tmp_path, capsys):
    images, labels = tmp_path / "imagesTs", tmp_path / "predictions"
    images.mkdir()
    labels.mkdir()
    for n, case in enumerate(("case_a", "case_b")):
        _, image, label = phantom_case(tmp_path, case, organ_frames=(5, 6), seed=n)
        image.rename(images / f"{case}_0000.nii.gz")  # nnU-Net's naming
        label.rename(labels / f"{case}.nii.gz")
    (labels / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 2}}))
    out = tmp_path / "out"
    code = main(["auto", str(images), "--prompts-from", str(labels), "--out", str(out),
                 "--stages", "1", "--margin", "0", "--save-prompts", str(tmp_path / "prompts"),
                 *model_args(tiny_checkpoint)])
    assert code == 0
    for case in ("case_a", "case_b"):
        labelmap, segments = read_seg_nrrd(out / f"{case}.seg.nrrd")
        assert [s.name for s in segments] == ["liver"]
        assert (tmp_path / "prompts" / f"{case}.prompts.json").is_file()


def test_an_empty_input_folder_is_named(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "volumes").mkdir()
    code = main(["auto", str(tmp_path / "volumes"), "--prompts-from", str(tmp_path),
                 "--out", str(tmp_path / "out"), *model_args(tiny_checkpoint)])
    assert code == 2
    assert "volumes is an empty folder; give a volume file" in capsys.readouterr().err


def test_bad_prompt_sources_fail_clearly(tiny_model, tiny_checkpoint, tmp_path, capsys):
    volume, image, labels = phantom_case(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({"2": "liver"}))
    code = main(["auto", str(image), "--prompts-from", str(labels), "--organs", "spleen,heart",
                 "--out", str(tmp_path / "x.seg.nrrd"), *model_args(tiny_checkpoint)])
    assert code == 2
    err = capsys.readouterr().err
    assert "no organ named 'spleen', 'heart'" in err and "It has: liver" in err
    assert not (tmp_path / "x.seg.nrrd").exists()
    empty = write(volume.with_voxels(np.zeros(volume.voxels.shape, np.uint8)),
                  tmp_path / "empty.nii.gz")
    with pytest.raises(SAM2RefineError, match="none of its named labels"):
        auto_segment(tiny_model, volume, LabelFilePromptSource(empty, {2: "liver"}))
    with pytest.raises(PromptError, match="stages must be 1 or 2"):
        auto_segment(tiny_model, volume, labels, stages=3)
    with pytest.raises(SAM2RefineError, match="remote server"):
        auto_segment(object(), volume, labels)
    with pytest.raises(PromptError, match="axial"):
        auto_segment(Session(tiny_model, volume, axis="coronal"), None, labels)
