"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import math
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


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (``high`` None: no upper bound);
    anything else is a usage error that names the option and the bounds (``argument --port:
    must be an integer in [1, 65535], got '0'``)."""
    wanted = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted.removeprefix("an ")  # argparse names the type in some messages
    return parse


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum`` (``argument --clips: must be an integer
    >= 1, got '0'``)."""
    return int_in_range(minimum)


def in_range(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in the interval from ``low`` to ``high`` (each end
    included unless ``low_open`` / ``high_open``); NaN, infinities and anything else are a usage
    error naming the option and the interval (``argument --min-score: must be a number in
    [0, 1], got '1.5'``). An infinite ``low`` or ``high`` leaves that side unbounded:
    ``in_range(0, low_open=True)`` is a number > 0."""
    if math.isinf(low) and math.isinf(high):
        wanted = "a finite number"
    elif math.isinf(high):
        wanted = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif math.isinf(low):
        wanted = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        wanted = f"a number in {left}{low:g}, {high:g}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted  # argparse names the type in some messages
    return parse


#: a finite number > 0 (seconds, sizes, rates)
positive_float = in_range(0.0, low_open=True)
#: a finite number >= 0
non_negative_float = in_range(0.0)
#: a probability, relevance or threshold: a number in [0, 1]
unit_interval = in_range(0.0, 1.0)


def check_model_name(name: str | None, option: str = "--model") -> None:
    """Refuse an unknown ``--model`` before anything else reads it (a preset lookup would say
    "no preset for model X" instead of that the model does not exist).

    Raises:
        ConfigError: naming the option and listing the known models.
    """
    if name is None:
        return
    from momentkit.models import MODELS
    from momentkit.training.config import ConfigError

    if name not in MODELS:
        raise ConfigError(
            None, None, option, f"unknown model '{name}'", f"Known: {', '.join(MODELS.names())}"
        )


def add_max_clips_argument(
    parser: argparse.ArgumentParser, default: int, action: str, note: str = ""
) -> None:
    """``--max-clips N`` (0: no limit), checked before decoding: a file of a few frames may
    declare a duration of years. ``action``: what the command does with such videos ("refuse
    a video", "skip (and report) videos", ...); ``note``: a sentence added to the help."""
    hours = default * 2 / 3600
    parser.add_argument(
        "--max-clips",
        type=at_least(0),
        default=default,
        metavar="N",
        help=f"{action} of more clips than this, before decoding: a file of a few frames may "
        f"declare a duration of years (default {default}, {hours:g} h of 2 s clips; 0: no "
        f"limit){'. ' + note if note else ''}",
    )
