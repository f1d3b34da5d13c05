"""Options shared by the commands that run SAM 2 (`segment`, `auto`, `serve`), defined once."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --checkpoint, --adapters, --image-size, --device."""
    from sam2refine.runtime import DEVICES
    from sam2refine.sam.model import SUPPORTED_IMAGE_SIZES

    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--checkpoint",
                        help="local checkpoint; default: the official weights (downloaded once)")
    parser.add_argument("--adapters", metavar="FILE",
                        help="fine-tuned adapters (.safetensors from `finetune`) trained on this "
                             "model and checkpoint")
    parser.add_argument("--image-size", type=int, default=1024, choices=SUPPORTED_IMAGE_SIZES)
    parser.add_argument("--device", default="auto", choices=DEVICES)


def model_from_arguments(args: argparse.Namespace):  # noqa: ANN201 - torch loads lazily
    """The model the options ask for, through the one loader."""
    from sam2refine.sam.model import load_model

    return load_model(args.model, args.image_size, args.checkpoint, args.device,
                      adapters=args.adapters)
