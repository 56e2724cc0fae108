"""Block Kronecker form (paper Appendix A.5): Q G = M_L G M_R, M_L = L Lᵀ, M_R = R Rᵀ."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import cast

import torch
from torch import Tensor

from fishleg_core.qforms.base import QForm
from fishleg_core.qforms.positive import TriangularFactor
from fishleg_core.qforms.registry import QFORMS
from fishleg_core.qforms.stacked import StackedFactors


def kron_low_rank_pays(shape: tuple[int, int], rank: int) -> bool:
    """Whether (M_L left)(M_R right)ᵀ, r(m² + n² + mn) multiply-adds, beats M_L G M_R, mn(m + n)."""
    m, n = shape
    return rank * (m * m + n * n + m * n) < m * n * (m + n)


@QFORMS.register("kron")
class KronQ(QForm):
    """Q = M_L ⊗ M_R (row-major vec), with triangular factors started at L = R = init_scale^¼ · I."""

    def __init__(
        self,
        shape: tuple[int, int],
        init_scale: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(shape, init_scale)
        root = self.init_scale**0.25
        self.L = TriangularFactor.scaled_identity(self.rows, root, device=device, dtype=dtype)
        self.R = TriangularFactor.scaled_identity(self.cols, root, device=device, dtype=dtype)

    def multiply(self, G: Tensor) -> Tensor:
        return self.L.gram_matmul(self.R.gram_matmul(G.mT).mT)

    def multiply_low_rank(self, left: Tensor, right: Tensor) -> Tensor | None:
        """M_L (left rightᵀ) M_R = (M_L left)(M_R right)ᵀ: O(r(rows² + cols² + rows·cols)) for rank r."""
        if not kron_low_rank_pays(self.shape, left.shape[-1]):
            return None
        return self.L.gram_matmul(left) @ self.R.gram_matmul(right).mT

    def to_dense(self) -> Tensor:
        return torch.kron(self.L.gram(), self.R.gram())

    def batch_key(self) -> Hashable:
        return ("kron", self.shape, self.L.diag.dtype, self.L.diag.device)

    @classmethod
    def stack(cls, forms: Sequence[QForm]) -> StackedKron:
        return StackedKron([cast(KronQ, form) for form in forms])


class StackedKron:
    """N ``KronQ`` of one shape: Q_i G_i = M_L,i G_i M_R,i for the whole stack in four batched products."""

    def __init__(self, forms: Sequence[KronQ]) -> None:
        self.L = StackedFactors([form.L for form in forms])
        self.R = StackedFactors([form.R for form in forms])

    def multiply(self, G: Tensor) -> Tensor:
        return self.L.gram_matmul(self.R.gram_matmul(G.mT).mT)
