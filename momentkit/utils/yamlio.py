"""YAML parsing with limits: no recursive anchors, no alias bombs, no unbounded nesting.

``yaml.safe_load`` builds a recursive anchor (``a: &x [*x]``) as a self-containing list, which
later code walks forever, and shares the values of nested aliases, which expand exponentially
when a config is copied or written back. :func:`parse_yaml` composes the document first and
refuses both, naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from momentkit.utils.errors import FormatError

#: most values a YAML document may expand to once its aliases are followed (a config is a few
#: hundred)
MAX_YAML_VALUES = 100_000


def check_yaml_size(root: yaml.Node | None, source: str | Path | None) -> None:
    """Refuse a recursive anchor, or aliases expanding to more than :data:`MAX_YAML_VALUES`.

    Raises:
        FormatError: naming ``source`` and the line of the offending value.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in active:
            raise FormatError(
                source,
                node.start_mark.line + 1,
                None,
                "recursive YAML anchor (an alias refers to a value that contains it)",
                "Remove the alias, or copy the values it should repeat",
            )
        if key in sizes:
            return sizes[key]
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v) for v in node.value)
        active.discard(key)
        if total > MAX_YAML_VALUES:
            raise FormatError(
                source,
                node.start_mark.line + 1,
                None,
                f"YAML aliases expand to more than {MAX_YAML_VALUES} values",
                "A config holds a few hundred values; remove the nested aliases",
            )
        sizes[key] = total
        return total

    if root is not None:
        size(root)


def parse_yaml(text: str, source: str | Path | None = None) -> tuple[Any, yaml.Node | None]:
    """``(value, node)`` of a YAML document, checked by :func:`check_yaml_size`.

    Raises:
        FormatError: invalid YAML, a recursive anchor, an alias bomb or nesting too deep,
            naming ``source`` and the line.
    """
    try:
        node = yaml.compose(text)
        check_yaml_size(node, source)
        return yaml.safe_load(text), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise FormatError(
            source, line, None, f"invalid YAML: {getattr(e, 'problem', None) or e}"
        ) from None
    except RecursionError:
        raise FormatError(
            source, None, None, "YAML nested too deeply", "Write a flat mapping of sections"
        ) from None


def parse_yaml_value(text: str, source: str | Path = "--set") -> Any:
    """A YAML value given on the command line (``--set key=[1, 2]``), checked the same way."""
    return parse_yaml(text, source)[0]


__all__ = ["MAX_YAML_VALUES", "check_yaml_size", "parse_yaml", "parse_yaml_value"]
