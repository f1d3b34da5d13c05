"""`sam2refine weights`: list or download the official SAM 2.1 weights."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    weights = sub.add_parser("weights", help="list or download the official SAM 2.1 weights")
    weights.add_argument("action", choices=("list", "download"))
    weights.add_argument("name", nargs="?", default="sam2.1_hiera_tiny")
    weights.set_defaults(run=_weights)


def _weights(args: argparse.Namespace) -> int:
    from sam2refine.sam.weights import cache_dir, load_catalogue, resolve_checkpoint

    if args.action == "list":
        for name, entry in sorted(load_catalogue().items()):
            size = f"{entry.size_bytes / 1e6:.0f} MB" if entry.size_bytes else "size unknown"
            print(f"{name:26s} {size:>10s}  {entry.url}")
        print(f"cache: {cache_dir()}")
        return 0
    print(resolve_checkpoint(args.name, None))
    return 0
