"""Named tables of interchangeable pieces (losses, augmentations, metrics, formats, ...).

A set of choices lives in one `Registry` beside the code that implements it; adding a choice
is one decorated function, and the config accepts exactly the names registered (`choice()`),
so a typo fails when the config loads instead of after an hour of training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")


class Registry(Generic[T]):
    """`name -> object` in registration order; `kind` names the set in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@LOSSES.register("bce")` adds the function under that name."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(self._unknown(name)) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def _unknown(self, name: object) -> str:
        return f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}"

    def check(self, name: str) -> str:
        if name not in self._entries:
            raise ValueError(self._unknown(name))
        return name

    def choice(self) -> type[str]:
        """A config field type: a string that must be one of the registered names."""
        return Annotated[str, AfterValidator(self.check)]  # type: ignore[return-value]
