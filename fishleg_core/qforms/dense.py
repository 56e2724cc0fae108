"""Dense form for small blocks, the exact reference: Q = C Cᵀ on vec(G)."""

from __future__ import annotations

import torch
from torch import Tensor

from fishleg_core.qforms.base import QForm
from fishleg_core.qforms.positive import TriangularFactor
from fishleg_core.qforms.registry import QFORMS

MAX_DENSE_SIZE = 4096


@QFORMS.register("dense")
class DenseQ(QForm):
    """Q = C Cᵀ with C a lower-triangular Cholesky factor (positive diagonal) of size rows·cols.

    Any symmetric positive-definite matrix has exactly one such factor, so this form can represent the
    exact inverse Fisher of the block. It has (rows·cols)² / 2 parameters: for small blocks only.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        init_scale: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(shape, init_scale)
        n = self.rows * self.cols
        if n > MAX_DENSE_SIZE:
            raise ValueError(
                f"dense QForm on a block of {n} entries would hold {n * (n + 1) // 2} parameters; "
                f"it is meant for blocks of at most {MAX_DENSE_SIZE} entries"
            )
        self.C = TriangularFactor.scaled_identity(n, self.init_scale**0.5, device=device, dtype=dtype)

    def multiply(self, G: Tensor) -> Tensor:
        flat = G.reshape(*G.shape[:-2], -1)
        return (flat @ self.C.gram()).reshape(G.shape)

    def to_dense(self) -> Tensor:
        return self.C.gram()
