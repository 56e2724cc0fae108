"""Q₀ from the damped KFAC factors, for the forms that can hold a Kronecker product.

Per Linear block, with G = E[δδᵀ] and A = E[āāᵀ] (``kronecker_factors``) and factored damping
π = sqrt((tr G / dim G) / (tr A / dim A)), the start is

    Q₀ = s · (G + √γ·π·I)⁻¹ ⊗ (A + √γ/π·I)⁻¹ = s · (C_G C_Gᵀ) ⊗ (C_A C_Aᵀ),

C the lower Cholesky factors of the inverted damped factors (so the start stays Kronecker, unlike
(G ⊗ A + γI)⁻¹), and s = Σ_u uᵀQ₀u / Σ_u (Q₀u)ᵀF_γ(Q₀u) the best scalar on training directions (which
minimises the mean of A(s·Q₀; u) over them). A form takes the start through a function registered in
``KRONECKER_STARTS`` under its class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import Tensor, nn

import fishleg_core as fl
from experiments.config import StudyConfig
from experiments.fit import best_identity_scale
from experiments.kfac_reference import KroneckerFactors, kronecker_factors
from fishleg_core import ModelQ, QForm, Registry
from fishleg_core.auxiliary import DampedFisher
from fishleg_core.model_q import BlockQ
from fishleg_core.qforms.diagonal import DiagonalQ
from fishleg_core.qforms.ekfac import EKFACQ
from fishleg_core.qforms.kron import KronQ
from fishleg_core.qforms.kron_sum import KronSumQ
from fishleg_core.qforms.positive import TriangularFactor, inverse_softplus
from fishleg_core.vectors import ParamDict, dot

KroneckerStart = Callable[[QForm, Tensor, Tensor], None]
"""Sets a form to (left leftᵀ) ⊗ (right rightᵀ) (row-major vec), or to the closest it can hold."""

KRONECKER_STARTS: Registry[KroneckerStart] = Registry("Kronecker start")


@KRONECKER_STARTS.register(KronQ)
@KRONECKER_STARTS.register(EKFACQ)  # with A = B² = 1 (as built) it is L Lᵀ ⊗ R Rᵀ
def _kronecker_factors(form: QForm, left: Tensor, right: Tensor) -> None:
    kron = cast("KronQ | EKFACQ", form)  # registered for these classes only
    kron.L.assign_(left)
    kron.R.assign_(right)


@KRONECKER_STARTS.register(KronSumQ)
def _first_term(form: QForm, left: Tensor, right: Tensor) -> None:
    """Term 1 takes the product; the small random terms k ≥ 2 stay as built (0.5 % of init_scale)."""
    kron_sum = cast(KronSumQ, form)  # registered for this class only
    cast(TriangularFactor, kron_sum.L[0]).assign_(left)
    cast(TriangularFactor, kron_sum.R[0]).assign_(right)


@KRONECKER_STARTS.register(DiagonalQ)
def _diagonal_of_product(form: QForm, left: Tensor, right: Tensor) -> None:
    """The diagonal of the product: D_ij = (C_G C_Gᵀ)_ii (C_A C_Aᵀ)_jj."""
    with torch.no_grad():
        cast(DiagonalQ, form).D.raw.copy_(inverse_softplus(torch.outer(left.square().sum(1), right.square().sum(1))))


def kronecker_start_for(form: QForm) -> KroneckerStart | None:
    """The registered start of ``form``'s class (or of its nearest registered base class), or None."""
    return next((KRONECKER_STARTS.get(cls) for cls in type(form).__mro__ if cls in KRONECKER_STARTS), None)


def supports_kfac_start(q: ModelQ) -> bool:
    """Whether every group of ``q`` is one block whose form has a registered Kronecker start."""
    return all(isinstance(group, BlockQ) and kronecker_start_for(group.form) is not None for group in q.groups)


def damped_inverse_cholesky(factors: KroneckerFactors, damping: float) -> tuple[Tensor, Tensor]:
    """(C_G, C_A): lower Cholesky factors of (G + √γ·π·I)⁻¹ and (A + √γ/π·I)⁻¹ (factored damping)."""
    G, A = factors.G, factors.A
    pi = math.sqrt((G.trace().item() / G.shape[0]) / max(A.trace().item() / A.shape[0], 1e-30))
    root = math.sqrt(damping)
    return (
        _inverse_cholesky(G + root * pi * torch.eye(len(G), dtype=G.dtype, device=G.device)),
        _inverse_cholesky(A + root / pi * torch.eye(len(A), dtype=A.dtype, device=A.device)),
    )


def _inverse_cholesky(M: Tensor) -> Tensor:
    """The lower Cholesky factor of M⁻¹ for symmetric positive-definite M."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(M)))


@torch.no_grad()
def kfac_start(
    q: ModelQ,
    factors: dict[str, KroneckerFactors],
    damping: float,
    directions: Sequence[ParamDict],
    damped_fishers: Sequence[DampedFisher],
) -> float:
    """Set every block of ``q`` to its damped-KFAC start (see the module docstring) rescaled by the best
    scalar s on ``directions`` (each with its own F_γ); returns s."""
    if not supports_kfac_start(q):
        raise ValueError("kfac_start: some block of q has a form without a registered Kronecker start")
    choleskys: dict[BlockQ, tuple[Tensor, Tensor]] = {}
    for q_group in q.groups:
        group = cast(BlockQ, q_group)  # supports_kfac_start checked that every group is a BlockQ
        left, right = damped_inverse_cholesky(factors[group.block.name], damping)
        like = next(group.form.parameters())
        choleskys[group] = (left.to(like), right.to(like))
        cast(KroneckerStart, kronecker_start_for(group.form))(group.form, *choleskys[group])
    products = [q(u) for u in directions]
    curvature = sum(dot(qu, fisher(qu)) for qu, fisher in zip(products, damped_fishers))
    s = cast(Tensor, sum(dot(u, qu) for u, qu in zip(directions, products)) / curvature).item()
    for group, (left, right) in choleskys.items():
        cast(KroneckerStart, kronecker_start_for(group.form))(group.form, left * s**0.25, right * s**0.25)
    return s


def initial_q(
    build: Callable[[float], ModelQ],
    config: StudyConfig,
    model: nn.Module,
    likelihood: fl.Likelihood,
    train: Tensor,
    monitor_set: tuple[list[ParamDict], list[Tensor]],
    kfac_seed: int,
) -> tuple[ModelQ, dict[str, Any]]:
    """Q₀ = ``build(init_scale)`` (a form on every block) at c·I, c the best identity multiple on the
    monitor's directions (each with its own F_γ), then, with ``config.init == "kfac"`` and a form that takes
    it, the rescaled damped-KFAC start (factors from ``kfac_samples`` sampled targets per training input,
    drawn with ``kfac_seed``). Returns Q₀ and how it was made."""
    directions, curvature = monitor_set
    fishers = [partial(fl.fisher_vp, model, likelihood, x, method="exact", damping=config.damping) for x in curvature]
    init_scale = best_identity_scale(directions, [fisher(u) for fisher, u in zip(fishers, directions)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # random initial terms (kron_sum) are the same in every run
        q = build(init_scale)
    start: dict[str, Any] = {"init": "identity", "init_scale": init_scale}
    if config.init == "kfac" and supports_kfac_start(q):
        generator = torch.Generator().manual_seed(kfac_seed)
        factors = kronecker_factors(model, likelihood, train, config.kfac_samples, generator)
        start = {**start, "init": "kfac", "kfac_scale": kfac_start(q, factors, config.damping, directions, fishers)}
    return q, start
