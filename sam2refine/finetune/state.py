"""Fine-tuning checkpoints (resume) and the run's outputs, each written atomically.

A checkpoint holds only what training changes: the trainable tensors (adapters, plus the
decoder with `train_decoder`), the optimizer and schedule, the epoch and the history. The
frozen base weights come from the base checkpoint again on resume, so checkpoints stay small.
Random state needs no saving: the trainer derives it from (seed, epoch, step, rank).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch

from sam2refine.errors import CheckpointError
from sam2refine.finetune.config import EpochStats, FinetuneConfig
from sam2refine.io.atomic import atomic_write
from sam2refine.io.torch_files import load_weights_only


class Trainer(Protocol):
    """What a checkpoint saves of a training run."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

_FORMAT = 1
# Settings a checkpoint must share with the run that resumes it.
_MUST_MATCH = ("model_name", "image_size", "bottleneck", "train_decoder")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train, by name."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()
            if p.requires_grad}


def save_training_state(path: Path, trainer: Trainer, config: FinetuneConfig, epoch: int,
                        history: list[EpochStats]) -> Path:
    """Write the resume checkpoint after `epoch` (0-based) has finished."""
    state = {
        "format": _FORMAT,
        "epoch": int(epoch),
        "settings": {key: getattr(config, key) for key in _MUST_MATCH},
        "trainable": trainable_state(trainer.model),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "history": [asdict(h) for h in history],
    }
    return atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path: Path, trainer: Trainer,
                        config: FinetuneConfig) -> tuple[int, list[EpochStats]]:
    """Restore a checkpoint into `trainer`; returns (first epoch to run, history so far)."""
    state = load_weights_only(
        path, CheckpointError, what="a fine-tuning checkpoint",
        missing=f"--resume was given but {path} does not exist; start without --resume, or "
                "give the --out folder of the run to continue.",
        remedy="Delete it and start again without --resume.")
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a SAM2Refine fine-tuning checkpoint.")
    for key, value in state["settings"].items():
        if getattr(config, key) != value:
            raise CheckpointError(
                f"{path} was written with {key} = {value!r} but this run uses "
                f"{getattr(config, key)!r}; use the same setting to resume, or another --out."
            )
    params = dict(trainer.model.named_parameters())
    names = {n for n, p in params.items() if p.requires_grad}
    if set(state["trainable"]) != names:
        raise CheckpointError(
            f"{path} holds other trainable tensors than this model has; it belongs to another "
            "configuration. Start without --resume or use another --out."
        )
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]) + 1, [EpochStats(**h) for h in state["history"]]


def write_history(path: Path, history: list[dict]) -> Path:
    """The per-epoch loss and validation Dice as JSON (what a user plots)."""
    text = json.dumps({"epochs": history}, indent=1)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text, "utf-8"))


def base_checkpoint_sha256(checkpoint: str | Path | None) -> str:
    """SHA-256 of the base weights the adapters were trained on ('' for a random init)."""
    from sam2refine.sam.weights import sha256_file

    return "" if checkpoint is None else sha256_file(checkpoint)


def save_final_adapters(model: torch.nn.Module, path: Path, config: FinetuneConfig,
                        base_sha256: str) -> Path:
    """The run's result: the adapters (and decoder, if trained) as a safetensors file."""
    from sam2refine.sam.adapter_files import save_adapters

    save_adapters(model, path, base_model_name=config.model_name,
                  base_checkpoint_sha256=base_sha256, image_size=config.image_size)
    return Path(path)
