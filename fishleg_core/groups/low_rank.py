"""Matrices kept as low-rank factors, X = left @ rightᵀ, and the two operations group forms need on them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LowRank:
    """The (rows, cols) matrix ``left @ right.mT`` with ``left`` (rows, r) and ``right`` (cols, r), unformed."""

    left: Tensor
    right: Tensor

    @property
    def rank(self) -> int:
        return self.left.shape[-1]

    def dense(self) -> Tensor:
        return self.left @ self.right.mT


Matrix = Tensor | LowRank
"""A block's matrix, dense or factored."""


def sandwich(A: Tensor, X: Matrix, B: Tensor) -> Matrix:
    """A X Bᵀ, which for X = l rᵀ stays factored: (A l)(B r)ᵀ."""
    if isinstance(X, LowRank):
        return LowRank(A @ X.left, B @ X.right)
    return A @ X @ B.mT


def add(X: Matrix, Y: Matrix) -> Matrix:
    """X + Y: two factored matrices are added by concatenating their factors (ranks add)."""
    if isinstance(X, LowRank) and isinstance(Y, LowRank):
        return LowRank(torch.cat([X.left, Y.left], -1), torch.cat([X.right, Y.right], -1))
    return dense(X) + dense(Y)


def dense(X: Matrix) -> Tensor:
    """X as a dense tensor."""
    return X.dense() if isinstance(X, LowRank) else X
