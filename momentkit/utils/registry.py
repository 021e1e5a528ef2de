"""A name -> object registry, as detectron2 uses for models, datasets and evaluators."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes or factories).

    Example::

        MODELS = Registry("model")

        @MODELS.register("moment_detr")
        class MomentDETR: ...

        MODELS.get("moment_detr")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name`` (names are unique)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as ``name``; a KeyError lists the known names."""
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name read from a file
            known = ", ".join(sorted(self._items)) or "(none)"
            shown = name if isinstance(name, str) else repr(name)
            raise KeyError(f"unknown {self.kind} '{shown}'; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)
