"""A name -> object table with a decorator to fill it: the one shape behind the phase kinds
(train.phases), the schedule presets (train.schedule) and the LR schedules (train.lr_schedule).

It reads as a mapping (iterating gives the names in registration order, `name in registry`,
`registry[name]`), and an unknown name is refused with the list of known ones.
"""
from __future__ import annotations

from collections.abc import Mapping


class Registry(Mapping):
    def __init__(self, what: str):
        self.what = what  # e.g. "phase kind", for messages
        self._items: dict = {}

    def register(self, name: str, obj=None):
        """`register(name, obj)`, or `@registry.register(name)` above a function or class. A name is
        registered once: a second registration under it is an error, not a silent replacement."""
        if obj is None:
            return lambda o: self.register(name, o)
        if not isinstance(name, str) or not name or ":" in name or "," in name:
            raise ValueError(f"{self.what} name must be a non-empty string without ':' or ',', got {name!r}")
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Drops `name` (for tests that register a temporary entry)."""
        del self._items[name]

    def __getitem__(self, name: str):
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}: use one of {', '.join(self._items)}") from None

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self._items)})"
