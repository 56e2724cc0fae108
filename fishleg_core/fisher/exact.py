"""Exact Fisher-vector product F v = (1/B) Σ_b J_bᵀ H_b J_b v: one forward pass carrying J v, one reverse pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor, nn

from fishleg_core.fisher.functional import detached_parameters, model_function
from fishleg_core.fisher.registry import FISHER_METHODS
from fishleg_core.likelihoods import Likelihood


@dataclass(frozen=True)
class Linearisation:
    """The outputs f(θ) on the autograd tape of the leaves θ, and their tangent J v (detached)."""

    leaves: dict[str, Tensor]
    outputs: Tensor
    jv: Tensor

    def transpose_product(self, cotangent: Tensor) -> dict[str, Tensor]:
        """Jᵀ c by one reverse pass through the forward pass, zeros for parameters the outputs ignore."""
        grads = torch.autograd.grad(self.outputs, list(self.leaves.values()), cotangent, allow_unused=True)
        return {name: torch.zeros_like(leaf) if g is None else g for (name, leaf), g in zip(self.leaves.items(), grads)}


def linearise(model: nn.Module, inputs: Tensor, vector: dict[str, Tensor]) -> Linearisation:
    """One forward pass on dual parameters (θ, v): the outputs, on the autograd tape, and their tangent J v
    (forward-mode AD)."""
    leaves = {name: p.requires_grad_() for name, p in detached_parameters(model).items()}
    with torch.enable_grad(), model_function(model, inputs) as f, forward_ad.dual_level():
        dual_outputs = f({name: forward_ad.make_dual(leaf, vector[name]) for name, leaf in leaves.items()})
        outputs, jv = forward_ad.unpack_dual(dual_outputs)
        jv = torch.zeros_like(outputs) if jv is None else jv.detach()
    return Linearisation(leaves, outputs, jv)


@FISHER_METHODS.register("exact")
def exact_fisher_vp(
    model: nn.Module,
    likelihood: Likelihood,
    inputs: Tensor,
    targets: Tensor | None,
    vector: dict[str, Tensor],
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """F v = Jᵀ (H (J v)) / B with H from the likelihood, from one forward pass carrying J v and one
    reverse pass through it. No sampling and no data targets (``targets`` and ``generator`` are unused),
    no per-layer code."""
    linear = linearise(model, inputs, vector)
    outputs = linear.outputs.detach()
    return linear.transpose_product(likelihood.hessian_vp(outputs, linear.jv) / outputs.shape[0])
