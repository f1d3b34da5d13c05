"""Parameter-efficient fine-tuning of SAM 2 on an nnU-Net-format dataset.

Only small adapters train by default (the base weights stay frozen, so one base checkpoint
serves every fine-tuned variant and the result is a small adapter file); `train_decoder`
also trains the mask decoder. Clips, prompts and losses: see `finetune_data`,
`prompt_simulation`, `finetune_clip` and `finetune_loss`.

Runs on one device, or on several through `torchrun` (DistributedDataParallel; NCCL on GPUs,
gloo on CPUs); rank 0 writes every file. All randomness is derived from (seed, epoch, step,
rank), so a run resumed from its last checkpoint continues exactly as if never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from sam2refine.finetune.clip import ClipResult, enable_grad_checkpointing, run_clip
from sam2refine.finetune.config import EpochStats, FinetuneConfig
from sam2refine.finetune.data import ClipDataset
from sam2refine.finetune.loss import mask_iou
from sam2refine.finetune.prompt_simulation import PromptPlan, plan_prompts
from sam2refine.finetune.state import (
    base_checkpoint_sha256,
    load_training_state,
    save_final_adapters,
    save_training_state,
    trainable_state,
    write_history,
)
from sam2refine.runtime import autocast, autocast_dtype, start_distributed

log = logging.getLogger(__name__)
WARMUP_FRACTION = 0.05


@dataclass
class FinetuneResult:
    adapters: Path | None  # None on ranks other than 0
    history: list[EpochStats]
    trained_params: int
    total_params: int
    trained_state: dict[str, torch.Tensor]  # the final trainable tensors, by name


class Trainer:
    """The model with its adapters, optimizer and schedule, and one training step."""

    def __init__(self, model: torch.nn.Module, config: FinetuneConfig, total_steps: int) -> None:
        from sam2refine.sam.adapters import add_adapters, freeze_base

        self.config = config
        self.device = next(model.parameters()).device
        torch.manual_seed(config.seed)  # adapters start identical on every rank
        self.model = add_adapters(model, adapter_config(config.bottleneck))
        freeze_base(self.model, train_decoder=config.train_decoder)
        self.model.to(self.device)
        if config.grad_checkpointing:
            enable_grad_checkpointing(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _warmup_cosine(max(total_steps, 1)))
        # fp16 autocast (GPUs without bf16) needs loss scaling; bf16 and float32 do not.
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=autocast_dtype(self.device) == torch.float16)
        self.module: torch.nn.Module = _ClipModule(self.model)
        if dist.is_initialized():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=ids, find_unused_parameters=True)

    def train_step(self, images: torch.Tensor, masks: torch.Tensor, seed: list[int]) -> dict:
        """One clip: forward with simulated prompts, backward, optimizer and schedule step."""
        generator = torch.Generator().manual_seed(_combine(seed))
        plan = plan_prompts(generator, self.config.correction_rounds,
                            mask_only_prob=self.config.mask_only_prob)
        self.model.train()
        with autocast(self.device):
            total, focal, dice, iou, score, _ = self.module(
                images.to(self.device), masks.to(self.device), plan, generator)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": float(total.detach()), "focal": float(focal), "dice": float(dice),
                "iou": float(iou), "score": float(score)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, masks: torch.Tensor, seed: int) -> torch.Tensor:
        """(T, S, S) bool masks of a clip prompted by a jittered box on frame 0, then tracked."""
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        with autocast(self.device):
            result: ClipResult = run_clip(self.model, images.to(self.device),
                                          masks.to(self.device), PromptPlan("box", ()), generator)
        return result.masks

    def validate(self, dataset: ClipDataset | None, rank: int, world: int) -> float | None:
        """Mean per-frame Dice over the validation clips (each rank takes its share)."""
        if dataset is None:
            return None
        sums = torch.zeros(2, dtype=torch.float64)
        for index in range(rank, len(dataset), world):
            clip = dataset[index]
            pred = self.predict(clip.images, clip.masks, _combine([self.config.seed, index]))
            sums += torch.tensor([float(_dice(pred.cpu(), clip.masks).sum()), len(clip.masks)],
                                 dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(sums)
        return float(sums[0] / sums[1]) if sums[1] > 0 else None


class _ClipModule(torch.nn.Module):
    """A clip's forward pass as a module call, so DDP can hook it (tensors in, tensors out)."""

    def __init__(self, sam: torch.nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, images, masks, plan, generator):
        result = run_clip(self.sam, images, masks, plan, generator)
        loss = result.loss
        return loss.total, loss.focal, loss.dice, loss.iou, loss.score, result.masks


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune `config.model_name` on `config.dataset`; write checkpoints, history and
    the final adapters into `config.out_dir` (rank 0 only)."""
    from sam2refine.sam.adapters import count_parameters
    from sam2refine.sam.model import load_model, model_checkpoint

    train_set, val_set = _datasets(config)
    run = start_distributed(config.device)
    rank, world, device = run.rank, run.world_size, run.device
    steps = config.steps_per_epoch or math.ceil(len(train_set) / world)
    model = load_model(config.model_name, config.image_size, config.checkpoint, device)
    checkpoint = model_checkpoint(model)
    trainer = Trainer(model, config, total_steps=steps * config.epochs)
    trained, total = count_parameters(trainer.model)
    out_dir = Path(config.out_dir)
    state_path = out_dir / "checkpoint.pt"
    history: list[EpochStats] = []
    start_epoch = 0
    if config.resume:
        start_epoch, history = load_training_state(state_path, trainer, config)
    if rank == 0:
        log.info("Training %d of %d parameters (%.3f %%) on %s, %d world size",
                 trained, total, 100.0 * trained / total, device, world)
    for epoch in range(start_epoch, config.epochs):
        stats = _train_epoch(trainer, train_set, epoch, steps, rank, world)
        stats.val_dice = trainer.validate(val_set, rank, world)
        history.append(stats)
        if rank == 0:
            log.info("epoch %d: loss %.4f, validation Dice %s", epoch + 1, stats.train_loss,
                     "n/a" if stats.val_dice is None else f"{stats.val_dice:.4f}")
            save_training_state(state_path, trainer, config, epoch, history)
            write_history(out_dir / "history.json", [asdict(h) for h in history])
    adapters = None
    if rank == 0:
        sha = base_checkpoint_sha256(checkpoint)
        adapters = save_final_adapters(trainer.model, out_dir / "adapters.safetensors",
                                       config, sha)
    if dist.is_initialized():
        dist.barrier()
    return FinetuneResult(adapters, history, trained, total, trainable_state(trainer.model))


def _train_epoch(trainer: Trainer, train_set: ClipDataset, epoch: int, steps: int,
                 rank: int, world: int) -> EpochStats:
    from tqdm import tqdm

    config = trainer.config
    torch.manual_seed(_combine([config.seed, epoch, rank, 1]))  # dropout in memory attention
    train_set.set_epoch(epoch)
    order = _epoch_order(len(train_set), steps, epoch, rank, world, config.seed)
    started, losses = time.perf_counter(), []
    bar = tqdm(order, desc=f"epoch {epoch + 1}/{config.epochs}", unit="clip",
               disable=rank != 0 or not config.progress)
    for step, index in enumerate(bar):
        clip = train_set[index]
        out = trainer.train_step(clip.images, clip.masks, [config.seed, epoch, step, rank])
        losses.append(out["loss"])
        bar.set_postfix(loss=f"{out['loss']:.4f}", dice=f"{out['dice']:.3f}")
    mean = torch.tensor([sum(losses), len(losses)], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(mean)
    return EpochStats(epoch + 1, len(losses), float(mean[0] / mean[1]), None,
                      time.perf_counter() - started, losses)


def _epoch_order(count: int, steps: int, epoch: int, rank: int, world: int,
                 seed: int) -> list[int]:
    """This rank's `steps` item indices: DistributedSampler shuffles, repeated as needed."""
    sampler = torch.utils.data.DistributedSampler(
        range(count), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    order: list[int] = []
    cycle = 0
    while len(order) < steps:
        sampler.set_epoch(epoch * 1_000_003 + cycle)
        order += list(sampler)
        cycle += 1
    return order[:steps]


def _datasets(config: FinetuneConfig) -> tuple[ClipDataset, ClipDataset | None]:
    from sam2refine.datasets.nnunet import read_dataset, split_cases

    dataset = read_dataset(config.dataset)
    common = {"image_size": config.image_size, "clip_length": config.clip_length,
              "intensity": config.intensity, "seed": config.seed}
    if config.val_fraction <= 0:
        return ClipDataset(dataset, dataset.cases, train=True, **common), None
    train_cases, val_cases = split_cases(dataset.cases, config.val_fraction, config.seed)
    return (ClipDataset(dataset, train_cases, train=True, **common),
            ClipDataset(dataset, val_cases, train=False, **common))


def adapter_config(bottleneck: int):
    """Adapters of width `bottleneck` at every site, twice as wide in memory attention (the
    proportions of `AdapterConfig`'s defaults); 0 trains no adapters (use `train_decoder`)."""
    from sam2refine.sam.adapters import AdapterConfig

    b = int(bottleneck)
    return AdapterConfig(encoder_bottleneck=b, neck_bottleneck=b, memory_bottleneck=2 * b,
                         decoder_bottleneck=b)


def _warmup_cosine(total_steps: int):
    warmup = max(1, int(total_steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(T,) Dice per frame of bool masks (1 where both are empty)."""
    iou = mask_iou(pred[:, None].float() * 2 - 1, target[:, None])[:, 0]
    return 2 * iou / (1 + iou)


def _combine(parts: list[int]) -> int:
    """A 63-bit seed from several integers (stable across runs and processes)."""
    value = 0x5EED
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (1 << 63)
    return value


