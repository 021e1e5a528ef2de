"""`momentkit bench` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse

HELP = "bench (not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments yet."""


def run(args: argparse.Namespace) -> int:
    """Not implemented yet."""
    raise NotImplementedError("momentkit bench is not implemented yet")
