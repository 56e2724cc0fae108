"""Q₀ from the damped KFAC factors: a start for the Kronecker forms near where their fit ends.

For a Linear block X = [W | b] (out × in(+1)), the per-example gradient is δ āᵀ, with ā the layer's input
(a 1 appended with a bias) and δ = ∂ℓ/∂s the gradient of the per-example NLL, at model-sampled targets, in
the layer's output s. KFAC's factors are G = E[δδᵀ] and A = E[āāᵀ]. A layer applied at several positions
(a convolution: KFC, Grosse & Martens 2016, with the unfolded patches as ā; a Linear layer on a sequence)
has the gradient Σ_t δ_t ā_tᵀ, and G = E_x[Σ_t δ_t δ_tᵀ], A = the mean of ā_t ā_tᵀ over examples and
positions. Each layer adapter says what ā and δ are (``LayerAdapter.kfac_capture``): per band of rows for
attention's q/k/v and grouped convolutions, and with a diagonal input factor on the rows of an embedding
table. With factored damping π = sqrt((tr G / dim G) / (tr A / dim A)) the start is

.. math::

    Q_0 = s\\,(G + \\sqrt{\\gamma}\\pi I)^{-1} \\otimes (A + \\sqrt{\\gamma}/\\pi\\, I)^{-1}
        = s\\,(C_G C_G^\\top) \\otimes (C_A C_A^\\top),

C the lower Cholesky factors of the inverted damped factors (so the start stays Kronecker, unlike
(G ⊗ A + γI)⁻¹), and s the best scalar on directions u, each with its own F_γ: with v₀ = Q u on the groups
left as they are and v₁ = Q₀ u on the started ones, the minimiser of Σ_u A(v₀ + s v₁; u) is

.. math::

    s = \\frac{\\sum_u u^\\top v_1 - v_0^\\top F_\\gamma v_1}{\\sum_u v_1^\\top F_\\gamma v_1}.

A form takes the start by its own ``set_kronecker`` (``QForm.set_kronecker(left, right)``,
``CoupledQ.set_kronecker(pairs)``), which returns False where it has none; such groups, and blocks without
factors (normalisation layers, parameters no adapter covers, a likelihood's own parameters such as a learned
σ), keep the Q they have (c·I as built); ``kfac_not_started`` lists them.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from fishleg_core._vectors import ParamDict, axpy, dot
from fishleg_core.auxiliary.loss import DampedFisher
from fishleg_core.coupled import CoupledQ
from fishleg_core.fisher import fisher_vp
from fishleg_core.frozen.fitting import normalized_gradients
from fishleg_core.layers.adapters import KFACCapture, LayerAdapter, adapter_for
from fishleg_core.layers.mapping import Block, map_blocks
from fishleg_core.likelihoods import Likelihood, resolve_likelihood
from fishleg_core.model_q import ModelQ


class NoKroneckerStart(ValueError):
    """No group of Q takes a KFAC start: no form with ``set_kronecker`` on a block with KFAC factors."""


@dataclass(frozen=True)
class KroneckerFactors:
    """G on a block's rows and A on its columns, F_block ≈ G ⊗ A (row-major vec): (rows × rows) and
    (cols × cols), or one per band of rows, stacked, for a block in bands (attention, grouped convolutions):
    (bands, rows/bands, rows/bands) and (bands, cols, cols). For a layer whose rows are its outputs G is the
    output-gradient factor E[δδᵀ] and A the input factor E[āāᵀ]; for an embedding table, whose rows the input
    indexes, G is the (diagonal) input factor and A the output-gradient factor."""

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
    """The KFAC factors of every block of ``model`` whose layer adapter has them (``takes_kfac``), keyed by
    block name, over ``inputs`` (a batch of examples) in chunks, with ``samples`` targets ŷ ~ p(y | x, θ) per
    input drawn from ``generator`` (chunk by chunk, then sample by sample): the input factor is the mean of
    ā āᵀ over the rows (examples × positions), the output-gradient factor Σ_rows δ δᵀ / (examples · samples)."""
    likelihood = resolve_likelihood(likelihood)
    with warnings.catch_warnings():  # parameters without an adapter simply get no factors here
        warnings.simplefilter("ignore")
        blocks = {block.name: block for block in map_blocks(model)}
    modules = _kfac_modules(model)
    input_sums: dict[str, list[Tensor]] = {}
    delta_sums: dict[str, list[Tensor]] = {}
    rows: dict[str, int] = {}
    on_rows: dict[str, bool] = {}
    for chunk in torch.split(inputs, chunk_size):
        captures, outputs = _record(model, modules, chunk)
        captures = [(name, c) for name, c in captures if _fits(blocks.get(name), c)]
        for name, capture in captures:
            input_sums[name] = _added(input_sums.get(name), capture.input_grams)
            rows[name] = rows.get(name, 0) + capture.rows
            on_rows[name] = capture.input_on_rows
        tape = [t for _, capture in captures for t in capture.outputs]
        for _ in range(samples):
            targets = likelihood.sample(outputs, generator)
            total_nll = likelihood.nll(outputs, targets) * len(chunk)  # Σ_b ℓ_b: its gradient in s_b is δ_b
            grads = list(torch.autograd.grad(total_nll, tape, retain_graph=True, allow_unused=True))
            for name, capture in captures:
                own = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, capture.outputs)]
                del grads[: len(capture.outputs)]
                delta_sums[name] = _added(delta_sums.get(name), [d.mT @ d for d in capture.deltas(own)])
    n = len(inputs)
    factors = {}
    for name in input_sums:
        inputs_factor = _stacked([s / rows[name] for s in input_sums[name]])
        deltas_factor = _stacked([s / (n * samples) for s in delta_sums[name]])
        pair = (inputs_factor, deltas_factor) if on_rows[name] else (deltas_factor, inputs_factor)
        factors[name] = KroneckerFactors(G=pair[0], A=pair[1])
    return factors


def damped_inverse_cholesky(factors: KroneckerFactors, damping: float) -> tuple[Tensor, Tensor]:
    """(C_G, C_A): lower Cholesky factors of (G + √γ·π·I)⁻¹ and (A + √γ/π·I)⁻¹ (factored damping, π per
    band for a block in bands, the factors then stacked like G and A).

    Each shift is at least ``_jitter`` (n·ε of the dtype times the factor's mean diagonal), so that a factor
    estimated from fewer samples than its size stays invertible with γ = 0 (the paper's setting); for
    γ > 0 the jitter is far below √γ·π and changes nothing. π = 1 when either factor is zero."""
    if factors.G.dim() == 3:
        pairs = [damped_inverse_cholesky(KroneckerFactors(G, A), damping) for G, A in zip(factors.G, factors.A)]
        return torch.stack([left for left, _ in pairs]), torch.stack([right for _, right in pairs])
    G, A = factors.G, factors.A
    mean_g, mean_a = G.trace().item() / G.shape[0], A.trace().item() / A.shape[0]
    pi = math.sqrt(mean_g / mean_a) if mean_g > 0 and mean_a > 0 else 1.0
    root = math.sqrt(damping)
    return (
        _inverse_cholesky(G + max(root * pi, _jitter(G)) * torch.eye(len(G), dtype=G.dtype, device=G.device)),
        _inverse_cholesky(A + max(root / pi, _jitter(A)) * torch.eye(len(A), dtype=A.dtype, device=A.device)),
    )


def _jitter(M: Tensor) -> float:
    """n·ε·(mean diagonal of M), ε the dtype's machine epsilon; n·ε for M = 0 (no curvature: a finite,
    arbitrary scale that the start's rescaling then sets)."""
    n = M.shape[0]
    mean = M.trace().item() / n
    return n * torch.finfo(M.dtype).eps * (mean if mean > 0 else 1.0)


def kfac_blocks(model: nn.Module) -> set[str]:
    """The names of the blocks of ``model`` that ``kronecker_factors`` gives factors for, from the model's
    structure alone: each module's own block where its adapter ``takes_kfac`` (and ``<attention>.out_proj``,
    whose factors its attention captures)."""
    names = set()
    for name, (module, _) in _kfac_modules(model).items():
        names.add(name)
        if isinstance(module, nn.MultiheadAttention):
            names.add(f"{name}.out_proj" if name else "out_proj")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return names & {block.name for block in map_blocks(model)}


@torch.no_grad()
def takes_kfac_start(group: CoupledQ) -> bool:
    """Whether ``group`` has a KFAC start: its ``set_kronecker`` accepts identity factors of its blocks'
    shapes (tried on a copy, so the group is left as it is)."""
    like = next(group.parameters())
    pairs = []
    for block in group.blocks:
        rows, cols = block.shape
        band = rows // block.row_parts
        left = torch.eye(band, dtype=like.dtype, device=like.device)
        right = torch.eye(cols, dtype=like.dtype, device=like.device)
        if block.row_parts > 1:
            left, right = left.expand(block.row_parts, band, band), right.expand(block.row_parts, cols, cols)
        pairs.append((left, right))
    return copy.deepcopy(group).set_kronecker(pairs)


@torch.no_grad()
def kfac_start(
    q: ModelQ,
    factors: dict[str, KroneckerFactors],
    damping: float,
    directions: Sequence[ParamDict],
    damped_fishers: Sequence[DampedFisher],
) -> tuple[float, list[str]]:
    """Set every group of ``q`` that takes it (its ``set_kronecker`` returns True, with factors for each of
    its blocks) to its damped-KFAC start, rescaled by the best scalar s on ``directions`` (each with its own
    F_γ) with the other groups as they are (module docstring).

    Args:
        q: the ``ModelQ`` whose groups are started in place.
        factors: the KFAC factors (G and A) of each block, by block name (``kronecker_factors``).
        damping: γ of the damped inverses (G + √γ π I)⁻¹ ⊗ (A + √γ/π I)⁻¹ (module docstring), as F_γ's.
        directions: the directions u of the scale's fit.
        damped_fishers: F_γ for each direction (v ↦ (F + γ I) v).

    Returns:
        s and the groups started, each named by its blocks ("0", "0+2+4" for a group over three).

    Raises:
        NoKroneckerStart: no group takes the start.
        ValueError: the best scale is not positive.
    """
    candidates = {
        group: [_like(damped_inverse_cholesky(factors[block.name], damping), group) for block in group.blocks]
        for group in q.groups
        if all(block.name in factors for block in group.blocks)
    }
    pairs = {group: group_pairs for group, group_pairs in candidates.items() if _start(group, group_pairs, 1.0)}
    if not pairs:
        raise NoKroneckerStart(
            "kfac_start: no group of q takes a KFAC start (a form with set_kronecker on blocks with KFAC factors)"
        )
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
    (``FishLeg(..., q=q)``, with the same ``damping``): G and A from the inputs of ``batches``, the scale s
    from the batches' normalised gradients, each with the exact F_γ on its own inputs (``kfac_start``).

    Args:
        q: the ``ModelQ`` built on ``model``, started in place.
        model: the network.
        likelihood: a ``Likelihood`` or a registered name (``LIKELIHOODS``).
        batches: (inputs, targets) pairs, at least one.
        damping: γ >= 0, the same as the training's.
        samples: targets drawn from the model per input for G.
        generator: drives those draws (seeded with 0 when None).

    Returns:
        s and the groups started, each named by its blocks; the others (forms without a start, blocks
        without KFAC factors, a ``ParametricLikelihood``'s own blocks such as a learned σ) keep their Q and
        are ``kfac_not_started(q, started)``. The directions u, and so the scale's fit, include the
        likelihood's parameters (F_γ in (θ, φ), method "exact").

    Raises:
        ValueError: ``batches`` is empty, or the best scale is not positive.
        NoKroneckerStart: no group of ``q`` takes the start.
        UnknownNameError: ``likelihood`` is not registered.
    """
    if not batches:
        raise ValueError("kfac_warm_start: give at least one (inputs, targets) batch")
    likelihood = resolve_likelihood(likelihood)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    inputs = torch.cat([x for x, _ in batches])
    factors = kronecker_factors(model, likelihood, inputs, samples, generator)
    directions = cast(list[ParamDict], list(normalized_gradients(model, likelihood, batches, with_likelihood=True)))
    fishers = [lambda v, x=x: fisher_vp(model, likelihood, x, v, method="exact", damping=damping) for x, _ in batches]
    return kfac_start(q, factors, damping, directions, fishers)


def kfac_not_started(q: ModelQ, started: Sequence[str]) -> list[str]:
    """The groups of ``q`` (named by their blocks, like ``started``) that a KFAC start left as they were:
    those not in ``started``, the list ``kfac_start`` returns."""
    names = ["+".join(block.name for block in group.blocks) for group in q.groups]
    return [name for name in names if name not in started]


def _start(group: CoupledQ, pairs: Sequence[tuple[Tensor, Tensor]], s: float) -> bool:
    """The group's start with Q scaled by s: each factor of a B Bᵀ = (L Lᵀ) ⊗ (R Rᵀ) scaled by s^¼."""
    return group.set_kronecker([(left * s**0.25, right * s**0.25) for left, right in pairs])


def _like(pair: tuple[Tensor, Tensor], group: CoupledQ) -> tuple[Tensor, Tensor]:
    like = next(group.parameters())
    return pair[0].to(like), pair[1].to(like)


def _inverse_cholesky(M: Tensor) -> Tensor:
    """The lower Cholesky factor of M⁻¹ for symmetric positive-definite M."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(M)))


def _kfac_modules(model: nn.Module) -> dict[str, tuple[nn.Module, LayerAdapter]]:
    """The modules with trainable parameters whose adapter gives KFAC factors, by module name."""
    found = {}
    for name, module in model.named_modules():
        adapter = adapter_for(module)
        if adapter is not None and adapter.takes_kfac(module) and any(p.requires_grad for p in module.parameters()):
            found[name] = (module, adapter)
    return found


def _fits(block: Block | None, capture: KFACCapture) -> bool:
    """Whether the capture describes ``block`` (its bands and its side's width; a block joined by tied
    parameters of another module, or cut otherwise, gets no factors)."""
    if block is None or len(capture.input_grams) != block.row_parts:
        return False
    width = capture.input_grams[0].shape[0]
    return width == (block.shape[0] if capture.input_on_rows else block.shape[1])


def _added(total: list[Tensor] | None, terms: list[Tensor]) -> list[Tensor]:
    return terms if total is None else [t + term for t, term in zip(total, terms)]


def _stacked(bands: list[Tensor]) -> Tensor:
    return bands[0] if len(bands) == 1 else torch.stack(bands)


def _record(
    model: nn.Module, modules: dict[str, tuple[nn.Module, LayerAdapter]], inputs: Tensor
) -> tuple[list[tuple[str, KFACCapture]], Tensor]:
    """One forward pass: each module's captures (by block name, one per call of the module), and the model's
    output."""
    captures: list[tuple[str, KFACCapture]] = []

    def hook(name: str, adapter: LayerAdapter) -> Callable[..., Any]:
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            output, found = adapter.kfac_capture(module, args, kwargs, output)
            captures.extend(((name + c.suffix).lstrip("."), c) for c in found)
            return output

        return record

    handles = [
        module.register_forward_hook(hook(name, adapter), with_kwargs=True)
        for name, (module, adapter) in modules.items()
    ]
    try:
        with torch.enable_grad():
            outputs = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captures, outputs
