"""`sam2refine serve`: the engine as an HTTP server (Slicer's remote mode)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from sam2refine.runtime import DEVICES
    from sam2refine.sam.model import SUPPORTED_IMAGE_SIZES

    serve = subparsers.add_parser("serve", help="run the engine as an HTTP server (Slicer's "
                                  "remote mode); loopback only unless a token is given")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; anything but 127.0.0.1 needs a token")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token", help="access token clients must send as a bearer token "
                                       "(default: $SAM2REFINE_TOKEN)")
    serve.add_argument("--model", default="sam2.1_hiera_tiny")
    serve.add_argument("--checkpoint", help="local checkpoint; default: official weights")
    serve.add_argument("--adapters", metavar="FILE",
                       help="fine-tuned adapters (.safetensors) trained on this checkpoint")
    serve.add_argument("--image-size", type=int, default=1024, choices=SUPPORTED_IMAGE_SIZES)
    serve.add_argument("--device", default="auto", choices=DEVICES)

    def _serve(args: argparse.Namespace) -> int:
        import os

        from sam2refine.remote.server import serve as run_server

        token = args.token or os.environ.get("SAM2REFINE_TOKEN") or None
        run_server(args.host, args.port, token, args.model, args.image_size, args.checkpoint,
                   args.device, adapters=args.adapters)
        return 0

    serve.set_defaults(run=_serve)
