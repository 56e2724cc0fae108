"""Argument checks shared by the public entry points; every error names the argument.

Numbers that are not finite, out of range or not numbers at all raise ``ValueError``; objects of the wrong
kind (a module, a tensor, a mapping, a callable) raise ``TypeError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor, nn

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def check_number(name: str, value: Any, minimum: float, inclusive: bool = False, below: float = math.inf) -> float:
    """``value`` as a float, after checking it is a finite real number > ``minimum`` (>= if ``inclusive``)
    and < ``below``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or value < minimum
        or (value == minimum and not inclusive)
        or value >= below  # type: ignore[operator]  # numbers.Real declares no comparisons in typeshed
    ):
        bound = f"{'>=' if inclusive else '>'} {minimum:g}" + (f" and < {below:g}" if below < math.inf else "")
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, after checking it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_type(name: str, value: Any, expected: type | tuple[type, ...], description: str) -> None:
    """Raise ``TypeError`` unless ``value`` is an instance of ``expected`` (``description`` in words)."""
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be {description}, got {type(value).__name__}")


def check_module(value: Any, name: str = "model") -> None:
    check_type(name, value, nn.Module, "a torch.nn.Module")


def check_tensor(name: str, value: Any) -> None:
    check_type(name, value, Tensor, "a torch.Tensor")


def check_mapping(name: str, value: Any, description: str = "a dict of tensors keyed by parameter name") -> None:
    check_type(name, value, Mapping, description)


def check_generator(value: Any, name: str = "generator") -> None:
    """``value`` must be a ``torch.Generator`` or None."""
    if value is not None:
        check_type(name, value, torch.Generator, "a torch.Generator or None")


def check_callable(name: str, value: Any, optional: bool = False) -> None:
    """``value`` must be callable (or None if ``optional``)."""
    if not callable(value) and not (optional and value is None):
        raise TypeError(f"{name} must be callable{' or None' if optional else ''}, got {type(value).__name__}")


class InvalidConfigError(ValueError):
    """Raised with one line per invalid field: ``<owner>: invalid <field>: <reason> (got <value>)``."""


def validate(config_type: type[ConfigT], owner: str, values: Mapping[str, Any]) -> ConfigT:
    """``config_type(**values)``, with pydantic's errors rewritten to name the field and the value given."""
    try:
        return config_type(**values)
    except ValidationError as error:
        lines = []
        for issue in error.errors():
            field = ".".join(str(part) for part in issue["loc"]) or "configuration"
            reason = issue["msg"].removeprefix("Value error, ")
            given = f" (got {issue['input']!r})" if issue["loc"] else ""
            lines.append(f"{owner}: invalid {field}: {reason}{given}")
        raise InvalidConfigError("\n".join(lines)) from None
