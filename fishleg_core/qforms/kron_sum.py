"""Sum of Kronecker products (paper Appendix A.6): Q G = Σ_k M_L⁽ᵏ⁾ G M_R⁽ᵏ⁾."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from fishleg_core.qforms.base import QForm
from fishleg_core.qforms.kron import kron_low_rank_pays
from fishleg_core.qforms.positive import TriangularFactor
from fishleg_core.qforms.registry import QFORMS


@QFORMS.register("kron_sum")
class KronSumQ(QForm):
    """Σ_{k=1..K} (L_k L_kᵀ) ⊗ (R_k R_kᵀ).

    Term 1 starts at init_scale · I. Terms k ≥ 2 start as small random triangular factors, each scaled to
    spectral norm ``EXTRA_TERMS_NORM · init_scale / (K − 1)``, so that together they stay within 0.5 % of
    init_scale: Gram factors started at zero would never move, since their gradient vanishes there, and
    copies of term 1 would stay copies. They draw from torch's global random generator.

    A Kronecker start (``set_kronecker(C_L, C_R)``, the damped-KFAC start) goes to term 1 alone by default
    (``start_share`` = 0). With ``start_share`` = s > 0 the terms share it: term 1 takes (1 − s)·C_L C_Lᵀ ⊗
    C_R C_Rᵀ and each term k ≥ 2 takes s/(K − 1) of it with its factors C T_k, T_k = I + ``start_spread`` ·
    (strictly lower random N(0, 1) entries), so the sum stays near the start while the terms differ.
    """

    EXTRA_TERMS_NORM = 0.005
    init_deviation = 0.01

    def __init__(
        self,
        shape: tuple[int, int],
        init_scale: float = 1.0,
        K: int = 2,
        *,
        start_share: float = 0.0,
        start_spread: float = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(shape, init_scale)
        if not isinstance(K, int) or isinstance(K, bool) or K < 1:
            raise ValueError(f"kron_sum needs K >= 1 Kronecker terms, got K={K!r}")
        if not 0.0 <= start_share < 1.0 or start_spread < 0.0:
            raise ValueError(
                f"kron_sum needs 0 <= start_share < 1 and start_spread >= 0, got start_share={start_share!r}, "
                f"start_spread={start_spread!r}"
            )
        self.K = K
        self.start_share, self.start_spread = start_share, start_spread
        root = self.init_scale**0.25
        extra_root = (self.EXTRA_TERMS_NORM * self.init_scale / max(K - 1, 1)) ** 0.25
        self.L = nn.ModuleList([TriangularFactor.scaled_identity(self.rows, root, device=device, dtype=dtype)])
        self.R = nn.ModuleList([TriangularFactor.scaled_identity(self.cols, root, device=device, dtype=dtype)])
        for _ in range(K - 1):
            self.L.append(TriangularFactor(_random_triangular(self.rows, extra_root, device=device, dtype=dtype)))
            self.R.append(TriangularFactor(_random_triangular(self.cols, extra_root, device=device, dtype=dtype)))

    def _factors(self) -> list[tuple[TriangularFactor, TriangularFactor]]:
        """The pairs (L⁽ᵏ⁾, R⁽ᵏ⁾) of factors of all K terms (typed: a ModuleList yields plain Modules)."""
        return [(cast(TriangularFactor, L), cast(TriangularFactor, R)) for L, R in zip(self.L, self.R)]

    def set_kronecker(self, left: Tensor, right: Tensor) -> bool:
        """Term 1 takes the product (the small random terms k ≥ 2 stay as built, 0.5 % of init_scale), or,
        with ``start_share`` s > 0, (1 − s) of it, and each term k ≥ 2 s/(K − 1) of it with perturbed factors
        (a factor scaled by c scales its term by c⁴)."""
        if not self._kronecker_shapes(left, right):
            return False
        (L, R), *later = self._factors()
        share = self.start_share if later else 0.0
        L.assign_((1.0 - share) ** 0.25 * left)
        R.assign_((1.0 - share) ** 0.25 * right)
        if share > 0.0:
            root = (share / len(later)) ** 0.25
            for L_k, R_k in later:
                L_k.assign_(root * left @ self._perturbation(left))
                R_k.assign_(root * right @ self._perturbation(right))
        return True

    def _perturbation(self, factor: Tensor) -> Tensor:
        """I + start_spread · N, N strictly lower triangular with N(0, 1) entries (global RNG): a lower
        triangular matrix with unit diagonal, so C T keeps C's positive diagonal."""
        noise = torch.randn(factor.shape, device=factor.device, dtype=factor.dtype).tril(-1)
        return torch.eye(factor.shape[0], device=factor.device, dtype=factor.dtype) + self.start_spread * noise

    def grams(self) -> list[tuple[Tensor, Tensor]]:
        """The pairs (M_L⁽ᵏ⁾, M_R⁽ᵏ⁾) of all K terms."""
        return [(L.gram(), R.gram()) for L, R in self._factors()]

    def multiply(self, G: Tensor) -> Tensor:
        """Σ_k M_L⁽ᵏ⁾ G M_R⁽ᵏ⁾ term by term, each as L(Lᵀ X) while λ changes at every step. Not one torch.einsum
        over the stacked Gram matrices: that forms M = L Lᵀ on the autograd tape and measured slower with
        autograd on every A.6 block (1.29× or more, python -m benchmarks.bench_einsum)."""
        return cast(Tensor, sum(L.gram_matmul(R.gram_matmul(G.mT).mT) for L, R in self._factors()))

    def multiply_low_rank(self, left: Tensor, right: Tensor) -> Tensor | None:
        """Σ_k (M_L⁽ᵏ⁾ left)(M_R⁽ᵏ⁾ right)ᵀ, when it pays as for ``kron``. Hand-ordered: with λ changing at every
        step, L(Lᵀ left) costs 4m²r and never forms M = L Lᵀ (m³), which a contraction over stacked Gram
        matrices needs."""
        if not kron_low_rank_pays(self.shape, left.shape[-1]):
            return None
        return cast(Tensor, sum(L.gram_matmul(left) @ R.gram_matmul(right).mT for L, R in self._factors()))

    def to_dense(self) -> Tensor:
        return cast(Tensor, sum(torch.kron(M_L, M_R) for M_L, M_R in self.grams()))

    def extra_repr(self) -> str:
        share = f", start_share={self.start_share}, start_spread={self.start_spread}" if self.start_share else ""
        return f"{super().extra_repr()}, K={self.K}{share}"


def _random_triangular(n: int, spectral_norm: float, device=None, dtype=None) -> Tensor:
    """A random lower-triangular matrix with positive diagonal and the given spectral norm (global RNG)."""
    T = torch.randn(n, n, device=device, dtype=dtype).tril() / n**0.5
    T.diagonal().abs_().add_(0.1)
    return T * (spectral_norm / torch.linalg.matrix_norm(T, ord=2))
