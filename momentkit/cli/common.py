"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse


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
