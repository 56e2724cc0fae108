"""Exact Fisher-vector product F v = (1/B) Σ_b J_bᵀ H_b J_b v: one forward pass carrying J v, one reverse pass."""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad
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
    """F v = Jᵀ (H (J v)) / B. A single forward pass on dual parameters (θ, v) gives the outputs, on the
    autograd tape, and their tangent J v (forward-mode AD); H comes from the likelihood and Jᵀ(·) from one
    reverse pass through that same forward pass. No sampling (``generator`` is unused), no per-layer code.
    """
    leaves = {name: p.requires_grad_() for name, p in detached_parameters(model).items()}
    with torch.enable_grad(), model_function(model, inputs) as f, forward_ad.dual_level():
        dual_outputs = f({name: forward_ad.make_dual(leaf, vector[name]) for name, leaf in leaves.items()})
        outputs, jv = forward_ad.unpack_dual(dual_outputs)
        jv = torch.zeros_like(outputs) if jv is None else jv.detach()
    cotangent = likelihood.hessian_vp(outputs.detach(), jv) / outputs.shape[0]
    grads = torch.autograd.grad(outputs, list(leaves.values()), cotangent, allow_unused=True)
    return {name: torch.zeros_like(leaf) if g is None else g for (name, leaf), g in zip(leaves.items(), grads)}
