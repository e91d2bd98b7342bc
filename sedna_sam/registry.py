"""Name -> class registries, in the spirit of Sedna's ClassFactory.

An algorithm (corner-case scorer, semantic backend, labeler) is a class registered under
a name and chosen by configuration, so adding one never means adding an ``if`` to a
pipeline::

    SCORERS = Registry("corner-case scorer")

    @SCORERS.register("msp")
    class MaxSoftmaxScorer: ...

    scorer = SCORERS.create("msp", threshold=0.5)
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from sedna_sam.errors import SednaSamError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = cls
            return cls

        return add

    def get(self, name: str) -> type[T]:
        try:
            return self._items[name]
        except KeyError:
            raise SednaSamError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **params: Any) -> T:
        return self.get(name)(**params)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
