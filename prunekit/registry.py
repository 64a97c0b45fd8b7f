"""Registries by decorator, one per taxonomy axis.

A registry maps a name to an object (a function, a class or an instance) and a one-line description.
Every public function that takes a registered thing accepts either its name or the object itself;
:meth:`Registry.resolve` does that conversion once, at the edge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from prunekit.errors import ConfigError, UnknownNameError

T = TypeVar("T")

__all__ = ["Entry", "Registry"]


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered part: its lower-case ``name``, the object ``obj`` and a one-line ``description``.

    An alias is an entry of its own whose description reads ``"alias of <name>"``.
    """

    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """A named collection of interchangeable parts (methods, criteria, allocations, ...)."""

    def __init__(self, kind: str, validate: Callable[[str, T], None] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._validate = validate

    def register(self, name: str, description: str = "", *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name", "one line")`` registers the decorated object."""

        def deco(obj: T) -> T:
            self.add(name, obj, description, aliases=aliases)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str = "", *, aliases: tuple[str, ...] = ()) -> None:
        """Register ``obj`` under ``name`` (and each of ``aliases``); names are case-insensitive.

        Without ``description`` the object's ``description`` attribute is used, else the first line of its
        docstring. Raises :class:`~prunekit.errors.ConfigError` when a name is already taken, and whatever the
        registry's ``validate`` callable raises for an object it refuses.
        """
        if not description:
            description = str(getattr(obj, "description", "") or "")
        if not description:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        keys = [k.lower() for k in (name, *aliases)]
        for key in keys:  # everything is checked before anything is registered
            if key in self._entries or keys.count(key) > 1:
                raise ConfigError(
                    f"{self.kind} name {key!r} is already taken; choose another name"
                    + (" or alias" if aliases else "")
                    + (f" (remove the existing one first with .remove({key!r}))" if key in self._entries else "")
                )
            if self._validate is not None:
                self._validate(key, obj)
        for key in keys:
            self._entries[key] = Entry(key, obj, description if key == name.lower() else f"alias of {name}")

    def remove(self, name: str) -> None:
        """Unregister ``name`` and every alias of it (an alias given as ``name`` removes only itself).

        Raises :class:`~prunekit.errors.UnknownNameError`, listing the registered names, when there is none.
        """
        key = name.lower() if isinstance(name, str) else name
        if key not in self._entries:
            raise UnknownNameError(self.kind, str(name), self._entries)
        entry = self._entries.pop(key)
        aliases = [
            k for k, e in self._entries.items() if e.obj is entry.obj and e.description.lower() == f"alias of {key}"
        ]
        for alias in aliases:
            del self._entries[alias]

    def get(self, name: str) -> T:
        """The object registered under ``name`` (case-insensitive).

        Raises :class:`~prunekit.errors.UnknownNameError`, listing the registered names, when there is none.
        """
        try:
            return self._entries[name.lower()].obj
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def resolve(self, value: str | T) -> T:
        """A registered name becomes its object; anything else is returned as it is."""
        return self.get(value) if isinstance(value, str) else value

    def names(self) -> list[str]:
        """Every registered name and alias, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        """Every :class:`Entry` (aliases included), sorted by name."""
        return [self._entries[k] for k in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
