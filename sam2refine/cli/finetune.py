"""`sam2refine finetune`: train adapters for SAM 2 on an nnU-Net-format dataset.

Several GPUs: `torchrun --nproc_per_node N -m sam2refine finetune ...` (each process
takes its share of the clips; the first one writes the files).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("sam2refine")


def register(subparsers: argparse._SubParsersAction) -> None:
    from sam2refine.runtime import DEVICES
    from sam2refine.sam.model import SUPPORTED_IMAGE_SIZES

    ft = subparsers.add_parser(
        "finetune", help="fine-tune SAM 2 adapters on an nnU-Net-format dataset",
        description="Fine-tune small adapters (and optionally the mask decoder) of a SAM 2.1 "
                    "model with simulated box, click and mask prompts. Writes checkpoint.pt "
                    "each epoch, history.json and finally adapters.safetensors into --out.")
    ft.add_argument("dataset", metavar="DATASET",
                    help="dataset folder in nnU-Net raw format (dataset.json, imagesTr, "
                         "labelsTr)")
    ft.add_argument("--model", default="sam2.1_hiera_tiny")
    ft.add_argument("--checkpoint", help="base weights; default: download the official ones")
    ft.add_argument("--out", required=True, help="output folder")
    ft.add_argument("--image-size", type=int, default=512, choices=SUPPORTED_IMAGE_SIZES)
    ft.add_argument("--clip-length", type=int, default=8,
                    help="consecutive slices per training clip (default 8)")
    ft.add_argument("--epochs", type=int, default=10)
    ft.add_argument("--steps-per-epoch", type=int,
                    help="clips per epoch and process (default: one pass over the organs)")
    ft.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamW)")
    ft.add_argument("--bottleneck", type=int, default=16,
                    help="adapter width (memory attention gets twice this); 0 = no adapters")
    ft.add_argument("--train-decoder", action="store_true",
                    help="also train the mask decoder's own weights")
    ft.add_argument("--grad-checkpointing", action="store_true",
                    help="recompute image-encoder activations (less memory, slower)")
    ft.add_argument("--resume", action="store_true",
                    help="continue from --out/checkpoint.pt")
    ft.add_argument("--val-fraction", type=float, default=0.2,
                    help="share of the cases kept for validation (0: none)")
    ft.add_argument("--intensity", default="ct", help="intensity preset (ct, ct-<window>, mr)")
    ft.add_argument("--device", default="auto", choices=DEVICES)
    ft.add_argument("--seed", type=int, default=0)
    ft.set_defaults(run=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from sam2refine.errors import SAM2RefineError
    from sam2refine.finetune.config import FinetuneConfig
    from sam2refine.finetune.train import finetune

    for name in ("clip_length", "epochs"):
        if getattr(args, name) < 1:
            raise SAM2RefineError(f"--{name.replace('_', '-')} must be at least 1.")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise SAM2RefineError("--steps-per-epoch must be at least 1.")
    if not 0.0 <= args.val_fraction < 1.0:
        raise SAM2RefineError("--val-fraction must be at least 0 and below 1.")
    if args.bottleneck < 0:
        raise SAM2RefineError("--bottleneck must be 0 or more.")
    if args.bottleneck == 0 and not args.train_decoder:
        raise SAM2RefineError("--bottleneck 0 trains no adapters: add --train-decoder, or give "
                              "a bottleneck width such as 16.")
    config = FinetuneConfig(
        dataset=Path(args.dataset), out_dir=Path(args.out), model_name=args.model,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        image_size=args.image_size, clip_length=args.clip_length, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, lr=args.lr, bottleneck=args.bottleneck,
        train_decoder=args.train_decoder, grad_checkpointing=args.grad_checkpointing,
        resume=args.resume, device=args.device, seed=args.seed,
        val_fraction=args.val_fraction, intensity=args.intensity,
    )
    result = finetune(config)
    if result.adapters is not None:
        last = result.history[-1] if result.history else None
        dice = "n/a" if last is None or last.val_dice is None else f"{last.val_dice:.4f}"
        log.info("Wrote %s (%d trained parameters, %.3f %% of %d); last validation Dice %s",
                 result.adapters, result.trained_params,
                 100.0 * result.trained_params / result.total_params, result.total_params, dice)
    return 0
