"""Block-tridiagonal Kronecker Q over a chain of layers: Q = B Bᵀ, B block-lower-bidiagonal."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from fishleg_core._validation import check_number
from fishleg_core.coupled.base import BlockVector, CoupledQ
from fishleg_core.coupled.low_rank import add, dense, sandwich
from fishleg_core.coupled.registry import COUPLED_FORMS
from fishleg_core.layers.mapping import Block
from fishleg_core.qforms.positive import TriangularFactor


@COUPLED_FORMS.register("tridiag_kron")
class TridiagKronQ(CoupledQ):
    """Q = B Bᵀ on a chain of blocks G_1..G_k (shapes m_i × n_i, row-major vec), with B block-lower-bidiagonal:
    diagonal blocks L_i ⊗ R_i (lower-triangular, positive diagonals, as in ``kron``) and sub-diagonal blocks
    C_i ⊗ D_i (C_i: m_{i+1} × m_i, D_i: n_{i+1} × n_i) coupling block i to block i+1. B is invertible, so Q
    is positive definite; Q is block-tridiagonal, with Q_{i+1,i} = (C_i ⊗ D_i)(L_i ⊗ R_i)ᵀ. In matrix form:

        (Bᵀ x)_i = L_iᵀ X_i R_i + C_iᵀ X_{i+1} D_i,      (B y)_i = L_i Y_i R_iᵀ + C_{i−1} Y_{i−1} D_{i−1}ᵀ.

    Start: L_i = R_i = init_scale^¼ I, and C_i, D_i random with spectral norms √(coupling_init) · init_scale^¼
    each, so ‖Q − init_scale·I‖₂ ≤ (2δ + δ²) init_scale with δ = coupling_init (below 1 % at the default);
    coupling factors started at zero would never move (the gradient in C_i is proportional to D_i). They draw
    from torch's global random generator. Where a block of x is known as low-rank factors (a minibatch
    gradient of rank r), each product stays factored while that is cheaper (``factored_pays``): the ranks
    add up to 2r after Bᵀ and 4r after B, so typically Bᵀx stays factored and B densifies where 4r is
    too large.
    """

    init_deviation = 0.01

    def __init__(
        self,
        blocks: Sequence[Block],
        init_scale: float = 1.0,
        *,
        coupling_init: float = 0.004,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(blocks)
        if len(self.blocks) < 2:
            raise ValueError(f"tridiag_kron couples a chain of at least two blocks; got only {self.blocks[0].name!r}")
        init_scale = check_number("init_scale", init_scale, 0.0)
        self.coupling_init = check_number("coupling_init", coupling_init, 0.0, below=0.01)
        root = init_scale**0.25
        shapes = [block.shape for block in self.blocks]
        self.L = nn.ModuleList(
            [TriangularFactor.scaled_identity(m, root, device=device, dtype=dtype) for m, _ in shapes]
        )
        self.R = nn.ModuleList(
            [TriangularFactor.scaled_identity(n, root, device=device, dtype=dtype) for _, n in shapes]
        )
        factory = {"device": device, "dtype": dtype}
        coupling_norm = self.coupling_init**0.5 * root
        self.C = nn.ParameterList(
            [_random_with_norm((m1, m0), coupling_norm, factory) for (m0, _), (m1, _) in zip(shapes, shapes[1:])]
        )
        self.D = nn.ParameterList(
            [_random_with_norm((n1, n0), coupling_norm, factory) for (_, n0), (_, n1) in zip(shapes, shapes[1:])]
        )

    @torch.no_grad()
    def set_kronecker(self, pairs: Sequence[tuple[Tensor, Tensor]]) -> bool:
        """Diagonal blocks L_i ⊗ R_i from the pairs; each coupling C_i ⊗ D_i rescaled to spectral norms
        √(coupling_init)·‖L_{i+1}‖₂ and √(coupling_init)·‖R_{i+1}‖₂, small against the block it feeds, as built."""
        shapes = [
            ((L.n, L.n), (R.n, R.n)) for L, R in zip(self._diagonal_factors(), self._diagonal_factors(right=True))
        ]
        if len(pairs) != len(shapes) or any(
            (tuple(left.shape), tuple(right.shape)) != shape for (left, right), shape in zip(pairs, shapes)
        ):
            return False
        for L, R, (left, right) in zip(self._diagonal_factors(), self._diagonal_factors(right=True), pairs):
            L.assign_(left)
            R.assign_(right)
        for i, (C, D) in enumerate(zip(self.C, self.D)):
            left, right = pairs[i + 1]
            for coupling, target in ((C, left), (D, right)):
                norm = math.sqrt(self.coupling_init) * torch.linalg.matrix_norm(target, ord=2)
                coupling.mul_(norm / torch.linalg.matrix_norm(coupling, ord=2))
        return True

    def _diagonal_factors(self, right: bool = False) -> list[TriangularFactor]:
        """The L_i (or the R_i), typed (a ModuleList yields plain Modules)."""
        return [cast(TriangularFactor, factor) for factor in (self.R if right else self.L)]

    def multiply(self, x: list[BlockVector]) -> list[Tensor]:
        L, R = [f() for f in self.L], [f() for f in self.R]
        X = [v.cheapest(v.factors is not None) for v in x]  # each product below stays factored where that pays
        Y = [sandwich(L_i.mT, X_i, R_i.mT) for L_i, R_i, X_i in zip(L, R, X)]  # diagonal blocks of Bᵀ
        for i, (C, D) in enumerate(zip(self.C, self.D)):
            Y[i] = add(Y[i], sandwich(C.mT, X[i + 1], D.mT))
        Z = [sandwich(L_i, Y_i, R_i) for L_i, R_i, Y_i in zip(L, R, Y)]  # diagonal blocks of B
        for i, (C, D) in enumerate(zip(self.C, self.D)):
            Z[i + 1] = add(Z[i + 1], sandwich(C, Y[i], D))
        return [dense(Z_i) for Z_i in Z]

    def bidiagonal_factor(self) -> Tensor:
        """The dense B on [vec(G_1); ...; vec(G_k)]."""
        sizes = [rows * cols for rows, cols in (block.shape for block in self.blocks)]
        offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        B = self.C[0].new_zeros(offsets[-1], offsets[-1])
        for i, (L, R) in enumerate(zip(self.L, self.R)):
            B[offsets[i] : offsets[i + 1], offsets[i] : offsets[i + 1]] = torch.kron(L(), R())
        for i, (C, D) in enumerate(zip(self.C, self.D)):
            B[offsets[i + 1] : offsets[i + 2], offsets[i] : offsets[i + 1]] = torch.kron(C, D)
        return B

    def packed_dense(self) -> Tensor:
        B = self.bidiagonal_factor()
        return B @ B.mT


def _random_with_norm(shape: tuple[int, int], norm: float, factory: dict) -> nn.Parameter:
    """A Gaussian matrix rescaled to spectral norm ``norm``."""
    M = torch.randn(shape, **factory)
    return nn.Parameter(M * (norm / torch.linalg.matrix_norm(M, ord=2)))
