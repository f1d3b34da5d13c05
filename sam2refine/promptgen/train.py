"""Training the U-Net prompt generator on an nnU-Net dataset (`train-prompt-generator`).

Slices are drawn and augmented by `promptgen_data`; the loss is Dice + cross-entropy, with AMP
(bf16, or fp16 with loss scaling) on CUDA only. Every epoch ends with a per-organ validation
Dice on held-out cases and an atomic checkpoint (`last.pt`, and `best.pt` when the mean Dice
improves) from which `resume` continues exactly: sampling and augmentation are seeded by
(seed, epoch), not by how the run got there.

Under `torchrun` (WORLD_SIZE > 1) each process trains on its share of the slices with
DistributedDataParallel (NCCL on CUDA, gloo on CPU); only rank 0 validates and writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from sam2refine.errors import DatasetError, PromptGeneratorError
from sam2refine.promptgen.data import (
    PreparedCase,
    SliceSamples,
    augment,
    barrier,
    load_prepared,
    median_spacing,
    organ_labels,
)
from sam2refine.promptgen.generator import (
    CHECKPOINT_KIND,
    FORMAT_VERSION,
    PromptGenConfig,
    build_unet,
    class_probabilities,
    read_checkpoint,
    write_checkpoint,
)
from sam2refine.runtime import autocast, autocast_dtype, start_distributed, stop_distributed

log = logging.getLogger("sam2refine")
GRAD_CLIP = 12.0  # as nnU-Net: keeps early Dice-loss spikes from wrecking the weights


@dataclass
class TrainSettings:
    """What `train-prompt-generator` was asked to do (defaults in one place)."""

    dataset: Path
    out: Path
    epochs: int = 50
    steps_per_epoch: int | None = 250  # None: one pass over the training slices
    batch_size: int = 16
    lr: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    resume: Path | None = None
    image_size: int = 256
    context: int = 1
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    intensity: str = "ct"
    target_spacing: tuple[float, float] | None = None  # None: median of the training cases
    foreground_fraction: float = 0.33
    num_workers: int = 0
    show_progress: bool = True


@dataclass
class TrainResult:
    """Where the checkpoints went, the per-epoch history and the trained network."""

    last: Path
    best: Path | None
    history: list[dict] = field(default_factory=list)
    net: torch.nn.Module | None = None


def train_prompt_generator(settings: TrainSettings) -> TrainResult:
    """Train (or resume training) a prompt generator; see the module docstring."""
    run = start_distributed(settings.device)
    try:
        return _Trainer(settings, run.rank, run.world_size, run.device).run()
    finally:
        stop_distributed(run)


class _Trainer:
    """One training run: data, network, optimiser and the epoch loop."""

    def __init__(self, settings: TrainSettings, rank: int, world: int,
                 device: torch.device) -> None:
        from sam2refine.datasets.nnunet import read_dataset, split_cases

        self.s, self.rank, self.world, self.device = settings, rank, world, device
        self.out = Path(settings.out)
        dataset = read_dataset(settings.dataset)
        labels = organ_labels(dataset.labels)
        self.state = _resume_state(settings.resume, labels) if settings.resume else None
        kept = self.state["settings"] if self.state else {}
        self.seed = int(kept.get("seed", settings.seed))  # the split must not change on resume
        self.val_fraction = float(kept.get("val_fraction", settings.val_fraction))
        train_cases, val_cases = split_cases(dataset.cases, self.val_fraction, self.seed)
        if not train_cases:
            raise DatasetError(f"{settings.dataset} leaves no training cases after holding out "
                               f"{self.val_fraction:.0%} for validation; add cases.")
        self.config = self.state["config"] if self.state else PromptGenConfig(
            labels, settings.image_size, settings.target_spacing or median_spacing(train_cases),
            settings.context, settings.channels, settings.strides, settings.num_res_units,
            settings.intensity)
        cache = self.out / "cache"
        self.train_data = load_prepared(dataset, train_cases, self.config, cache, rank, world)
        self.val_data = load_prepared(dataset, val_cases, self.config, cache, rank, world)
        log.info("Prompt generator: %d training and %d validation cases, %d organs, %d px at "
                 "%s mm, on %s x%d", len(train_cases), len(val_cases), len(labels),
                 self.config.image_size, self.config.target_spacing, device, world)

    def run(self) -> TrainResult:
        s, config = self.s, self.config
        torch.manual_seed(self.seed)
        net = build_unet(config).to(self.device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=1e-4)
        amp_fp16 = autocast_dtype(self.device) == torch.float16
        scaler = torch.amp.GradScaler("cuda") if amp_fp16 else None
        start, history, best = 0, [], -1.0
        if self.state:
            net.load_state_dict(self.state["model"])
            optimizer.load_state_dict(self.state["optimizer"])
            if scaler is not None and self.state.get("scaler"):
                scaler.load_state_dict(self.state["scaler"])
            start, history = int(self.state["epoch"]), list(self.state["history"])
            best = float(self.state["best_dice"])
            log.info("Resuming after epoch %d of %d", start, s.epochs)
        model = net
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        samples = SliceSamples(self.train_data, config, self.seed, s.foreground_fraction)
        sampler = DistributedSampler(samples, self.world, self.rank, shuffle=True,
                                     seed=self.seed, drop_last=True)
        loader = DataLoader(samples, s.batch_size, sampler=sampler, num_workers=s.num_workers,
                            drop_last=True, pin_memory=self.device.type == "cuda")
        if len(loader) == 0:
            raise DatasetError(
                f"Only {len(samples)} training slices for batch size {s.batch_size} on "
                f"{self.world} process(es); use a smaller --batch-size or more cases.")
        from monai.losses import DiceCELoss

        loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True,
                             batch=True)
        last, best_path = self.out / "last.pt", None
        for epoch in range(start, s.epochs):
            lr = s.lr * (1 - epoch / s.epochs) ** 0.9  # nnU-Net's polynomial decay
            for group in optimizer.param_groups:
                group["lr"] = lr
            steps = s.steps_per_epoch or len(loader)
            batches = _batches(loader, sampler, samples, epoch, steps)
            gen = torch.Generator().manual_seed(_seed_of(self.seed, epoch, self.rank))
            losses = []
            bar = _progress(steps, f"epoch {epoch + 1}/{s.epochs}",
                            s.show_progress and self.rank == 0)
            net.train()
            for images, classes in batches:
                images, classes = augment(images.to(self.device), classes.to(self.device), gen)
                with autocast(self.device):
                    logits = model(images)
                loss = loss_fn(logits.float(), classes[:, None])
                _step(loss, net, optimizer, scaler)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.close()
            record = {"epoch": epoch + 1, "lr": lr, "loss": float(np.mean(losses))}
            if self.rank == 0:
                dice = validation_dice(net, self.val_data, config, self.device)
                record["val_dice"] = dice
                record["mean_dice"] = float(np.mean(list(dice.values()))) if dice else None
                history.append(record)
                _log_epoch(record)
                improved = record["mean_dice"] is not None and record["mean_dice"] > best
                best = record["mean_dice"] if improved else best
                payload = self._payload(net, optimizer, scaler, epoch + 1, history, best)
                write_checkpoint(last, payload)
                if improved:
                    best_path = write_checkpoint(self.out / "best.pt", payload)
                _write_history(self.out / "history.json", history)
            barrier(self.world)
        if best_path is None and (self.out / "best.pt").is_file():
            best_path = self.out / "best.pt"
        return TrainResult(last, best_path, history, net)

    def _payload(self, net, optimizer, scaler, epoch: int, history: list[dict],
                 best: float) -> dict:
        """The checkpoint: plain tensors and numbers only (loads with weights_only=True)."""
        s, config = self.s, self.config
        return {
            "kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION,
            "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "config": config.to_dict(), "labels": dict(config.labels),
            "image_size": config.image_size, "intensity": config.intensity,
            "target_spacing": list(config.target_spacing), "history": history,
            "best_dice": best,
            "settings": {"seed": self.seed, "val_fraction": self.val_fraction, "lr": s.lr,
                         "epochs": s.epochs, "batch_size": s.batch_size,
                         "steps_per_epoch": s.steps_per_epoch, "world_size": self.world},
        }


def _resume_state(path: Path, labels: dict[str, int]) -> dict:
    """The checkpoint to resume from, refused when it was trained for other labels."""
    state = read_checkpoint(path)
    trained = state["config"].labels
    if trained != labels:
        raise PromptGeneratorError(
            f"{path} is a checkpoint for other labels ({_labels_text(trained)}) than this "
            f"dataset's ({_labels_text(labels)}); resume only on the dataset it was trained on, "
            "or start a new training without --resume."
        )
    if "optimizer" not in state or "epoch" not in state:
        raise PromptGeneratorError(f"{path} has no training state to resume from.")
    return state


def _labels_text(labels: dict[str, int]) -> str:
    return ", ".join(f"{n}={v}" for n, v in sorted(labels.items(), key=lambda kv: kv[1]))


def _batches(loader: DataLoader, sampler: DistributedSampler, samples: SliceSamples,
             epoch: int, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` batches, passing over the data as often as needed; pass p of epoch e is
    shuffled and cropped by (seed, e, p) alone, which makes resumed runs identical."""
    done, passes = 0, 0
    while done < steps:
        draw = epoch * 10_000 + passes
        sampler.set_epoch(draw)
        samples.draw = draw
        for batch in loader:
            yield batch
            done += 1
            if done == steps:
                return
        passes += 1


