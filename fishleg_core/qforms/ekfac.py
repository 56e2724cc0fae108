"""Rescaled EKFAC-like form (paper Appendix A.6): Q = A (L ⊗ R) B² (L ⊗ R)ᵀ A."""

from __future__ import annotations

import torch
from torch import Tensor

from fishleg_core.qforms.base import QForm
from fishleg_core.qforms.positive import PositiveTensor, TriangularFactor, inverse_softplus
from fishleg_core.qforms.registry import QFORMS


@QFORMS.register("ekfac")
class EKFACQ(QForm):
    """Q G = A ⊙ (L (B² ⊙ (Lᵀ (A ⊙ G) R)) Rᵀ), with A > 0 and B² > 0 elementwise of shape (rows, cols).

    A is an outer and B² an inner diagonal rescaling of the Kronecker eigenbasis; both start at 1 and the
    factors at L = R = init_scale^¼ · I, so Q starts at init_scale · I.
    """

    kronecker_scales = ("A", "B2")

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
        self.A = PositiveTensor(torch.ones(self.shape, device=device, dtype=dtype))
        self.B2 = PositiveTensor(torch.ones(self.shape, device=device, dtype=dtype))

    @torch.no_grad()
    def set_kronecker(self, left: Tensor, right: Tensor) -> bool:
        """L = left, R = right, A = B² = 1: Q = (L Lᵀ) ⊗ (R Rᵀ)."""
        if not self._kronecker_shapes(left, right):
            return False
        self.L.assign_(left)
        self.R.assign_(right)
        for scales in (self.A, self.B2):
            scales.raw.fill_(inverse_softplus(torch.ones((), dtype=scales.raw.dtype)).item())
        return True

    def multiply(self, G: Tensor) -> Tensor:
        L, R, A = self.L(), self.R(), self.A()
        # Hand-ordered chains, not torch.einsum (opt_einsum's order): einsum measured slower on every A.6 block
        # with autograd (Q·u forward and backward, 1.04-1.84×) and on small blocks without (3.5× at 30×101),
        # its contraction-path search running at every call (python -m benchmarks.bench_einsum)
        inner = self.B2() * (L.mT @ (A * G) @ R)
        return A * (L @ inner @ R.mT)

    def to_dense(self) -> Tensor:
        K = torch.kron(self.L(), self.R())
        a = self.A().reshape(-1, 1)
        return (a * K) @ (self.B2().reshape(-1, 1) * (K.mT * a.mT))
