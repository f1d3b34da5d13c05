"""The U-Net prompt generator: it learns the phantom organs, resumes exactly, trains under DDP,
proposes boxes and z-extents that match its masks, and refuses bad checkpoints clearly."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2refine.cli.main import main
from sam2refine.datasets.phantoms import PHANTOM_ORGANS, make_phantom_case, write_phantom_dataset
from sam2refine.errors import PromptGeneratorError
from sam2refine.image.slicing import slice_stack
from sam2refine.image.volume import Volume
from sam2refine.promptgen.generator import PromptGenerator, check_labels, read_checkpoint
from sam2refine.promptgen.train import TrainSettings, train_prompt_generator

SHAPE = (24, 80, 96)  # small phantoms: [k, j, i]
EPOCHS = 30  # x 40 steps of 8 slices: the bounded training of the learning test
TINY = {"image_size": 64, "channels": (8, 16, 32, 64), "strides": (2, 2, 2),
        "num_res_units": 1, "batch_size": 8, "show_progress": False}


def settings(dataset: Path, out: Path, **changes) -> TrainSettings:
    return TrainSettings(dataset=dataset, out=out, **{**TINY, **changes})


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), 16, seed=0,
                                 shape_kji=SHAPE)


@pytest.fixture(scope="module")
def few_phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("few"), 3, seed=1, shape_kji=(8, 48, 48))


@pytest.fixture(scope="module")
def trained(phantoms, tmp_path_factory):
    """A tiny U-Net trained for a bounded number of steps (fixed seed)."""
    out = tmp_path_factory.mktemp("trained")
    return train_prompt_generator(settings(phantoms, out, epochs=EPOCHS, steps_per_epoch=40,
                                           lr=3e-3, val_fraction=0.125))


@pytest.fixture(scope="module")
def held_out() -> list[tuple[Volume, Volume]]:
    return [make_phantom_case(seed, SHAPE) for seed in (1001, 1002, 1003, 1004)]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_tiny_unet_learns_the_phantom_organs(trained, held_out):
    generator = PromptGenerator.load(trained.best, device="cpu")
    assert generator.labels == PHANTOM_ORGANS
    scores = {name: [] for name in PHANTOM_ORGANS}
    for image, labels in held_out:
        proposals = generator.predict(image)
        for name, value in PHANTOM_ORGANS.items():
            scores[name].append(dice(proposals.organs[name].mask, labels.voxels == value))
    mean = {name: float(np.mean(s)) for name, s in scores.items()}
    # Measured: liver 0.88, spleen 0.88, kidneys 0.85 / 0.84, aorta 0.84 (mean 0.86); with
    # training seeds 1 and 2 instead of 0 the means were 0.85 and 0.84, no organ below 0.80.
    assert np.mean(list(mean.values())) >= 0.8, mean
    assert min(mean.values()) >= 0.7, mean


def test_every_epoch_logs_validation_dice_per_organ(trained):
    history = json.loads((trained.last.parent / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
    assert all(set(r["val_dice"]) == set(PHANTOM_ORGANS) for r in history)
    state = read_checkpoint(trained.best)
    assert state["best_dice"] == max(r["mean_dice"] for r in history)
    assert state["image_size"] == 64 and state["intensity"] == "ct"
    assert state["labels"] == PHANTOM_ORGANS and state["target_spacing"] == [1.5, 1.5]


def test_boxes_and_z_extent_match_the_masks(trained, held_out):
    image, _ = held_out[0]
    proposals = PromptGenerator.load(trained.last, device="cpu").predict(image)
    stack = slice_stack(image, "axial")
    for name, organ in proposals.organs.items():
        assert organ.label == PHANTOM_ORGANS[name]
        assert organ.mask.shape == organ.probability.shape == image.voxels.shape
        assert organ.probability.dtype == np.float16 and organ.mask.dtype == bool
        frames = stack.frames(organ.mask)
        present = [f for f in range(stack.num_frames) if frames[f].any()]
        assert sorted(organ.boxes) == present and present
        assert organ.z_extent == (present[0], present[-1])
        for f, (r0, c0, r1, c1) in organ.boxes.items():
            rows, cols = np.nonzero(frames[f])
            assert (r0, c0, r1, c1) == (rows.min(), cols.min(), rows.max(), cols.max())
    labels = proposals.label_volume()
    assert labels.same_geometry(image)
    for organ in proposals.organs.values():
        assert np.array_equal(labels.voxels == organ.label, organ.mask)


def test_volume_at_another_spacing_gets_masks_on_its_own_grid(trained, held_out):
    """Slices are resampled to the training spacing and back: finer voxels, same anatomy."""
    import SimpleITK as sitk

    image, labels = held_out[1]
    fine = [1.0, 1.0, image.spacing[2]]
    size = [round(n * s / f) for n, s, f in zip(image.shape_ijk, image.spacing, fine)]

    def resample(volume: Volume, interpolator) -> Volume:
        return Volume.from_sitk(sitk.Resample(volume.to_sitk(), size, sitk.Transform(),
                                              interpolator, volume.origin, fine,
                                              volume.direction.flatten().tolist()))

    fine_image = resample(image, sitk.sitkLinear)
    fine_labels = resample(labels, sitk.sitkNearestNeighbor)
    generator = PromptGenerator.load(trained.best, device="cpu")
    proposals = generator.predict(fine_image)
    liver = proposals.organs["liver"].mask
    assert liver.shape == fine_image.voxels.shape
    assert dice(liver, fine_labels.voxels == PHANTOM_ORGANS["liver"]) >= 0.75


def test_resume_continues_exactly_where_training_stopped(few_phantoms, tmp_path):
    straight = train_prompt_generator(settings(few_phantoms, tmp_path / "a", epochs=2,
                                               steps_per_epoch=2, batch_size=4))
    first = train_prompt_generator(settings(few_phantoms, tmp_path / "b", epochs=1,
                                            steps_per_epoch=2, batch_size=4))
    stored = read_checkpoint(first.last)
    assert stored["epoch"] == 1
    resumed = train_prompt_generator(settings(few_phantoms, tmp_path / "b", epochs=2,
                                              steps_per_epoch=2, batch_size=4,
                                              resume=first.last))
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    a, b = read_checkpoint(straight.last), read_checkpoint(resumed.last)
    assert b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert not torch.equal(stored["model"][key], b["model"][key])  # it did train on
    moments_a = [s["exp_avg"] for s in a["optimizer"]["state"].values()]
    moments_b = [s["exp_avg"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, dataset: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = train_prompt_generator(settings(Path(dataset), Path(out), epochs=1,
                                             steps_per_epoch=3, batch_size=2, device="cpu"))
    torch.save(result.net.state_dict(), Path(out) / f"rank{rank}.weights")


def test_ddp_with_two_gloo_processes_ends_with_identical_weights(few_phantoms, tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(_free_port(), str(few_phantoms),
                                                   str(tmp_path)), nprocs=2)
    rank0 = torch.load(tmp_path / "rank0.weights", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.weights", weights_only=True)
    stored = read_checkpoint(tmp_path / "last.pt")
    assert stored["settings"]["world_size"] == 2
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
        assert torch.equal(value, stored["model"][key]), key


def test_missing_corrupt_and_sam2_checkpoints_are_refused(tmp_path, tiny_checkpoint):
    with pytest.raises(PromptGeneratorError, match="not found"):
        PromptGenerator.load(tmp_path / "nothing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(PromptGeneratorError, match="could not be read"):
        PromptGenerator.load(garbage)
    with pytest.raises(PromptGeneratorError, match="is a SAM 2 checkpoint, not a prompt gen"):
        PromptGenerator.load(tiny_checkpoint)


def test_organs_the_generator_was_not_trained_for_are_named(trained):
    generator = PromptGenerator.load(trained.last, device="cpu")
    check_labels(generator, ["Liver", "kidney_left"])  # names match ignoring case
    with pytest.raises(PromptGeneratorError, match=r"other labels.*'heart', 'lung'"):
        check_labels(generator, ["liver", "heart", "lung"])


def test_resuming_on_a_dataset_with_other_labels_fails_through_the_cli(trained, few_phantoms,
                                                                       tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for folder in ("imagesTr", "labelsTr"):
        (other / folder).symlink_to(few_phantoms / folder)
    meta = json.loads((few_phantoms / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "hepar": 1, "lien": 2, "ren_sinister": 3,
                      "ren_dexter": 4, "aorta": 5}
    (other / "dataset.json").write_text(json.dumps(meta))
    code = main(["train-prompt-generator", str(other), "--out", str(tmp_path / "o"),
                 "--resume", str(trained.last), "--no-progress"])
    assert code == 2
    assert "checkpoint for other labels" in capsys.readouterr().err


def test_dataset_without_dataset_json_fails_through_the_cli(tmp_path, capsys):
    (tmp_path / "imagesTr").mkdir()
    code = main(["train-prompt-generator", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "dataset.json" in err and len(err.strip().splitlines()) == 1
