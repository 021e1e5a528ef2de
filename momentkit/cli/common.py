"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_set_argument(parser: argparse.ArgumentParser, help: str, dest: str = "overrides") -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]`` (repeatable; values collect into ``args.<dest>``)."""
    parser.add_argument(
        "--set",
        dest=dest,
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum``; anything else is a usage error that
    names the option and the bound (``argument --clips: must be an integer >= 1, got '0'``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some messages
    return parse
