"""Q₀ from the damped KFAC factors: a start for the Kronecker forms near where their fit ends.

For a Linear block X = [W | b] (out × in(+1)), the per-example gradient is δ āᵀ, with ā the layer's input
(a 1 appended with a bias) and δ = ∂ℓ/∂s the gradient of the per-example NLL, at model-sampled targets, in
the layer's output s. KFAC's factors are G = E[δδᵀ] and A = E[āāᵀ]. With factored damping
π = sqrt((tr G / dim G) / (tr A / dim A)) the start is

.. math::

    Q_0 = s\\,(G + \\sqrt{\\gamma}\\pi I)^{-1} \\otimes (A + \\sqrt{\\gamma}/\\pi\\, I)^{-1}
        = s\\,(C_G C_G^\\top) \\otimes (C_A C_A^\\top),

C the lower Cholesky factors of the inverted damped factors (so the start stays Kronecker, unlike
(G ⊗ A + γI)⁻¹), and s the best scalar on directions u, each with its own F_γ: with v₀ = Q u on the groups
left as they are and v₁ = Q₀ u on the started ones, the minimiser of Σ_u A(v₀ + s v₁; u) is

.. math::

    s = \\frac{\\sum_u u^\\top v_1 - v_0^\\top F_\\gamma v_1}{\\sum_u v_1^\\top F_\\gamma v_1}.

A QForm takes the start through a function registered in ``KRONECKER_STARTS`` under its class (``kron``,
``ekfac``, ``kron_sum``'s first term, ``diagonal`` as the diagonal of the product); a coupled form of several
blocks through ``COUPLED_STARTS`` (``tridiag_kron``: its diagonal blocks, the coupling kept small). Other
groups, and blocks other than nn.Linear, keep the Q they have (c·I as built).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from fishleg_core._vectors import ParamDict, axpy, dot
from fishleg_core.auxiliary.loss import DampedFisher
from fishleg_core.coupled import CoupledQ, TridiagKronQ
from fishleg_core.coupled.block import BlockQ
from fishleg_core.fisher import fisher_vp
from fishleg_core.frozen.fitting import normalized_gradients
from fishleg_core.likelihoods import Likelihood, resolve_likelihood
from fishleg_core.model_q import ModelQ
from fishleg_core.qforms import EKFACQ, DiagonalQ, KronQ, KronSumQ, QForm
from fishleg_core.qforms.positive import TriangularFactor, inverse_softplus
from fishleg_core.registry import Registry


@dataclass(frozen=True)
class KroneckerFactors:
    """G (out × out) and A (in(+1) × in(+1)) of one Linear block."""

    G: Tensor
    A: Tensor


def kronecker_factors(
    model: nn.Module,
    likelihood: Likelihood | str,
    inputs: Tensor,
    samples: int,
    generator: torch.Generator,
    chunk_size: int = 1000,
) -> dict[str, KroneckerFactors]:
    """A = mean_x ā āᵀ and G = mean_{x, ŷ} δ δᵀ per nn.Linear module with trainable parameters (keyed by
    module name), over ``inputs`` (a batch of examples) in chunks, with
    ``samples`` targets ŷ ~ p(y | x, θ) per input drawn from ``generator`` (chunk by chunk, then sample by
    sample)."""
    likelihood = resolve_likelihood(likelihood)
    modules = _linear_modules(model)
    G_sum: dict[str, Tensor] = {}
    A_sum: dict[str, Tensor] = {}
    for chunk in torch.split(inputs, chunk_size):
        layer_inputs, layer_outputs, outputs = _record(model, modules, chunk)
        for name, a in layer_inputs.items():
            a = a.reshape(-1, a.shape[-1])
            a_bar = torch.cat([a, torch.ones_like(a[:, :1])], 1) if modules[name].bias is not None else a
            A_sum[name] = A_sum.get(name, 0) + a_bar.mT @ a_bar
        for _ in range(samples):
            targets = likelihood.sample(outputs, generator)
            total_nll = likelihood.nll(outputs, targets) * len(chunk)  # Σ_b ℓ_b: its gradient in s_b is δ_b
            deltas = torch.autograd.grad(total_nll, list(layer_outputs.values()), retain_graph=True)
            for name, delta in zip(layer_outputs, deltas):
                delta = delta.reshape(-1, delta.shape[-1])
                G_sum[name] = G_sum.get(name, 0) + delta.mT @ delta
    n = len(inputs)
    return {name: KroneckerFactors(G=G_sum[name] / (n * samples), A=A_sum[name] / n) for name in modules}


def damped_inverse_cholesky(factors: KroneckerFactors, damping: float) -> tuple[Tensor, Tensor]:
    """(C_G, C_A): lower Cholesky factors of (G + √γ·π·I)⁻¹ and (A + √γ/π·I)⁻¹ (factored damping)."""
    G, A = factors.G, factors.A
    pi = math.sqrt((G.trace().item() / G.shape[0]) / max(A.trace().item() / A.shape[0], 1e-30))
    root = math.sqrt(damping)
    return (
        _inverse_cholesky(G + root * pi * torch.eye(len(G), dtype=G.dtype, device=G.device)),
        _inverse_cholesky(A + root / pi * torch.eye(len(A), dtype=A.dtype, device=A.device)),
    )


KroneckerStart = Callable[[QForm, Tensor, Tensor], None]
"""Sets a form to (left leftᵀ) ⊗ (right rightᵀ) (row-major vec), or to the closest it can hold."""

KRONECKER_STARTS: Registry[KroneckerStart] = Registry("Kronecker start")

CoupledStart = Callable[[CoupledQ, Sequence[tuple[Tensor, Tensor]]], None]
"""Sets a coupled form from one (left, right) Cholesky pair per block (in the group's block order)."""

COUPLED_STARTS: Registry[CoupledStart] = Registry("group Kronecker start")


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


@COUPLED_STARTS.register(BlockQ)
def _block_start(group: CoupledQ, pairs: Sequence[tuple[Tensor, Tensor]]) -> None:
    form = cast(BlockQ, group).form
    cast(KroneckerStart, kronecker_start_for(form))(form, *pairs[0])


@COUPLED_STARTS.register(TridiagKronQ)
def _tridiagonal_start(group: CoupledQ, pairs: Sequence[tuple[Tensor, Tensor]]) -> None:
    """Diagonal blocks L_i ⊗ R_i from the pairs; each coupling C_i ⊗ D_i rescaled to spectral norms
    √(coupling_init)·‖L_{i+1}‖₂ and √(coupling_init)·‖R_{i+1}‖₂, small against the block it feeds, as built."""
    tridiag = cast(TridiagKronQ, group)
    for L, R, (left, right) in zip(tridiag.L, tridiag.R, pairs):
        cast(TriangularFactor, L).assign_(left)
        cast(TriangularFactor, R).assign_(right)
    with torch.no_grad():
        for i, (C, D) in enumerate(zip(tridiag.C, tridiag.D)):
            left, right = pairs[i + 1]
            for coupling, target in ((C, left), (D, right)):
                norm = math.sqrt(tridiag.coupling_init) * torch.linalg.matrix_norm(target, ord=2)
                coupling.mul_(norm / torch.linalg.matrix_norm(coupling, ord=2))


def kronecker_start_for(form: QForm) -> KroneckerStart | None:
    """The registered start of ``form``'s class (or of its nearest registered base class), or None."""
    return _registered(KRONECKER_STARTS, form)


def takes_kfac_start(group: CoupledQ, with_factors: Container[str]) -> bool:
    """Whether ``group`` has a registered start (a ``BlockQ`` through its form's) and every block of it is
    in ``with_factors`` (block names, e.g. the keys of ``kronecker_factors``)."""
    if isinstance(group, BlockQ) and kronecker_start_for(group.form) is None:
        return False
    return _registered(COUPLED_STARTS, group) is not None and all(block.name in with_factors for block in group.blocks)


@torch.no_grad()
def kfac_start(
    q: ModelQ,
    factors: dict[str, KroneckerFactors],
    damping: float,
    directions: Sequence[ParamDict],
    damped_fishers: Sequence[DampedFisher],
) -> tuple[float, list[str]]:
    """Set every group of ``q`` that takes it to its damped-KFAC start, rescaled by the best scalar s on
    ``directions`` (each with its own F_γ) with the other groups as they are (module docstring). Returns s
    and the groups started, each named by its blocks ("0", "0+2+4" for a group over three)."""
    pairs = {
        group: [_like(damped_inverse_cholesky(factors[block.name], damping), group) for block in group.blocks]
        for group in q.groups
        if takes_kfac_start(group, factors)
    }
    if not pairs:
        raise ValueError("kfac_start: no group of q takes a KFAC start (Kronecker forms on nn.Linear blocks)")
    for group, group_pairs in pairs.items():
        _start(group, group_pairs, 1.0)
    started = {name for group in pairs for name in group.param_names}
    numerator, curvature = torch.zeros(()), torch.zeros(())
    for u, fisher in zip(directions, damped_fishers):
        qu = q(u)  # v₀ + v₁: the other groups' part v₀ is unchanged by the start
        v1 = {name: t if name in started else torch.zeros_like(t) for name, t in qu.items()}
        fv1 = fisher(v1)
        numerator = numerator + dot(u, v1) - dot(axpy(-1.0, v1, qu), fv1)
        curvature = curvature + dot(v1, fv1)
    s = (numerator / curvature).item()
    if not s > 0:
        raise ValueError(f"kfac_start: the best scale of the KFAC start is {s:g}, not positive")
    for group, group_pairs in pairs.items():
        _start(group, group_pairs, s)
    return s, ["+".join(block.name for block in group.blocks) for group in pairs]


def kfac_warm_start(
    q: ModelQ,
    model: nn.Module,
    likelihood: Likelihood | str,
    batches: Sequence[tuple[Tensor, Tensor]],
    *,
    damping: float,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[float, list[str]]:
    """Start ``q`` (built on ``model``) from the damped KFAC factors, before training with it
    (``FishLeg(..., q=q)``, with the same ``damping``): G and A from the inputs of ``batches`` ((inputs,
    targets) pairs; ``samples`` targets drawn from the model per input), the scale s from the batches'
    normalised gradients, each with F_γ on its own inputs. Returns s and the groups started (by block names);
    the others (forms without a start, blocks other than nn.Linear) keep their Q."""
    if not batches:
        raise ValueError("kfac_warm_start: give at least one (inputs, targets) batch")
    likelihood = resolve_likelihood(likelihood)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    inputs = torch.cat([x for x, _ in batches])
    factors = kronecker_factors(model, likelihood, inputs, samples, generator)
    directions = cast(list[ParamDict], list(normalized_gradients(model, likelihood, batches)))
    fishers = [lambda v, x=x: fisher_vp(model, likelihood, x, v, method="exact", damping=damping) for x, _ in batches]
    return kfac_start(q, factors, damping, directions, fishers)


def _start(group: CoupledQ, pairs: Sequence[tuple[Tensor, Tensor]], s: float) -> None:
    """The group's start with Q scaled by s: each factor of a B Bᵀ = (L Lᵀ) ⊗ (R Rᵀ) scaled by s^¼."""
    scaled = [(left * s**0.25, right * s**0.25) for left, right in pairs]
    cast(CoupledStart, _registered(COUPLED_STARTS, group))(group, scaled)


def _like(pair: tuple[Tensor, Tensor], group: CoupledQ) -> tuple[Tensor, Tensor]:
    like = next(group.parameters())
    return pair[0].to(like), pair[1].to(like)


def _registered(registry: Registry, obj: object) -> Callable | None:
    return next((registry.get(cls) for cls in type(obj).__mro__ if cls in registry), None)


def _inverse_cholesky(M: Tensor) -> Tensor:
    """The lower Cholesky factor of M⁻¹ for symmetric positive-definite M."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(M)))


def _linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(p.requires_grad for p in module.parameters(recurse=False))
    }


def _record(
    model: nn.Module, modules: dict[str, nn.Linear], inputs: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """One forward pass: each Linear module's input (detached) and output (on the tape), and the model's output."""
    layer_inputs: dict[str, Tensor] = {}
    layer_outputs: dict[str, Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            layer_inputs[name] = args[0].detach()
            layer_outputs[name] = output

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.enable_grad():
            outputs = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return layer_inputs, layer_outputs, outputs
