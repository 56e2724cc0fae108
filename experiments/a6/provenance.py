"""What a cached result depends on besides its settings: the code that computed it and the torch version.

Two hashes, both in every cache key of the study:

- ``library_hash()``: SHA-256 of the source files of the ``fishleg_core`` and ``experiments`` packages, read
  when this module is first imported (so it describes the code that this process runs). The whole of both
  packages is hashed, not only the fitting and evaluation files: simplest, and never too little.
- ``code_hash(*objects)``: SHA-256 of the compiled code of classes and functions that may live outside the
  library (a user's QForm in a plugin file, a script or a notebook cell): for a class, every method,
  property and plain class attribute of the class and its bases outside torch and the standard library;
  for a function, its code, defaults and closure, and the module-level names it uses (numbers, strings,
  tensors and containers of them by value; functions and classes of the same module followed in turn;
  private mutable containers, ``_CACHE: dict``, by type only: they are run-time state, such as the set of
  warnings already given, and would change the hash after the first use).
  Compiled code, not source text, so that a method replaced at run time (a monkeypatch, a notebook cell
  run again) changes the hash, and an edited file that was not re-imported does not.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import fishleg_core

LIBRARY_PACKAGES = (Path(fishleg_core.__file__).parent, Path(__file__).parents[1])
"""The packages whose source files ``library_hash`` covers: ``fishleg_core`` and ``experiments``."""

_SKIPPED_MODULES = ("builtins", "abc", "typing", "torch")
"""Top-level modules whose classes are not hashed as bases (torch is covered by its version)."""


def source_tree_hash(roots: tuple[Path, ...]) -> str:
    """SHA-256 (16 hex digits) of every ``*.py`` file under ``roots``: relative path and content, sorted."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


_LIBRARY_HASH = source_tree_hash(LIBRARY_PACKAGES)


def library_hash() -> str:
    """The hash of the library's source (``fishleg_core`` and ``experiments``) as imported by this process."""
    return _LIBRARY_HASH


def environment() -> dict[str, str]:
    """The code-and-platform part of every cache key: the library's source hash and torch's version."""
    return {"library": library_hash(), "torch": torch.__version__, "python": sys.version.split()[0]}


def code_hash(*objects: Any) -> str:
    """SHA-256 (16 hex digits) of the compiled code of ``objects`` (classes, functions) and of the classes
    and functions of their own modules that they refer to by name; see the module docstring."""
    digest = hashlib.sha256()
    seen: set[int] = set()
    for obj in objects:
        _feed_object(obj, digest.update, seen)
    return digest.hexdigest()[:16]


def _feed_object(obj: Any, feed: Callable[[bytes], None], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, type):
        for cls in obj.__mro__:
            if cls is object or cls.__module__.partition(".")[0] in _SKIPPED_MODULES:
                continue
            feed(f"class {cls.__module__}.{cls.__qualname__}\0".encode())
            for name, value in sorted(vars(cls).items()):
                _feed_attribute(name, value, feed, seen)
    elif isinstance(obj, types.FunctionType):
        feed(f"function {obj.__module__}.{obj.__qualname__}\0".encode())
        _feed_code(obj.__code__, feed)
        feed(_stable_repr((obj.__defaults__, obj.__kwdefaults__)).encode())
        for cell in obj.__closure__ or ():
            _feed_value(cell.cell_contents, feed, seen)
        for name in sorted(_names(obj.__code__) & obj.__globals__.keys()):  # the module-level names it uses
            used = obj.__globals__[name]
            feed(f"global {name}\0".encode())
            if _is_code(used) and getattr(used, "__module__", None) == obj.__module__:
                _feed_object(used, feed, seen)
            elif name.startswith("_") and isinstance(used, (set, list, dict)):
                feed(f"state {type(used).__name__}\0".encode())  # run-time state (a cache), not configuration
            else:
                feed(_stable_repr(used).encode())
    elif isinstance(obj, functools.partial):
        _feed_value(obj.func, feed, seen)
        feed(_stable_repr((obj.args, obj.keywords)).encode())
    else:  # a builtin or another callable object
        feed(_stable_repr(obj).encode())


def _feed_attribute(name: str, value: Any, feed: Callable[[bytes], None], seen: set[int]) -> None:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, types.FunctionType):
        # the code as written: torch.optim.Optimizer wraps its subclasses' step on first use
        value = inspect.unwrap(value)
    if isinstance(value, property):
        feed(f"property {name}\0".encode())
        for accessor in (value.fget, value.fset, value.fdel):
            _feed_value(accessor, feed, seen)
    elif _is_code(value):
        feed(f"attribute {name}\0".encode())
        _feed_object(value, feed, seen)
    elif isinstance(value, (int, float, str, bytes, bool, tuple, frozenset, type(None))) and name != "__module__":
        feed(f"value {name}={_stable_repr(value)}\0".encode())


def _feed_value(value: Any, feed: Callable[[bytes], None], seen: set[int]) -> None:
    if _is_code(value):
        _feed_object(value, feed, seen)
    else:
        feed(_stable_repr(value).encode())


def _is_code(value: Any) -> bool:
    return isinstance(value, (type, types.FunctionType, functools.partial))


def _feed_code(code: types.CodeType, feed: Callable[[bytes], None]) -> None:
    """The bytecode, names and constants (nested code objects recursively), but not line numbers."""
    feed(code.co_code)
    feed(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(const, feed)
        else:
            feed(_stable_repr(const).encode() + b"\0")


def _names(code: types.CodeType) -> set[str]:
    """The global names used by ``code`` and the code objects nested in it."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _stable_repr(value: Any) -> str:
    """A representation that is the same in every process: no memory addresses, no set order."""
    if isinstance(value, (int, float, complex, str, bytes, bool, type(None))):
        return f"{type(value).__name__}:{value!r}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}({','.join(map(_stable_repr, value))})"
    if isinstance(value, (set, frozenset)):
        return f"set({','.join(sorted(map(_stable_repr, value)))})"
    if isinstance(value, dict):
        return f"dict({','.join(sorted(f'{_stable_repr(k)}:{_stable_repr(v)}' for k, v in value.items()))})"
    if inspect.isfunction(value) or isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if isinstance(value, torch.Tensor):
        raw = value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        content = hashlib.sha256(raw).hexdigest()  # type: ignore[arg-type]  # an ndarray is a buffer
        return f"tensor({tuple(value.shape)},{value.dtype},{content})"
    return type(value).__qualname__