def _step(loss: torch.Tensor, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
    scaler.step(optimizer)
    scaler.update()


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def validation_dice(net: torch.nn.Module, cases: list[PreparedCase], config: PromptGenConfig,
                    device: torch.device) -> dict[str, float]:
    """Mean 3D Dice per organ over `cases` (on the network's grid, argmax, no cleaning);
    a case where an organ is neither present nor predicted does not count for it."""
    scores: dict[str, list[float]] = {name: [] for name in config.organ_names}
    for case in cases:
        frames = np.asarray(case.frames, np.float32)
        predicted = np.concatenate([p.argmax(1).numpy() for _, p in
                                    class_probabilities(net, frames, config, device)])
        for c, name in enumerate(config.organ_names, 1):
            truth, guess = np.asarray(case.classes) == c, predicted == c
            total = int(truth.sum()) + int(guess.sum())
            if total:
                scores[name].append(2.0 * int((truth & guess).sum()) / total)
    return {name: float(np.mean(v)) for name, v in scores.items() if v}


def _log_epoch(record: dict) -> None:
    dice = record.get("val_dice") or {}
    organs = ", ".join(f"{n} {d:.3f}" for n, d in dice.items()) or "no validation cases"
    mean = record.get("mean_dice")
    log.info("epoch %d: loss %.4f, validation Dice %s (%s)", record["epoch"], record["loss"],
             "n/a" if mean is None else f"{mean:.3f}", organs)


def _write_history(path: Path, history: list[dict]) -> None:
    from sam2refine.io.atomic import atomic_write

    text = json.dumps(history, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text, "utf-8"))
