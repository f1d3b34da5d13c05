"""`sam2refine make-phantoms`: write a synthetic CT dataset in nnU-Net raw format."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("sam2refine")


def register(subparsers: argparse._SubParsersAction) -> None:
    from sam2refine.cli.values import positive_int

    cmd = subparsers.add_parser(
        "make-phantoms",
        help="write synthetic abdominal CT phantoms with organ labels (nnU-Net raw format)",
    )
    cmd.add_argument("out_dir", metavar="OUT_DIR", help="dataset folder to create")
    cmd.add_argument("--cases", type=positive_int, default=10, help="number of cases (default 10)")
    cmd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    cmd.add_argument("--shape", type=positive_int, nargs=3, metavar=("K", "J", "I"),
                     help="voxels along k (slices), j (rows), i (columns); default 48 80 96")
    cmd.set_defaults(run=_make_phantoms)


def _make_phantoms(args: argparse.Namespace) -> int:
    from sam2refine.datasets.phantoms import (
        DEFAULT_SHAPE_KJI,
        PHANTOM_ORGANS,
        write_phantom_dataset,
    )

    shape = tuple(args.shape) if args.shape else DEFAULT_SHAPE_KJI
    out = write_phantom_dataset(args.out_dir, args.cases, seed=args.seed, shape_kji=shape)
    log.info("Wrote %d phantom cases (%s) to %s", args.cases, ", ".join(PHANTOM_ORGANS), out)
    return 0
