r"""Multiplicative, normalised steps for the triangular factors of Q: the auxiliary optimizer "multiplicative".

For every triangular factor L (``TriangularFactor``: the Kronecker factors of ``kron``, ``ekfac``,
``kron_sum``, the Cholesky factor of ``dense``), with G = ∂A/∂L (lower-triangular):

.. math::
    D = \operatorname{tril}(L^\top G) \quad (= \partial_S A(L(I + S)) \text{ at } S = 0), \qquad
    m \leftarrow \beta m + (1 - \beta) D, \qquad
    S = -\eta\, m / \lVert m \rVert_F, \qquad L \leftarrow L (I + S).

S is lower-triangular, so L stays lower-triangular, and its diagonal is multiplied by 1 + S_ii ≥ 1 − η, so it
stays positive for η < 1. Each step changes L by a bounded relative amount, ‖ΔL‖₂ ≤ η ‖L‖₂, whatever the
width of the factor: per-entry Adam moves all n(n+1)/2 entries of a wide factor coherently, a change of
order η·n. Every other parameter of Q (diagonal scalings, low-rank couplings) takes Adam steps at
``adam_lr`` (default: the learning rate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from fishleg_core.auxiliary.optimizers import AUX_OPTIMIZERS, AuxiliaryAdam
from fishleg_core.qforms.positive import (
    TriangularFactor,
    inverse_softplus,
    packed_positions,
    positive,
    unpack_lower,
)


def triangular_factor_groups(q: nn.Module) -> list[dict[str, Any]]:
    """Parameter groups of ``q``'s λ: one ``{"params": [diag, off], "factor": True}`` per triangular factor,
    then ``{"params": [...], "factor": False}`` with every other trainable parameter."""
    factors = [m for m in q.modules() if isinstance(m, TriangularFactor) and m.diag.requires_grad]
    in_factors = {id(p) for f in factors for p in (f.diag, f.off)}
    rest = [p for p in q.parameters() if p.requires_grad and id(p) not in in_factors]
    groups: list[dict[str, Any]] = [{"params": [f.diag, f.off], "factor": True} for f in factors]
    return groups + ([{"params": rest, "factor": False}] if rest else [])


@AUX_OPTIMIZERS.register("multiplicative")
class MultiplicativeFactorSteps(AuxiliaryAdam):
    """L ← L(I + S) with S = −lr · m/‖m‖_F for each triangular factor (module docstring); Adam elsewhere.

    Takes the parameter groups of ``triangular_factor_groups(q)``, which ``build_aux_optimizer`` (so
    ``fit_q``, ``FishLeg`` and the study) hands it when given Q. ``momentum``: β of m. ``adam_lr``: Adam's
    rate for the parameters outside the factors (default ``lr``). LR schedulers scale both rates.
    """

    parameter_groups = staticmethod(triangular_factor_groups)

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.9,
        adam_lr: float | None = None,
    ) -> None:
        groups = list(params)
        if not all(isinstance(group, dict) and "factor" in group for group in groups):
            raise ValueError(
                "auxiliary optimizer 'multiplicative' needs the parameter groups of triangular_factor_groups(q): "
                "give build_aux_optimizer the ModelQ itself, not its parameters"
            )
        if not 0 <= momentum < 1:
            raise ValueError(f"auxiliary optimizer 'multiplicative': momentum must be in [0, 1), got {momentum}")
        if not 0 < lr < 1:
            raise ValueError(
                f"auxiliary optimizer 'multiplicative': lr (the relative step) must be in (0, 1), got {lr}"
            )
        for group in groups:
            group.setdefault("momentum", momentum)
            if not group["factor"] and adam_lr is not None:
                group.setdefault("lr", adam_lr)
        super().__init__(groups, lr=lr, betas=betas, eps=eps)
        self._positions: dict[tuple[int, torch.device], Tensor] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]  # overloads
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stashed = []
        for group in self.param_groups:
            if not group["factor"]:
                continue
            diag, off = group["params"]
            if diag.grad is None and off.grad is None:
                continue
            self._factor_step(diag, off, group["lr"], group["momentum"])
            stashed += [(diag, diag.grad), (off, off.grad)]
            diag.grad = off.grad = None  # Adam's step skips parameters without a gradient
        super().step()
        for p, grad in stashed:
            p.grad = grad
        return loss

    def _factor_step(self, diag: Tensor, off: Tensor, lr: float, momentum: float) -> None:
        n = diag.numel()
        positions = self._packed_positions(n, diag.device)
        g_diag = torch.zeros_like(diag) if diag.grad is None else diag.grad / torch.sigmoid(diag)  # ∂/∂L_ii
        g_off = torch.zeros_like(off) if off.grad is None else off.grad
        L = unpack_lower(torch.cat([positive(diag), off]), positions, n)
        D = lower_part_of_transposed_product(L, unpack_lower(torch.cat([g_diag, g_off]), positions, n))
        state = self.state[diag]  # "step" too, which torch.optim.Adam's load_state_dict expects in every state
        if "factor_momentum" not in state:
            state["factor_momentum"], state["step"] = torch.zeros_like(D), torch.tensor(0.0)
        state["step"] += 1
        m = state["factor_momentum"]
        m.mul_(momentum).add_(D, alpha=1 - momentum)
        size = m.norm()
        if size == 0:
            return
        L = L + lower_product(L, m * (-lr / size))
        diag.copy_(inverse_softplus(L.diagonal().clone()))
        off.copy_(L.view(-1)[positions[n:]])

    def _packed_positions(self, n: int, device: torch.device) -> Tensor:
        """``packed_positions(n)``, made once per size and device."""
        if (n, device) not in self._positions:
            self._positions[n, device] = packed_positions(n, device)
        return self._positions[n, device]


def lower_product(A: Tensor, B: Tensor, min_size: int = 128) -> Tensor:
    """A B for lower-triangular A and B (lower-triangular too), by 2×2 blocks A = [[A₁₁, 0], [A₂₁, A₂₂]]:
    A B = [[A₁₁B₁₁, 0], [A₂₁B₁₁ + A₂₂B₂₁, A₂₂B₂₂]], recursing on the diagonal blocks: about n³/3
    multiply-adds instead of n³."""
    n = A.shape[-1]
    if n < min_size:
        return torch.tril(A @ B)
    h = n // 2
    return _lower_blocks(
        lower_product(A[:h, :h], B[:h, :h], min_size),
        A[h:, :h] @ B[:h, :h] + A[h:, h:] @ B[h:, :h],
        lower_product(A[h:, h:], B[h:, h:], min_size),
    )


def lower_part_of_transposed_product(L: Tensor, G: Tensor, min_size: int = 128) -> Tensor:
    """tril(Lᵀ G) for lower-triangular L and G, by 2×2 blocks: its blocks are tril(L₁₁ᵀG₁₁) + tril(L₂₁ᵀG₂₁)
    (top left), L₂₂ᵀG₂₁ (bottom left) and tril(L₂₂ᵀG₂₂) (bottom right), recursing on the first and last:
    about n³/3 multiply-adds instead of n³."""
    n = L.shape[-1]
    if n < min_size:
        return torch.tril(L.mT @ G)
    h = n // 2
    return _lower_blocks(
        lower_part_of_transposed_product(L[:h, :h], G[:h, :h], min_size) + torch.tril(L[h:, :h].mT @ G[h:, :h]),
        L[h:, h:].mT @ G[h:, :h],
        lower_part_of_transposed_product(L[h:, h:], G[h:, h:], min_size),
    )


def _lower_blocks(top: Tensor, bottom_left: Tensor, bottom_right: Tensor) -> Tensor:
    """[[top, 0], [bottom_left, bottom_right]]."""
    zeros = top.new_zeros(top.shape[0], bottom_right.shape[1])
    return torch.cat([torch.cat([top, zeros], 1), torch.cat([bottom_left, bottom_right], 1)])
