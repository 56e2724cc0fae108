"""Matrices kept as low-rank factors, X = left @ rightᵀ, and the two operations coupled forms need on them."""

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
    """A X Bᵀ; for X = l rᵀ it stays factored, (A l)(B r)ᵀ, where that is cheaper (``factored_pays``)."""
    if isinstance(X, LowRank):
        if factored_pays(A, X, B):
            return LowRank(A @ X.left, B @ X.right)
        X = X.dense()
    # (A X) Bᵀ by hand, not torch.einsum("ij,jk,lk->il", ...): einsum would pick the cheaper order, but its
    # contraction-path search (opt_einsum) runs at every call; it measured slower on two of the three A.6
    # sandwiches (python -m benchmarks.bench_einsum)
    return A @ X @ B.mT


def factored_pays(A: Tensor, X: LowRank, B: Tensor) -> bool:
    """Whether A X Bᵀ for X = l rᵀ of rank k costs fewer multiply-adds factored, (A l)(B r)ᵀ with its eventual
    formation, k(a_r a_c + b_r b_c + a_r b_r), than dense, forming X and multiplying, k a_c b_c + a_r a_c b_c +
    a_r b_c b_r (A: a_r × a_c, B: b_r × b_c, X: a_c × b_c)."""
    k = X.rank
    (a_r, a_c), (b_r, b_c) = A.shape[-2:], B.shape[-2:]
    return k * (a_r * a_c + b_r * b_c + a_r * b_r) < k * a_c * b_c + a_r * a_c * b_c + a_r * b_c * b_r


def add(X: Matrix, Y: Matrix) -> Matrix:
    """X + Y: two factored matrices are added by concatenating their factors (ranks add)."""
    if isinstance(X, LowRank) and isinstance(Y, LowRank):
        return LowRank(torch.cat([X.left, Y.left], -1), torch.cat([X.right, Y.right], -1))
    return dense(X) + dense(Y)


def dense(X: Matrix) -> Tensor:
    """X as a dense tensor."""
    return X.dense() if isinstance(X, LowRank) else X
