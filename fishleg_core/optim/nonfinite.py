"""Guarding FishLeg's state against NaN and Inf: skip the update that met them (or raise)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from torch import Tensor

from fishleg_core._vectors import all_finite
from fishleg_core._warnings import warn_user

NonFinitePolicy = Literal["skip", "raise"]


class NonFiniteGuard:
    """``check(kind, tensors)`` is True when every tensor is finite. Otherwise the caller skips the update
    of that kind: the guard counts it in ``skipped[kind]`` and warns once per kind, or, with policy
    ``"raise"``, raises ``FloatingPointError`` naming the entries that are not finite."""

    def __init__(self, policy: NonFinitePolicy) -> None:
        self.policy = policy
        self.skipped: dict[str, int] = {}
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"NonFiniteGuard(policy={self.policy!r}, skipped={self.skipped})"

    def check(self, kind: str, tensors: Mapping[str, Tensor], consequence: str, cause: str | None = None) -> bool:
        """Whether every tensor is finite; ``cause``: what made them non-finite, if known (then named in the
        message, which is warned once per kind and cause)."""
        if all_finite(tensors):
            return True
        culprits = ", ".join(name for name, t in tensors.items() if not t.isfinite().all())
        because = f" because {cause}" if cause else ""
        message = f"FishLeg: non-finite values in the {kind} ({culprits}){because}"
        if self.policy == "raise":
            raise FloatingPointError(f"{message} (nonfinite='raise')")
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        warned = kind if cause is None else f"{kind}: {cause.partition(':')[0]}"
        if warned not in self._warned:
            self._warned.add(warned)
            warn_user(f"{message}; {consequence} (warned once; counts in optimizer.nonfinite.skipped)", RuntimeWarning)
        return False
