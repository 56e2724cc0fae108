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
        lr: float = 1e-4,
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
        batches: dict[tuple[int, torch.dtype, torch.device, float, float], list[tuple[Tensor, Tensor]]] = {}
        for group in self.param_groups:
            if not group["factor"]:
                continue
            diag, off = group["params"]
            if diag.grad is None and off.grad is None:
                continue
            key = (diag.numel(), diag.dtype, diag.device, group["lr"], group["momentum"])
            batches.setdefault(key, []).append((diag, off))
        for (_, _, _, lr, momentum), factors in batches.items():
            self._factor_steps(factors, lr, momentum)
        groups = self.param_groups
        self.param_groups = [group for group in groups if not group["factor"]]  # Adam on the rest alone
        try:
            if self.param_groups:
                super().step()
        finally:
            self.param_groups = groups
        return loss

    def _factor_steps(self, factors: list[tuple[Tensor, Tensor]], lr: float, momentum: float) -> None:
        """The step of the module docstring for N factors of one size at once, as a stack (N, n, n)."""
        diags, offs = [diag for diag, _ in factors], [off for _, off in factors]
        n = diags[0].numel()
        positions = self._packed_positions(n, diags[0].device)
        diag, off = torch.stack(diags), torch.stack(offs)
        g_diag = torch.stack([torch.zeros_like(d) if d.grad is None else d.grad for d in diags]) / torch.sigmoid(diag)
        g_off = torch.stack([torch.zeros_like(o) if o.grad is None else o.grad for o in offs])  # ∂/∂L_ij
        L = _unpack_stack(torch.cat([positive(diag), off], dim=1), positions, n)
        D = lower_part_of_transposed_product(L, _unpack_stack(torch.cat([g_diag, g_off], dim=1), positions, n))
        states = [self.state[d] for d in diags]  # "step" too, which torch.optim.Adam's load_state_dict expects
        for state in states:
            if "factor_momentum" not in state:
                state["factor_momentum"], state["step"] = torch.zeros_like(D[0]), torch.tensor(0.0)
        momenta = [state["factor_momentum"] for state in states]
        torch._foreach_add_([state["step"] for state in states], 1)
        m = torch.stack(momenta).mul_(momentum).add_(D, alpha=1 - momentum)
        torch._foreach_copy_(momenta, list(m.unbind()))
        size = torch.linalg.matrix_norm(m)
        moving = (size > 0).tolist()  # one synchronisation; a factor whose momentum is zero does not move
        size = size.clamp_min(torch.finfo(m.dtype).tiny)[:, None, None]
        L = L + lower_product(L, m * (-lr / size))
        new_diags = inverse_softplus(L.diagonal(dim1=-2, dim2=-1).clone()).unbind()
        new_offs = L.view(len(factors), -1)[:, positions[n:]].unbind()
        chosen = [i for i, ok in enumerate(moving) if ok]
        if chosen:
            torch._foreach_copy_([diags[i] for i in chosen], [new_diags[i] for i in chosen])
            torch._foreach_copy_([offs[i] for i in chosen], [new_offs[i] for i in chosen])

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
        lower_product(A[..., :h, :h], B[..., :h, :h], min_size),
        A[..., h:, :h] @ B[..., :h, :h] + A[..., h:, h:] @ B[..., h:, :h],
        lower_product(A[..., h:, h:], B[..., h:, h:], min_size),
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
        lower_part_of_transposed_product(L[..., :h, :h], G[..., :h, :h], min_size)
        + torch.tril(L[..., h:, :h].mT @ G[..., h:, :h]),
        L[..., h:, h:].mT @ G[..., h:, :h],
        lower_part_of_transposed_product(L[..., h:, h:], G[..., h:, h:], min_size),
    )


def _lower_blocks(top: Tensor, bottom_left: Tensor, bottom_right: Tensor) -> Tensor:
    """[[top, 0], [bottom_left, bottom_right]] (on the last two dimensions)."""
    zeros = top.new_zeros(*top.shape[:-1], bottom_right.shape[-1])
    return torch.cat([torch.cat([top, zeros], -1), torch.cat([bottom_left, bottom_right], -1)], -2)


def _unpack_stack(packed: Tensor, positions: Tensor, n: int) -> Tensor:
    """``unpack_lower`` for a stack of packed factors (N, n(n+1)/2) -> (N, n, n)."""
    return packed.new_zeros(len(packed), n * n).scatter(1, positions.expand(len(packed), -1), packed).view(-1, n, n)
