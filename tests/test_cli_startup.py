"""Start-up cost of the ``momentkit`` command: building its parser imports no heavy library."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "av", "transformers", "scipy", "faiss", "matplotlib")


def _modules_after(code: str) -> set[str]:
    """Top-level module names imported by running ``code`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print('MODULES', *sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("MODULES "))
    return {name.split(".")[0] for name in line.split()[1:]}


def test_building_every_parser_imports_no_heavy_library() -> None:
    """The whole parser, every subcommand and every benchmark included (argument set-up runs)."""
    loaded = _modules_after(
        "from momentkit.cli.main import build_parser\n"
        "p = build_parser()\n"
        "for cmd in ('bench train', 'bench probe', 'bench long-video', 'bench search'):\n"
        "    try:\n"
        "        p.parse_args([*cmd.split(), '--help'])\n"
        "    except SystemExit:\n"
        "        pass"
    )
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["evaluate", "--help"]])
def test_version_and_help_import_no_heavy_library(argv: list[str]) -> None:
    loaded = _modules_after(
        "from momentkit.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    )
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_only_the_chosen_command_builds_its_arguments() -> None:
    from momentkit.cli.main import build_parser

    parser = build_parser("evaluate")
    args = parser.parse_args(["evaluate", "p.jsonl", "g.jsonl"])
    assert args.command == "evaluate"
    with pytest.raises(SystemExit):  # `train` was not built: its options are unknown
        parser.parse_args(["train", "--model", "qd_detr"])
