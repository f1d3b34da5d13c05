"""`sam2refine` command line: segment a volume from prompts, export, manage weights."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sam2refine.errors import SAM2RefineError

log = logging.getLogger("sam2refine")
# The commands, each a module with `register(subparsers)`, in the order `--help` lists them.
_COMMAND_MODULES = ("sam2refine.cli.segment", "sam2refine.cli.weights",
                    "sam2refine.cli.export", "sam2refine.cli.serve", "sam2refine.cli.auto",
                    "sam2refine.cli.data", "sam2refine.cli.evaluate",
                    "sam2refine.cli.finetune", "sam2refine.cli.promptgen")


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line, like every other error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"sam2refine: error: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors become one line on stderr and exit status 2, never a traceback."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except SAM2RefineError as exc:
        print(f"sam2refine: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sam2refine: interrupted; nothing was written.", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sam2refine", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
