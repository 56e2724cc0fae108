"""The empirical Fisher F_emp v = (1/B) Σ_b ∇ℓ_b (∇ℓ_bᵀ v), with the batch's data targets.

Not the default, and not a Fisher in the sense FishLeg needs: F_emp uses the observed targets instead of
targets drawn from the model, so it is not the expected Hessian of the NLL, vanishes where the model fits
the data exactly, and its inverse is known to give poor natural-gradient steps (Kunstner et al., 2019).
It is here as a worked example of a method that needs the batch's targets.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fishleg_core.fisher.exact import linearise
from fishleg_core.fisher.registry import FISHER_METHODS
from fishleg_core.likelihoods import Likelihood


@FISHER_METHODS.register("empirical")
def empirical_fisher_vp(
    model: nn.Module,
    likelihood: Likelihood,
    inputs: Tensor,
    targets: Tensor | None,
    vector: dict[str, Tensor],
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """F_emp v = Jᵀ c / B with c_b = r_b ⟨r_b, (J v)_b⟩ and r_b = ∂ℓ_b/∂f_b at the data targets, since
    ∇ℓ_b = J_bᵀ r_b: one forward pass carrying J v, one reverse pass."""
    if targets is None:
        raise ValueError(
            "the empirical Fisher needs the batch's data targets: give batches as (inputs, targets) "
            "pairs (fisher_vp(..., targets=y))"
        )
    linear = linearise(model, inputs, vector)
    outputs = linear.outputs.detach().requires_grad_()
    with torch.enable_grad():
        total = likelihood.nll(outputs, targets) * outputs.shape[0]  # Σ_b ℓ_b
        (residual,) = torch.autograd.grad(total, outputs)
    per_example = (residual * linear.jv).flatten(1).sum(1)
    cotangent = residual * per_example.reshape(-1, *[1] * (residual.dim() - 1))
    return linear.transpose_product(cotangent / outputs.shape[0])
