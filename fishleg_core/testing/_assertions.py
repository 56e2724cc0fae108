"""Assertions shared by the contract checkers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def raises(error: type[Exception], pattern: str, action: Callable[[], Any]) -> None:
    """Assert that ``action()`` raises ``error`` with a message matching ``pattern`` (``re.search``)."""
    try:
        action()
    except error as raised:
        assert re.search(pattern, str(raised)), f"{error.__name__} {str(raised)!r} does not match {pattern!r}"
        return
    raise AssertionError(f"expected {error.__name__} matching {pattern!r}; nothing was raised")


def close(got: Tensor, expected: Tensor, what: str, tolerance: float) -> None:
    """Assert ‖got − expected‖ ≤ tolerance · ‖expected‖ (2-norms over every entry)."""
    error = torch.linalg.vector_norm(got - expected).item()
    scale = max(torch.linalg.vector_norm(expected).item(), 1e-300)
    assert error <= tolerance * scale, f"{what}: relative error {error / scale:.3g}"


def run_check(subject: str, label: str, check: Callable[..., Any], *args: Any) -> None:
    """Run one contract check, ``check(*args)``. A failure, an assertion or an error the extension's own
    code raised inside it, becomes ``AssertionError("<subject>: check '<label>' failed: ...")``."""
    try:
        check(*args)
    except AssertionError as error:
        raise AssertionError(f"{subject}: check {label!r} failed: {error}") from error
    except Exception as error:  # the extension's own code failed inside the check: the check fails
        raise AssertionError(f"{subject}: check {label!r} failed: {type(error).__name__}: {error}") from error
