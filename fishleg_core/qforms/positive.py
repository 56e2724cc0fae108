"""Positivity-preserving parameterisations shared by the QForms."""

from __future__ import annotations

from collections.abc import Callable

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


def packed_positions(n: int, device: torch.device | str | None = None) -> Tensor:
    """Row-major positions in an n×n matrix of its diagonal, then its strictly lower entries (row by row): the
    order of a ``TriangularFactor``'s ``diag`` and ``off``."""
    rows, cols = torch.tril_indices(n, n, offset=-1, device=device)
    return torch.cat([torch.arange(n, device=device) * (n + 1), rows * n + cols])


def unpack_lower(packed: Tensor, positions: Tensor, n: int) -> Tensor:
    """The n×n lower-triangular matrix with ``packed`` at ``positions`` (``packed_positions``), one vectorised
    scatter (faster than masked_scatter)."""
    return packed.new_zeros(n * n).scatter(0, positions, packed).view(n, n)


class CachedGram:
    """L, M = L Lᵀ and M X for a (batch of) lower-triangular factor(s), with the caching rules of
    ``TriangularFactor``: outside autograd L and M are kept until the parameters' versions change, and M X
    uses the cached M when the Gram cache is on, else L (Lᵀ X). A subclass supplies ``_build`` (L from the
    parameters), ``_tracking_gradients``, ``_parameter_versions`` and ``_uses_gram_cache``, and a ``_cache``
    dict."""

    _cache: dict[str, tuple[tuple[int, ...], Tensor]]

    def _build(self) -> Tensor:
        raise NotImplementedError

    def _tracking_gradients(self) -> bool:
        raise NotImplementedError

    def _parameter_versions(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _uses_gram_cache(self) -> bool:
        raise NotImplementedError

    def factor(self) -> Tensor:
        """L as a dense lower-triangular matrix (or stack of them)."""
        if self._tracking_gradients():
            return self._build()
        return self._cached("L", self._build)

    def gram(self) -> Tensor:
        """M = L Lᵀ (symmetric positive definite)."""
        if self._tracking_gradients():
            return triangular_gram(self.factor())
        return self._cached("M", lambda: triangular_gram(self.factor()))

    def gram_matmul(self, X: Tensor) -> Tensor:
        """M X for X of shape (..., n, r): outside autograd with the cached M if the Gram cache is on, else
        as L (Lᵀ X)."""
        if self._uses_gram_cache() and not self._tracking_gradients():
            return self.gram() @ X
        L = self.factor()
        return L @ (L.mT @ X)

    def _cached(self, key: str, build: Callable[[], Tensor]) -> Tensor:
        versions = self._parameter_versions()
        if key not in self._cache or self._cache[key][0] != versions:
            self._cache[key] = (versions, build().detach())
        return self._cache[key][1]


class TriangularFactor(CachedGram, nn.Module):
    """A lower-triangular n×n matrix L with positive diagonal: L = strict_lower(off) + diag(positive(d)).

    Only the n(n+1)/2 free entries are parameters, so every parameter counts and moves. The Gram matrix
    M = L Lᵀ is symmetric positive definite for any parameter values.

    Outside autograd (an optimizer's parameter step), L and M are cached until the parameters change
    (detected through their storage and in-place version counters). M X = L (Lᵀ X) costs 4n²r for X of
    rank r, M X with a cached M 2n²r, building M about n³: M pays when the same parameters serve several
    products, so ``cache_gram`` (default True) chooses; an optimizer whose λ changes every step turns it
    off. The choice never depends on history, so a resumed run computes exactly what an uninterrupted one
    does.
    """

    cache_gram: bool = True
    _positions: Tensor  # a buffer

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        n = init.shape[0]
        if init.shape != (n, n):
            raise ValueError(f"TriangularFactor needs a square initial matrix, got {tuple(init.shape)}")
        self.n = n
        rows, cols = torch.tril_indices(n, n, offset=-1, device=init.device)
        self.register_buffer("_positions", packed_positions(n, init.device), persistent=False)
        self.diag = nn.Parameter(inverse_softplus(torch.diagonal(init).clone()))
        self.off = nn.Parameter(init[rows, cols].clone())
        self._cache: dict[str, tuple[tuple[int, ...], Tensor]] = {}

    @classmethod
    def scaled_identity(
        cls, n: int, scale: float, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TriangularFactor:
        """The factor L = scale · I."""
        return cls(torch.eye(n, device=device, dtype=dtype) * scale)

    @torch.no_grad()
    def assign_(self, L: Tensor) -> None:
        """Set the factor to the lower-triangular ``L`` (a positive diagonal, e.g. a Cholesky factor); the
        entries above the diagonal are ignored."""
        if L.shape != (self.n, self.n):
            raise ValueError(f"TriangularFactor.assign_ needs a {self.n}×{self.n} matrix, got {tuple(L.shape)}")
        diagonal = torch.diagonal(L)
        if not bool((diagonal > 0).all()):
            raise ValueError("TriangularFactor.assign_ needs a positive diagonal")
        rows, cols = torch.tril_indices(self.n, self.n, offset=-1, device=L.device)
        self.diag.copy_(inverse_softplus(diagonal.clone()))
        self.off.copy_(L[rows, cols])

    def forward(self) -> Tensor:
        """L as a dense lower-triangular matrix."""
        return self.factor()

    def _build(self) -> Tensor:
        entries = torch.cat([positive(self.diag), self.off])
        return unpack_lower(entries, self._positions, self.n)

    def _tracking_gradients(self) -> bool:
        return torch.is_grad_enabled() and (self.diag.requires_grad or self.off.requires_grad)

    def _parameter_versions(self) -> tuple[int, ...]:
        return tuple(v for p in (self.diag, self.off) for v in (p.data_ptr(), p._version))

    def _uses_gram_cache(self) -> bool:
        return self.cache_gram


class DiagonalFactor(nn.Module):
    """A Kronecker factor M = diag(d), d = positive(raw) > 0: n parameters where a ``TriangularFactor`` has
    n(n + 1)/2, for a side too large for a full factor (PSGD's ``max_size``). Offers the products of
    ``TriangularFactor`` that the Kronecker forms use."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        if init.dim() != 1:
            raise ValueError(f"DiagonalFactor needs the initial diagonal of M, a vector; got {tuple(init.shape)}")
        self.n = init.shape[0]
        self.raw = nn.Parameter(inverse_softplus(init.clone()))

    @classmethod
    def scaled_identity(
        cls, n: int, scale: float, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> DiagonalFactor:
        """The factor with M = scale² · I (as ``TriangularFactor.scaled_identity``: L = scale · I)."""
        return cls(torch.full((n,), scale**2, device=device, dtype=dtype))

    @torch.no_grad()
    def assign_(self, L: Tensor) -> None:
        """Set M to the diagonal of L Lᵀ (the squared row norms of ``L``)."""
        if L.shape != (self.n, self.n):
            raise ValueError(f"DiagonalFactor.assign_ needs a {self.n}×{self.n} matrix, got {tuple(L.shape)}")
        self.raw.copy_(inverse_softplus((L * L).sum(1)))

    def diagonal(self) -> Tensor:
        return positive(self.raw)

    def gram(self) -> Tensor:
        """M as a dense n×n matrix."""
        return torch.diag(self.diagonal())

    def gram_matmul(self, X: Tensor) -> Tensor:
        """M X for X of shape (..., n, r)."""
        return self.diagonal()[:, None] * X


def triangular_gram(L: Tensor, min_size: int = 256) -> Tensor:
    """L Lᵀ for lower-triangular L, by 2×2 blocks L = [[A, 0], [B, C]]:
    L Lᵀ = [[A Aᵀ, A Bᵀ], [B Aᵀ, B Bᵀ + C Cᵀ]], recursing on A Aᵀ and C Cᵀ. It skips the products with the
    zero block, about half the work of a dense product for large n."""
    n = L.shape[-1]
    if n < min_size:
        return L @ L.mT
    h = n // 2
    A, B, C = L[..., :h, :h], L[..., h:, :h], L[..., h:, h:]
    AA, AB = triangular_gram(A, min_size), A @ B.mT
    BB_CC = B @ B.mT + triangular_gram(C, min_size)
    return torch.cat([torch.cat([AA, AB], -1), torch.cat([AB.mT, BB_CC], -1)], -2)
