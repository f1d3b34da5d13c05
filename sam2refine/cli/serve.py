"""`sam2refine serve`: the engine as an HTTP server (Slicer's remote mode and its local engine
process)."""

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
    serve.add_argument("--stop-on-stdin-eof", action="store_true",
                       help="stop when standard input closes, i.e. when the program that "
                            "started this server (Slicer) exits, even if it crashed")
    serve.add_argument("--no-access-log", action="store_true",
                       help="do not log every request (a client polling jobs makes many)")
    add_model_arguments(serve)

    def _serve(args: argparse.Namespace) -> int:
        import os

        from sam2refine.remote.server import serve as run_server

        if args.stop_on_stdin_eof:
            stop_when_stdin_closes()
        if args.no_access_log:
            import logging

            # uvicorn reconfigures this logger's level and handlers, but keeps its filters
            logging.getLogger("uvicorn.access").addFilter(lambda record: False)
        token = args.token or os.environ.get("SAM2REFINE_TOKEN") or None
        run_server(args.host, args.port, token, args.model, args.image_size, args.checkpoint,
                   args.device, adapters=args.adapters)
        return 0

    serve.set_defaults(run=_serve)


def stop_when_stdin_closes(grace_s: float = 10.0) -> None:
    """Watch standard input from a daemon thread: at its end (the parent closed it, or died),
    interrupt the main thread as Ctrl+C would (the server shuts down cleanly), and leave for
    good if that has not ended the process within `grace_s`."""
    import os
    import signal
    import sys
    import threading
    import time

    def watch() -> None:
        try:  # the raw descriptor: a buffered reader's lock would abort interpreter shutdown
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except (OSError, ValueError):
            pass
        signal.raise_signal(signal.SIGINT)
        time.sleep(grace_s)
        os._exit(0)

    threading.Thread(target=watch, name="sam2refine-stdin-watch", daemon=True).start()
