"""A small name -> factory registry shared by QForms, likelihoods, Fisher methods and layer adapters."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps keys (names, or module types for layer adapters) to factories.

    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square")
    ... class Square: ...
    >>> SHAPES.build("square")  # doctest: +ELLIPSIS
    <...Square object at ...>
    """

    _instances: ClassVar[weakref.WeakSet[Registry[Any]]] = weakref.WeakSet()

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[Hashable, T] = {}
        Registry._instances.add(self)

    @classmethod
    def instances(cls) -> list[Registry[Any]]:
        """Every registry alive (QForms, likelihoods, layer adapters, Fisher methods, ...)."""
        return list(cls._instances)

    def register(self, key: Hashable, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator registering ``factory`` under ``key``.

        Args:
            key: a name (or, for layer adapters, a module type); hashable.
            replace: allow replacing a factory already registered under ``key``.

        Returns:
            The decorator, which registers its argument and returns it unchanged.

        Raises:
            TypeError: ``key`` is not hashable.
            ValueError: (when decorating) ``key`` is already registered and ``replace`` is False.
        """
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"{self.kind} key must be hashable (a name or a type), got {type(key).__name__}") from None

        def decorator(factory: T) -> T:
            if key in self._entries and not replace:
                raise ValueError(f"{self.kind} {_label(key)!r} is already registered; pass replace=True to override it")
            self._entries[key] = factory
            return factory

        return decorator

    def unregister(self, key: Hashable) -> T:
        """Remove and return the factory registered under ``key`` (an unknown key raises like ``get``)."""
        factory = self.get(key)
        del self._entries[key]
        return factory

    def items(self) -> list[tuple[Hashable, T]]:
        """(key, factory) pairs in registration order."""
        return list(self._entries.items())

    def get(self, key: Hashable) -> T:
        """The factory registered under ``key``; an unknown key raises a ``KeyError`` listing the known ones."""
        try:
            return self._entries[key]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.kind} {_label(key)!r}; known: {', '.join(self.names()) or '(none)'}"
            ) from None

    def build(self, key: Hashable, **kwargs: Any) -> Any:
        """Instantiate the factory registered under ``key`` with ``kwargs``; an option the factory does not
        take raises a ``TypeError`` naming it and the options it takes."""
        factory = self.get(key)
        try:
            signature = inspect.signature(factory)  # type: ignore[arg-type]
        except (TypeError, ValueError):  # no signature to check against (some builtins)
            signature = None
        if signature is not None:
            try:
                signature.bind(**kwargs)
            except TypeError as error:
                raise TypeError(
                    f"{self.kind} {_label(key)!r}: {error}; it takes: {', '.join(signature.parameters) or '(nothing)'}"
                ) from None
        return factory(**kwargs)  # type: ignore[operator]

    def name_of(self, factory: T) -> str | None:
        """The name ``factory`` is registered under (the first, if several), or None."""
        return next((_label(key) for key, entry in self._entries.items() if entry is factory), None)

    def names(self) -> list[str]:
        """The registered keys as readable names, in registration order."""
        return [_label(key) for key in self._entries]

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def named_options(spec: Any, name_key: str) -> tuple[str, dict[str, Any]] | None:
    """(name, options) of a choice given as a name or as a mapping {name_key: name, **options}; None when
    ``spec`` is neither."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get(name_key), str):
        options = dict(spec)
        return options.pop(name_key), options
    return None


class UnknownNameError(KeyError, ValueError):
    """Raised for a name no registry knows; a ``KeyError`` and a ``ValueError`` at once."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _label(key: Hashable) -> str:
    return key.__name__ if isinstance(key, type) else str(key)
