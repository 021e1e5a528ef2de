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
    "convert": "convert",
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand.

    ``command`` given: only that subcommand's arguments are built (the others are listed with
    their one-line help), so ``momentkit --version`` and ``momentkit evaluate ...`` do not pay
    for the argument set-up of every other command. No command module imports torch, numpy or
    av at import time or while adding its arguments (``tests/test_cli_startup.py``).
    """
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
        if command is None or command == name:
            module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named by ``argv`` (its first non-option word), or None."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else ""
    return "" if argv else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``momentkit`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
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
        if isinstance(e, OSError | UnicodeError):  # file system and encoding: name the path
            from momentkit.utils.errors import describe_os_error

            print(f"momentkit {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
