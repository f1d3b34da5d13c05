"""`sam2refine serve`: the engine as an HTTP server (Slicer's remote mode)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from sam2refine.cli.options import add_model_arguments
    from sam2refine.cli.values import port

    serve = subparsers.add_parser("serve", help="run the engine as an HTTP server (Slicer's "
                                  "remote mode); loopback only unless a token is given")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; anything but 127.0.0.1 needs a token")
    serve.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--token", help="access token clients must send as a bearer token "
                                       "(default: $SAM2REFINE_TOKEN)")
    add_model_arguments(serve)

    def _serve(args: argparse.Namespace) -> int:
        import os

        from sam2refine.remote.server import serve as run_server

        token = args.token or os.environ.get("SAM2REFINE_TOKEN") or None
        run_server(args.host, args.port, token, args.model, args.image_size, args.checkpoint,
                   args.device, adapters=args.adapters)
        return 0

    serve.set_defaults(run=_serve)
