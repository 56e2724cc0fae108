"""Block-tridiagonal Q with EKFAC-rescaled diagonal blocks: ``tridiag_kron`` whose diagonal blocks of B carry
learned scales in their Kronecker eigenbasis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from fishleg_core.coupled.base import BlockVector
from fishleg_core.coupled.low_rank import add, dense, sandwich
from fishleg_core.coupled.registry import COUPLED_FORMS
from fishleg_core.coupled.tridiag_kron import TridiagKronQ
from fishleg_core.layers.mapping import Block
from fishleg_core.qforms.positive import PositiveTensor, inverse_softplus


@COUPLED_FORMS.register("tridiag_ekfac")
class TridiagEKFACQ(TridiagKronQ):
    """Q = B Bᵀ as in ``tridiag_kron``, with each diagonal block of B rescaled in its Kronecker basis:
    B_ii = (L_i ⊗ R_i) diag(vec(S_i)), S_i > 0 elementwise (m_i × n_i), so that without couplings the diagonal
    block of Q is (L_i ⊗ R_i) diag(vec(S_i²)) (L_i ⊗ R_i)ᵀ, the form of ``ekfac`` with B² = S² (and A = 1). In
    matrix form:

        (Bᵀ x)_i = S_i ⊙ (L_iᵀ X_i R_i) + C_iᵀ X_{i+1} D_i,
        (B y)_i = L_i (S_i ⊙ Y_i) R_iᵀ + C_{i−1} Y_{i−1} D_{i−1}ᵀ.

    Coupling the layers (C_i ⊗ D_i) and rescaling each layer's eigenbasis (S_i) are different gains; this form
    has both. S starts at 1, so the start and the KFAC start are those of ``tridiag_kron``. The scales make
    Bᵀx dense on every block, so a low-rank gradient is used only inside the couplings.
    """

    def __init__(
        self,
        blocks: Sequence[Block],
        init_scale: float = 1.0,
        *,
        coupling_init: float = 0.004,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(blocks, init_scale, coupling_init=coupling_init, device=device, dtype=dtype)
        self.S = nn.ModuleList(
            [PositiveTensor(torch.ones(block.shape, device=device, dtype=dtype)) for block in self.blocks]
        )

    def _scales(self) -> list[Tensor]:
        return [cast(PositiveTensor, scale)() for scale in self.S]

    def multiply(self, x: list[BlockVector]) -> list[Tensor]:
        L, R, S = [f() for f in self.L], [f() for f in self.R], self._scales()
        X = [v.cheapest(v.factors is not None) for v in x]
        Y = [S_i * dense(sandwich(L_i.mT, X_i, R_i.mT)) for L_i, R_i, S_i, X_i in zip(L, R, S, X)]
        for i, (C, D) in enumerate(zip(self.C, self.D)):
            Y[i] = dense(add(Y[i], sandwich(C.mT, X[i + 1], D.mT)))
        Z = [L_i @ (S_i * Y_i) @ R_i.mT for L_i, R_i, S_i, Y_i in zip(L, R, S, Y)]
        for i, (C, D) in enumerate(zip(self.C, self.D)):
            Z[i + 1] = Z[i + 1] + C @ Y[i] @ D.mT
        return Z

    def bidiagonal_factor(self) -> Tensor:
        """The dense B on [vec(G_1); ...; vec(G_k)]: ``tridiag_kron``'s, diagonal blocks (L_i ⊗ R_i) diag(vec S_i)."""
        B = super().bidiagonal_factor()
        offset = 0
        for S_i in self._scales():
            size = S_i.numel()
            span = slice(offset, offset + size)
            B[span, span] = B[span, span] * S_i.reshape(1, -1)
            offset += size
        return B

    @torch.no_grad()
    def set_kronecker(self, pairs: Sequence[tuple[Tensor, Tensor]]) -> bool:
        """``tridiag_kron``'s start, with S = 1."""
        if not super().set_kronecker(pairs):
            return False
        for scale in self.S:
            raw = cast(PositiveTensor, scale).raw
            raw.fill_(inverse_softplus(torch.ones((), dtype=raw.dtype)).item())
        return True
