"""Diagonal form: Q G = D ⊙ G with D > 0 elementwise."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import cast

import torch
from torch import Tensor

from fishleg_core.qforms.base import QForm
from fishleg_core.qforms.positive import PositiveTensor, inverse_softplus, positive
from fishleg_core.qforms.registry import QFORMS


@QFORMS.register("diagonal")
class DiagonalQ(QForm):
    """Q = diag(vec(D)), D = softplus(raw) > 0, started at D = init_scale."""

    def __init__(
        self,
        shape: tuple[int, int],
        init_scale: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(shape, init_scale)
        self.D = PositiveTensor(torch.full(self.shape, self.init_scale, device=device, dtype=dtype))

    @torch.no_grad()
    def set_kronecker(self, left: Tensor, right: Tensor) -> bool:
        """The diagonal of the product: D_ij = (left leftᵀ)_ii (right rightᵀ)_jj."""
        if not self._kronecker_shapes(left, right):
            return False
        self.D.raw.copy_(inverse_softplus(torch.outer(left.square().sum(1), right.square().sum(1))))
        return True

    def multiply(self, G: Tensor) -> Tensor:
        return self.D() * G

    def to_dense(self) -> Tensor:
        return torch.diag(self.D().reshape(-1))

    def batch_key(self) -> Hashable:
        return ("diagonal", self.shape, self.D.raw.dtype, self.D.raw.device)

    @classmethod
    def stack(cls, forms: Sequence[QForm]) -> StackedDiagonal:
        return StackedDiagonal([cast(DiagonalQ, form) for form in forms])


class StackedDiagonal:
    """N ``DiagonalQ`` of one shape: D_i ⊙ G_i for the stack, D from the stacked raw parameters."""

    def __init__(self, forms: Sequence[DiagonalQ]) -> None:
        self.raws: list[Tensor] = [form.D.raw for form in forms]

    def multiply(self, G: Tensor) -> Tensor:
        return positive(torch.stack(self.raws)) * G
