"""Positivity-preserving parameterisations shared by the QForms."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = log(1 + eˣ) = y, for y > 0 (stable form x = y + log(1 − e^{−y}))."""
    return y + torch.log(-torch.expm1(-y))


def positive(raw: Tensor) -> Tensor:
    """softplus(raw) = log(1 + e^raw), floored at the dtype's smallest normal number so that it stays
    strictly positive even where softplus underflows (raw below about −745 in float64)."""
    return softplus(raw).clamp_min(torch.finfo(raw.dtype).tiny)


class PositiveTensor(nn.Module):
    """An elementwise-positive tensor P = positive(raw), started at a given positive value."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.raw = nn.Parameter(inverse_softplus(init.clone()))

    def forward(self) -> Tensor:
        return positive(self.raw)


class TriangularFactor(nn.Module):
    """A lower-triangular n×n matrix L with positive diagonal: L = strict_lower(off) + diag(positive(d)).

    Only the n(n+1)/2 free entries are parameters, so every parameter counts and moves. The Gram matrix
    L Lᵀ is symmetric positive definite for any parameter values.
    """

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        n = init.shape[0]
        if init.shape != (n, n):
            raise ValueError(f"TriangularFactor needs a square initial matrix, got {tuple(init.shape)}")
        self.n = n
        rows, cols = torch.tril_indices(n, n, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        self.diag = nn.Parameter(inverse_softplus(torch.diagonal(init).clone()))
        self.off = nn.Parameter(init[rows, cols].clone())

    @classmethod
    def scaled_identity(cls, n: int, scale: float, dtype: torch.dtype | None = None) -> "TriangularFactor":
        """The factor L = scale · I."""
        return cls(torch.eye(n, dtype=dtype) * scale)

    def forward(self) -> Tensor:
        """L as a dense lower-triangular matrix."""
        L = torch.diag_embed(positive(self.diag))
        return L.index_put((self._rows, self._cols), self.off)

    def gram(self) -> Tensor:
        """M = L Lᵀ (symmetric positive definite)."""
        L = self()
        return L @ L.mT
