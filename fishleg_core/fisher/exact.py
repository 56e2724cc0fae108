"""Exact Fisher-vector product F v = (1/B) Σ_b J_bᵀ H_b J_b v by one jvp and one vjp."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fishleg_core.fisher.functional import detached_parameters, model_function
from fishleg_core.fisher.registry import FISHER_METHODS
from fishleg_core.likelihoods import Likelihood


@FISHER_METHODS.register("exact")
def exact_fisher_vp(
    model: nn.Module,
    likelihood: Likelihood,
    inputs: Tensor,
    vector: dict[str, Tensor],
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """F v = Jᵀ (H (J v)) / B: J v by forward mode, H from the likelihood, Jᵀ(·) by reverse mode.

    No sampling (``generator`` is unused) and no per-layer code: any differentiable model works.
    """
    params = detached_parameters(model)
    with model_function(model, inputs) as f:
        outputs, jv = torch.func.jvp(f, (params,), (vector,))
        _, pullback = torch.func.vjp(f, params)
        (fv,) = pullback(likelihood.hessian_vp(outputs, jv) / outputs.shape[0])
    return fv
