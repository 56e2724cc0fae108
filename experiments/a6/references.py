"""Reference inverses from curvlinops (a maintained library, not hand-written): the exactly damped inverses
of the KFAC and EKFAC approximations of the Fisher, and the best rescaling of any Q on given probes.

curvlinops approximates the curvature of a summed loss, F_sum = N·F for N examples (our F is the mean over
examples, docs/design.md §2), so (F + γI)⁻¹ = N (F_sum + NγI)⁻¹: we invert with damping Nγ and multiply by N.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from curvlinops import EKFACLinearOperator, KFACInverseLinearOperator, KFACLinearOperator
from torch import Tensor, nn

import fishleg_core as fl
from experiments.a6.config import StudyConfig
from experiments.a6.coupling import layer_split
from experiments.a6.heldout import float64_copy
from experiments.a6.report import Row, result_row
from experiments.common.data import Examples, inputs_of
from fishleg_core.likelihoods.bernoulli import BernoulliLikelihood
from fishleg_core.likelihoods.categorical import CategoricalLikelihood
from fishleg_core.param_vectors import ParamDict, dot, scale

LinearMap = Callable[[ParamDict], ParamDict]


def summed_loss(likelihood: fl.Likelihood) -> nn.Module:
    """The torch loss whose sum over examples is Σ ℓ for ``likelihood`` (the likelihoods curvlinops knows)."""
    if isinstance(likelihood, BernoulliLikelihood):
        return nn.BCEWithLogitsLoss(reduction="sum")
    if isinstance(likelihood, CategoricalLikelihood):
        return nn.CrossEntropyLoss(reduction="sum")
    raise ValueError(f"curvlinops references need a bernoulli or categorical likelihood, got {likelihood!r}")


def curvlinops_inverse(
    kind: Literal["kfac", "ekfac"],
    model: nn.Module,
    likelihood: fl.Likelihood,
    inputs: Tensor,
    damping: float,
    samples: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
) -> LinearMap:
    """u ↦ (K + γI)⁻¹u, K the KFAC or EKFAC approximation of the Fisher on ``inputs`` (targets never used):
    Monte Carlo with ``samples`` model-sampled targets per input, or the exact expectation over the targets
    (curvlinops' type-2 Fisher) when ``samples`` is None. The damping is exact (eigendecompositions)."""
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    names, params = list(named), list(named.values())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # targets only give curvlinops the shapes: it samples (or sums over) its own
        data = [(x, likelihood.sample(model(x), generator)) for x in torch.split(inputs, batch_size)]
    operator = {"kfac": KFACLinearOperator, "ekfac": EKFACLinearOperator}[kind]
    mc = {"fisher_type": "mc", "mc_samples": samples} if samples is not None else {"fisher_type": "type-2"}
    approximation = operator(
        model,
        summed_loss(likelihood),
        params,
        data,
        seed=seed,
        check_deterministic=False,
        separate_weight_and_bias=False,
        **mc,
    )
    n = len(inputs)
    inverse = KFACInverseLinearOperator(approximation, damping=n * damping, use_exact_damping=True)

    def apply(u: ParamDict) -> ParamDict:
        with torch.enable_grad():  # the first product computes the factors, by backward passes
            result = inverse @ [u[name].detach() for name in names]
        return {name: n * piece for name, piece in zip(names, result)}

    return apply


def best_rescaling(q: LinearMap, probes: Sequence[ParamDict], damped_fisher: LinearMap) -> float:
    """c* = Σ_u uᵀQu / Σ_u (Qu)ᵀF_γ(Qu), the minimiser of Σ_u A(cQ; u) over c on ``probes``."""
    products = [q(u) for u in probes]
    numerator = sum(dot(u, v) for u, v in zip(probes, products))
    denominator = sum(dot(v, damped_fisher(v)) for v in products)
    return float(numerator / denominator)


def rescaled(q: LinearMap, c: float) -> LinearMap:
    """u ↦ c·Q u."""
    return lambda u: scale(q(u), c)


def kronecker_parameter_count(model: nn.Module, eigenvalues: bool = False) -> int:
    """Free entries of the symmetric Kronecker factors, Σ_blocks r(r+1)/2 + c(c+1)/2 (as many as ``kron``),
    plus the r·c corrected eigenvalues of each block for EKFAC."""
    shapes = [block.shape for block in fl.map_blocks(model)]
    return sum(r * (r + 1) // 2 + c * (c + 1) // 2 + (r * c if eigenvalues else 0) for r, c in shapes)


def _curvlinops_row(
    kind: Literal["kfac", "ekfac"],
    config: StudyConfig,
    model: nn.Module,
    likelihood: fl.Likelihood,
    train: Examples,
    evaluator: fl.ProbeEvaluator,
    rescale: bool = False,
) -> Row:
    """A reference row from curvlinops in float64 on the training inputs with ``kfac_samples`` model-sampled
    targets per input; with ``rescale``, c*·Q with c* the best rescaling on the probes (like the identity
    reference); with its within/between-layer split."""
    start = time.perf_counter()
    model64 = float64_copy(model)
    q = curvlinops_inverse(
        kind, model64, likelihood, inputs_of(train).double(), config.damping, config.kfac_samples, seed=config.seed
    )
    details: dict[str, Any] = {}
    if rescale:
        details["scale"] = c = best_rescaling(q, evaluator.probes, evaluator.damped_fisher)
        q = rescaled(q, c)
    seconds = time.perf_counter() - start
    name = f"{kind}_curvlinops" + ("_rescaled" if rescale else "")
    n_params = kronecker_parameter_count(model, eigenvalues=kind == "ekfac") + rescale
    return result_row(
        name, "reference", evaluator.evaluate(q), n_params, seconds, layer_split=layer_split(evaluator, q), **details
    )


CURVLINOPS_REFERENCES: dict[str, Callable[..., Row]] = {
    "kfac_curvlinops": partial(_curvlinops_row, "kfac"),
    "kfac_curvlinops_rescaled": partial(_curvlinops_row, "kfac", rescale=True),
    "ekfac_curvlinops": partial(_curvlinops_row, "ekfac"),
}
"""The study's curvlinops references, by row name: (config, model, likelihood, train, evaluator) -> row."""
