"""Entry point of the ``momentkit`` command.

Each subcommand lives in its own module ``momentkit.cli.<name>`` exposing::

    HELP: str                                   # one line for ``momentkit --help``
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int    # exit status

Command modules import heavy dependencies (torch, av, ...) inside ``run`` so that
``momentkit --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from momentkit import __version__

# subcommand name -> module under momentkit.cli (kept in the order shown by --help)
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "synth": "synth",
    "pack": "pack",
    "evaluate": "evaluate",
    "train": "train",
    "predict": "predict",
    "cotrain": "cotrain",
    "augment": "augment",
    "pseudo-label": "pseudo_label",
    "extract": "extract",
    "search": "search",
    "index": "index",
    "query": "query",
    "serve": "serve",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="momentkit",
        description="Find moments in videos from natural-language queries: moment retrieval, "
        "highlight detection and temporal action detection.",
    )
    parser.add_argument("--version", action="version", version=f"momentkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"momentkit.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``momentkit`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user-facing errors: one clear line, no traceback
        from momentkit.utils.errors import MomentkitError

        if isinstance(e, MomentkitError | FileNotFoundError):
            print(f"momentkit {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
