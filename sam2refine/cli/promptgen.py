"""`sam2refine train-prompt-generator`: train the U-Net that proposes organs to SAM 2.

Several GPUs: `torchrun --nproc_per_node N -m sam2refine train-prompt-generator ...`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("sam2refine")


def register(subparsers: argparse._SubParsersAction) -> None:
    from sam2refine.promptgen.train import TrainSettings
    from sam2refine.runtime import DEVICES

    d = TrainSettings(dataset=Path(), out=Path())  # the defaults live in TrainSettings
    p = subparsers.add_parser(
        "train-prompt-generator",
        help="train the U-Net prompt generator on an nnU-Net dataset (multi-GPU: torchrun)")
    p.add_argument("dataset", metavar="DATASET",
                   help="nnU-Net v2 dataset folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for last.pt, best.pt, history.json and the data cache")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                   help=f"batches per epoch (default {d.steps_per_epoch}; 0: one pass over "
                        "all training slices)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="slices per batch "
                   "and process")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (poly decay)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of cases held out for the per-epoch validation Dice")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, choices=DEVICES)
    p.add_argument("--resume", metavar="CKPT", help="continue from a last.pt or best.pt")
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="side of the square training crops in pixels at the training spacing "
                        "(a multiple of 16)")
    p.add_argument("--channels", default=",".join(map(str, d.channels)),
                   help="U-Net feature channels per level, e.g. 16,32,64,128,256")
    p.add_argument("--context", type=int, default=d.context,
                   help="neighbouring slices on each side given as extra input channels")
    p.add_argument("--intensity", default=d.intensity, help="intensity preset (ct, mr, ...)")
    p.add_argument("--workers", type=int, default=d.num_workers, help="data loader processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from sam2refine.errors import SAM2RefineError
    from sam2refine.promptgen.train import TrainSettings, train_prompt_generator

    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise SAM2RefineError(f"--{name.replace('_', '-')} must be at least 1.")
    if not 0.0 < args.val_fraction < 1.0:
        raise SAM2RefineError("--val-fraction must be above 0 and below 1.")
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError as exc:
        raise SAM2RefineError(f"--channels {args.channels!r}: give integers like "
                              "16,32,64,128,256.") from exc
    settings = TrainSettings(
        dataset=Path(args.dataset), out=Path(args.out), epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch or None, batch_size=args.batch_size, lr=args.lr,
        val_fraction=args.val_fraction, seed=args.seed, device=args.device,
        resume=Path(args.resume) if args.resume else None, image_size=args.image_size,
        context=args.context, channels=channels, strides=(2,) * (len(channels) - 1),
        intensity=args.intensity, num_workers=args.workers, show_progress=not args.no_progress)
    result = train_prompt_generator(settings)
    if result.history:
        mean = result.history[-1].get("mean_dice")
        log.info("Wrote %s%s; last validation Dice %s", result.last,
                 f" and {result.best}" if result.best else "",
                 "n/a" if mean is None else f"{mean:.3f}")
    return 0
