"""A name -> object registry, used for models, strategies and replay-selection policies.

Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... class Tiny: ...
    >>> MODELS.get("tiny") is Tiny
    True
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from forgesweep.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects; unknown names fail listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``.

        Raises:
            ValueError: if ``name`` is already taken (two files claiming one name is a bug).
        """

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            UserError: naming the unknown ``name`` and listing the known ones.
        """
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UserError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
