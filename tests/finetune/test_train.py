"""Fine-tuning: loss, clips from a phantom dataset, training steps, resume, DDP, mask prompts.

Everything runs at 256 px on clips of 2 slices from a random-init SAM 2.1 tiny, so the
figures say nothing about accuracy; the tests check the mechanics: the loss goes down, a
resumed run continues exactly, two gloo processes end with the same weights, and the decoder
really runs on mask prompts once trained.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from sam2refine.finetune.loss import mask_iou, segmentation_loss
from tests.conftest import TEST_IMAGE_SIZE

PHANTOM_SHAPE = (12, 48, 56)
TRAIN_STEPS = 6


# ----- loss ----------------------------------------------------------------------------------
def _square(size: int = 32) -> torch.Tensor:
    target = torch.zeros(1, 1, size, size, dtype=torch.bool)
    target[..., 8:24, 8:24] = True
    return target


def test_loss_is_small_for_a_confident_correct_mask_and_large_for_a_wrong_one():
    target = _square()
    good = torch.where(target, 10.0, -10.0)
    bad = -good
    iou_pred = torch.ones(1, 1)
    low = segmentation_loss(good, iou_pred, target)
    high = segmentation_loss(bad, torch.zeros(1, 1), target)
    assert low.total < 0.01 and low.iou < 1e-6
    assert high.dice > 0.99 and high.total > 20 * low.total + 1.0


def test_loss_supervises_the_best_candidate_and_every_iou_prediction():
    target = _square()
    good = torch.where(target, 10.0, -10.0)
    logits = torch.cat([-good, good, torch.full_like(good, -10.0)], dim=1)  # (1, 3, H, W)
    iou_pred = torch.tensor([[0.0, 1.0, 0.0]])  # exactly the real IoUs
    terms = segmentation_loss(logits, iou_pred, target)
    assert terms.dice < 0.01  # the correct candidate was picked
    assert terms.iou < 1e-6
    assert mask_iou(logits, target).tolist() == [[0.0, 1.0, 0.0]]


def test_object_score_is_trained_and_mask_terms_skip_frames_without_the_object():
    empty = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    logits = torch.full((1, 1, 32, 32), 5.0)  # predicts foreground everywhere
    present = segmentation_loss(logits, torch.ones(1, 1), empty, torch.tensor([[8.0]]))
    absent = segmentation_loss(logits, torch.ones(1, 1), empty, torch.tensor([[-8.0]]))
    assert present.focal == 0 and present.dice == 0 and present.iou == 0
    assert present.score > 7.9 and absent.score < 0.001


# ----- data ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from sam2refine.datasets.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), 3, seed=0,
                                 shape_kji=PHANTOM_SHAPE)


def _clip_dataset(root, clip_length=2, train=True, cases=None):
    from sam2refine.datasets.nnunet import read_dataset
    from sam2refine.finetune.data import ClipDataset

    dataset = read_dataset(root)
    return ClipDataset(dataset, cases or dataset.cases, TEST_IMAGE_SIZE, clip_length,
                       train=train, seed=0)


def test_clips_are_consecutive_slices_of_one_organ_prepared_as_the_session_does(phantom_root):
    from sam2refine.image.intensity import frames_to_unit, normalize, parse_preset
    from sam2refine.image.slicing import slice_stack
    from sam2refine.sam.transform import model_transform, to_model_tensor

    clips = _clip_dataset(phantom_root, clip_length=4)
    organs = {item.organ for item in clips.items}
    assert {"liver", "spleen", "aorta"} <= organs
    image, labels = clips.dataset.load_case(clips.cases[0])
    stack = slice_stack(image, "axial")
    window = normalize(image.voxels, parse_preset("ct"))
    transform = model_transform(stack, TEST_IMAGE_SIZE)
    directions = set()
    for index, item in enumerate(clips.items):
        if item.case_index != 0:
            continue
        clip = clips[index]
        steps = np.diff(clip.frames)
        assert len(clip.frames) == 4 and len(set(steps.tolist())) == 1 and abs(steps[0]) == 1
        directions.add(int(steps[0]))
        assert clip.frames[0] in item.frames_present and bool(clip.masks[0].any())
        assert clip.images.shape == (4, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
        expected = to_model_tensor(frames_to_unit(stack.frames(image.voxels)[list(clip.frames)],
                                                  *window), transform)
        assert torch.equal(clip.images, expected)
        organ = stack.frames(labels.voxels)[list(clip.frames)] == item.label_value
        model_mask = transform.mask_to_model(torch.from_numpy(organ)[:, None].float())[:, 0]
        assert torch.equal(clip.masks, model_mask > 0.5)
    clips.set_epoch(1)
    for index in range(len(clips)):
        directions.add(int(np.sign(np.diff(clips[index].frames)[0])))
    assert directions == {-1, 1}  # clips run up and down the volume


def test_training_clips_change_with_the_epoch_and_validation_clips_do_not(phantom_root):
    train = _clip_dataset(phantom_root, clip_length=3)
    val = _clip_dataset(phantom_root, clip_length=3, train=False)
    first = [train[i].frames for i in range(len(train))]
    assert first == [train[i].frames for i in range(len(train))]  # reproducible
    train.set_epoch(1)
    assert first != [train[i].frames for i in range(len(train))]
    fixed = [val[i].frames for i in range(len(val))]
    val.set_epoch(1)
    assert fixed == [val[i].frames for i in range(len(val))]


# ----- training ------------------------------------------------------------------------------
def _config(root, out, checkpoint, **changes):
    from sam2refine.finetune.config import FinetuneConfig

    settings = {"image_size": TEST_IMAGE_SIZE, "clip_length": 2, "epochs": 1,
                "steps_per_epoch": 1, "lr": 2e-3, "val_fraction": 0.0, "device": "cpu",
                "correction_rounds": 1, "progress": False, "checkpoint": checkpoint}
    settings.update(changes)
    return FinetuneConfig(root, out, **settings)


@pytest.fixture(scope="module")
def trained(phantom_root, tiny_checkpoint, tmp_path_factory):
    """A Trainer after TRAIN_STEPS steps on phantom clips, with outputs from before training."""
    from sam2refine.finetune.clip import copy_through_mask, refine_from_mask
    from sam2refine.finetune.train import Trainer
    from sam2refine.sam.model import build_model

    torch.manual_seed(0)
    config = _config(phantom_root, tmp_path_factory.mktemp("ft"), tiny_checkpoint,
                     mask_only_prob=0.5)
    base = build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, tiny_checkpoint, "cpu")
    clips = _clip_dataset(phantom_root)
    probe = clips[0]
    with torch.no_grad():
        base_refine = refine_from_mask(base, probe.images[0], probe.masks[0])
        trainer = Trainer(build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, tiny_checkpoint,
                                      "cpu"), config, total_steps=TRAIN_STEPS)
        trainer.model.eval()
        before = refine_from_mask(trainer.model, probe.images[0], probe.masks[0])
    losses = []
    for step in range(TRAIN_STEPS):
        clip = clips[step % 2]
        losses.append(trainer.train_step(clip.images, clip.masks, [0, step])["loss"])
    trainer.model.eval()
    with torch.no_grad():
        after = refine_from_mask(trainer.model, probe.images[0], probe.masks[0])
        copied = copy_through_mask(trainer.model, probe.images[0], probe.masks[0])
    return {"trainer": trainer, "losses": losses, "base_refine": base_refine,
            "before": before, "after": after, "copied": copied, "probe": probe}


@pytest.mark.slow
def test_fine_tuning_steps_lower_the_training_loss(trained):
    losses = trained["losses"]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


@pytest.mark.slow
def test_only_adapters_train_by_default(trained):
    from sam2refine.sam.adapters import adapter_parameters, count_parameters

    model = trained["trainer"].model
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter_parameters(model)}
    adapters, total = count_parameters(model)
    assert 0 < adapters < 0.02 * total


@pytest.mark.slow
def test_fine_tuned_mask_prompts_are_refined_not_copied(trained):
    """Zero-initialised adapters leave the model exactly as it was, so before training the
    "refine" path equals the base model's decoder output. After training with mask-only rounds
    it has moved away from it; and it is not the copy-through output that SAM 2.1 gives a mask
    prompt (which is the +-10 mask itself, whatever the weights)."""
    probe = trained["probe"]
    assert torch.equal(trained["before"], trained["base_refine"])
    assert (trained["after"] - trained["before"]).abs().max() > 1e-3
    copied = trained["copied"]
    mask_logits = probe.masks[0].float() * 20 - 10
    assert torch.equal(copied, mask_logits)  # copy-through ignores the image and the weights
    assert (trained["after"] - copied).abs().mean() > 1.0



@pytest.mark.slow
def test_a_resumed_run_continues_exactly_where_it_stopped(phantom_root, tiny_checkpoint,
                                                          tmp_path):
    from sam2refine.errors import CheckpointError
    from sam2refine.finetune.train import finetune

    straight = finetune(_config(phantom_root, tmp_path / "a", tiny_checkpoint, epochs=2))
    first = finetune(_config(phantom_root, tmp_path / "b", tiny_checkpoint, epochs=1))
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed = finetune(_config(phantom_root, tmp_path / "b", tiny_checkpoint, epochs=2,
                               resume=True))
    assert [h.losses for h in resumed.history] == [h.losses for h in straight.history]
    assert resumed.history[0].losses == first.history[0].losses
    assert straight.trained_state.keys() == resumed.trained_state.keys()
    for name, value in straight.trained_state.items():
        assert torch.equal(value, resumed.trained_state[name]), name
    assert any(not torch.equal(first.trained_state[n], v)
               for n, v in resumed.trained_state.items())  # the second epoch did train
    with pytest.raises(CheckpointError, match="bottleneck"):
        finetune(_config(phantom_root, tmp_path / "b", tiny_checkpoint, epochs=3, resume=True,
                         bottleneck=8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, root, out, checkpoint, result_dir):
    """One torchrun-like process: the environment torchrun sets, then a normal finetune()."""
    import torch.distributed as dist

    from sam2refine.finetune.train import finetune

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = finetune(_config(root, out, checkpoint, steps_per_epoch=2, val_fraction=0.34))
    torch.save({"state": result.trained_state, "adapters": str(result.adapters),
                "history": [(h.train_loss, h.val_dice, h.losses) for h in result.history]},
               result_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_adapters(phantom_root, tiny_checkpoint,
                                                        tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), phantom_root, tmp_path / "out",
                                tiny_checkpoint, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    states = [r["state"] for r in ranks]
    assert states[0].keys() == states[1].keys()
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
    assert any(v.abs().max() > 0 for n, v in states[0].items() if n.endswith("up.weight"))
    (loss0, dice0, steps0), (loss1, dice1, steps1) = ranks[0]["history"][0], ranks[1]["history"][0]
    assert loss0 == loss1 and steps0 != steps1  # each rank trained on its own clips
    assert dice0 == dice1 and 0.0 <= dice0 <= 1.0  # validation Dice gathered from both
    assert (tmp_path / "out" / "adapters.safetensors").is_file() and ranks[1]["adapters"] == "None"
    assert (tmp_path / "out" / "history.json").is_file()


def test_cli_refuses_a_run_that_would_train_nothing(tmp_path, capsys):
    from sam2refine.cli.main import main

    code = main(["finetune", str(tmp_path), "--out", str(tmp_path / "o"), "--bottleneck", "0"])
    assert code == 2 and "--train-decoder" in capsys.readouterr().err


def test_cli_reports_a_missing_dataset_in_one_line(tmp_path, capsys):
    from sam2refine.cli.main import main

    code = main(["finetune", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Dataset folder not found" in err and "Traceback" not in err


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(phantom_root,
                                                                  tiny_checkpoint):
    from sam2refine.finetune.clip import enable_grad_checkpointing, run_clip
    from sam2refine.finetune.prompt_simulation import PromptPlan, Round
    from sam2refine.finetune.train import adapter_config
    from sam2refine.sam.adapters import add_adapters, freeze_base
    from sam2refine.sam.model import build_model

    model = build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, tiny_checkpoint, "cpu")
    add_adapters(model, adapter_config(8))
    freeze_base(model)
    with torch.no_grad():  # non-zero up-projections, so every adapter weight gets a gradient
        for name, p in model.named_parameters():
            if name.endswith("up.weight"):
                p.normal_(0, 0.01)
    clip = _clip_dataset(phantom_root, clip_length=1)[0]

    def loss_and_grads():
        model.zero_grad()
        plan = PromptPlan("box", (Round(3),))
        result = run_clip(model, clip.images, clip.masks, plan, torch.Generator().manual_seed(0))
        result.loss.total.backward()
        return float(result.loss.total.detach()), {n: p.grad.clone() for n, p in
                                          model.named_parameters() if p.grad is not None}

    plain_loss, plain = loss_and_grads()
    assert enable_grad_checkpointing(model) == len(model.image_encoder.trunk.blocks)
    ckpt_loss, ckpt = loss_and_grads()
    assert any(n.startswith("image_encoder.trunk") for n in plain)
    assert plain.keys() == ckpt.keys() and ckpt_loss == pytest.approx(plain_loss, rel=1e-5)
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_train_decoder_also_trains_the_mask_decoder(phantom_root, tiny_checkpoint, tmp_path):
    from sam2refine.finetune.train import Trainer
    from sam2refine.sam.model import build_model

    model = build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, tiny_checkpoint, "cpu")
    trainer = Trainer(model, _config(phantom_root, tmp_path, tiny_checkpoint,
                                     train_decoder=True), total_steps=1)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    decoder = {n for n, _ in trainer.model.sam_mask_decoder.named_parameters(
        prefix="sam_mask_decoder")}
    assert decoder <= trainable
    assert not any(n.startswith("image_encoder") and ".adapter." not in n for n in trainable)
