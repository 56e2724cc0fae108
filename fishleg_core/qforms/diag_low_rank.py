"""Diagonal plus low rank: Q = diag(vec(D)) + U Uᵀ on vec(G), D > 0 elementwise, U of shape (rows·cols, k)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fishleg_core.qforms.base import QForm
from fishleg_core.qforms.positive import PositiveTensor
from fishleg_core.qforms.registry import QFORMS


@QFORMS.register("diag_low_rank")
class DiagLowRankQ(QForm):
    """Q G = D ⊙ G + unvec(U (Uᵀ vec(G))): positive definite since D > 0 and U Uᵀ ⪰ 0.

    Starts at D = init_scale and U small and random (U = 0 would never move: its gradient vanishes there):
    E‖U‖²_F = 10⁻³·init_scale.
    """

    init_deviation = 0.01

    def __init__(
        self,
        shape: tuple[int, int],
        init_scale: float = 1.0,
        rank: int = 4,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(shape, init_scale)
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"diag_low_rank needs rank >= 1, got rank={rank!r}")
        n = self.rows * self.cols
        self.D = PositiveTensor(torch.full(self.shape, self.init_scale, device=device, dtype=dtype))
        spread = (1e-3 * self.init_scale / (n * rank)) ** 0.5
        self.U = nn.Parameter(torch.randn(n, rank, device=device, dtype=dtype) * spread)

    def multiply(self, G: Tensor) -> Tensor:
        flat = G.reshape(*G.shape[:-2], -1)
        return self.D() * G + ((flat @ self.U) @ self.U.mT).reshape(G.shape)

    def to_dense(self) -> Tensor:
        return torch.diag(self.D().reshape(-1)) + self.U @ self.U.mT
