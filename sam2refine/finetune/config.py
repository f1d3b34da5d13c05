"""What a fine-tuning run is told (its settings, the CLI's options) and what each epoch reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (the CLI's options, with their defaults)."""

    dataset: Path
    out_dir: Path
    model_name: str = "sam2.1_hiera_tiny"
    checkpoint: Path | None = None
    image_size: int = 512
    clip_length: int = 8
    epochs: int = 10
    steps_per_epoch: int | None = None  # default: one pass over the training items
    lr: float = 1e-4
    weight_decay: float = 0.01
    bottleneck: int = 16  # adapter width (memory-attention adapters get twice this)
    train_decoder: bool = False
    grad_checkpointing: bool = False
    resume: bool = False
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.2
    correction_rounds: int = 2
    mask_only_prob: float = 0.25
    intensity: str = "ct"
    progress: bool = True


@dataclass
class EpochStats:
    epoch: int
    steps: int
    train_loss: float
    val_dice: float | None
    seconds: float
    losses: list[float] = field(default_factory=list)  # rank 0's loss of every step
