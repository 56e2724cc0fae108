"""Several forms of one kind and shape as one batched form: their λ stacked, one batched product for all.

On deep stacks of small layers a step is bound by the number of kernels and Python calls, not by FLOPs
(``python -m benchmarks.bench_step --model deep_linear --profile``). A form that opts in (``QForm.batch_key``
and ``QForm.stack``) lets N blocks of equal shape multiply as one (N, rows, cols) batch, like ``torch.optim``'s
``foreach`` path. λ stays in the forms' own parameters (state dicts and checkpoints are unchanged): the stack
is made on every product, on the autograd tape, so the gradients reach each form's parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from fishleg_core.qforms.positive import CachedGram, TriangularFactor, positive


class StackedForm(Protocol):
    """N forms of equal ``batch_key`` acting on a stack of N blocks."""

    def multiply(self, G: Tensor) -> Tensor:
        """Q_i G_i for G of shape (N, rows, cols), stacked in the forms' order."""
        ...


class StackedFactors(CachedGram):
    """N triangular factors of one size as one batch: L of shape (N, n, n), built from the stacked
    parameters with one softplus and one scatter; the products of ``TriangularFactor`` batched, with the
    same caching rules (the stacked Gram matrices are cached outside autograd while no parameter changes and
    the factors' ``cache_gram`` is on)."""

    def __init__(self, factors: Sequence[TriangularFactor]) -> None:
        if not factors or len({f.n for f in factors}) != 1:
            raise ValueError("StackedFactors needs at least one factor, all of one size")
        self.factors = tuple(factors)
        self.n = factors[0].n
        self._cache: dict[str, tuple[tuple[int, ...], Tensor]] = {}

    def __call__(self) -> Tensor:
        """L_1..L_N stacked, (N, n, n), lower-triangular with positive diagonals."""
        return self.factor()

    def _build(self) -> Tensor:
        diag = torch.stack([f.diag for f in self.factors])
        off = torch.stack([f.off for f in self.factors])
        entries = torch.cat([positive(diag), off], dim=1)
        positions = self.factors[0]._positions.expand(len(self.factors), -1)
        n = self.n
        return entries.new_zeros(len(self.factors), n * n).scatter(1, positions, entries).view(-1, n, n)

    def _tracking_gradients(self) -> bool:
        return torch.is_grad_enabled() and any(f._tracking_gradients() for f in self.factors)

    def _parameter_versions(self) -> tuple[int, ...]:
        return tuple(v for f in self.factors for v in f._parameter_versions())

    def _uses_gram_cache(self) -> bool:
        return self.factors[0].cache_gram
