"""Block Kronecker form (paper Appendix A.5): Q G = M_L G M_R, M_L = L Lᵀ, M_R = R Rᵀ."""

from __future__ import annotations

import torch
from torch import Tensor

from fishleg_core.qforms.base import QForm
from fishleg_core.qforms.positive import TriangularFactor
from fishleg_core.qforms.registry import QFORMS


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

    def set_kronecker(self, left: Tensor, right: Tensor) -> bool:
        """L = left, R = right."""
        if not self._kronecker_shapes(left, right):
            return False
        self.L.assign_(left)
        self.R.assign_(right)
        return True

    def multiply(self, G: Tensor) -> Tensor:
        return self.L.gram_matmul(self.R.gram_matmul(G.mT).mT)

    def multiply_low_rank(self, left: Tensor, right: Tensor) -> Tensor | None:
        """M_L (left rightᵀ) M_R = (M_L left)(M_R right)ᵀ: O(r(rows² + cols² + rows·cols)) for rank r."""
        if not kron_low_rank_pays(self.shape, left.shape[-1]):
            return None
        return self.L.gram_matmul(left) @ self.R.gram_matmul(right).mT

    def to_dense(self) -> Tensor:
        return torch.kron(self.L.gram(), self.R.gram())
