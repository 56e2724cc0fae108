"""Assertions shared by the contract checkers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


def raises(error: type[Exception], pattern: str, action: Callable[[], Any]) -> None:
    """Assert that ``action()`` raises ``error`` with a message matching ``pattern`` (``re.search``)."""
    try:
        action()
    except error as raised:
        assert re.search(pattern, str(raised)), f"{error.__name__} {str(raised)!r} does not match {pattern!r}"
        return
    raise AssertionError(f"expected {error.__name__} matching {pattern!r}; nothing was raised")
