"""Sampled Fisher-vector product (paper Algorithm 1, line 6): the Hessian of the NLL at model-drawn targets."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fishleg_core.fisher.functional import Inputs, detached_parameters, model_function
from fishleg_core.fisher.registry import FISHER_METHODS
from fishleg_core.likelihoods import Likelihood


@FISHER_METHODS.register("sampled")
def sampled_fisher_vp(
    model: nn.Module,
    likelihood: Likelihood,
    inputs: Inputs,
    targets: Tensor | None,
    vector: dict[str, Tensor],
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """F v ≈ ∇²_θ L(θ; ŷ) v with ŷ ~ p(y | x, θ) and L the batch NLL; unbiased since E_ŷ[∇²ℓ] = F.

    The Hessian-vector product is forward-over-reverse (jvp of grad). ŷ is drawn from ``generator``; if it
    is None, from a fresh generator seeded from OS entropy, so calls are independent and the global RNG
    is not used.
    """
    params = detached_parameters(model)
    with model_function(model, inputs) as f:
        with torch.no_grad():
            outputs = f(params)
        if generator is None:
            generator = torch.Generator(device=outputs.device)
            generator.seed()
        targets = likelihood.sample(outputs, generator)
        gradient = torch.func.grad(lambda p: likelihood.nll(f(p), targets))
        _, hv = torch.func.jvp(gradient, (params,), (vector,))  # type: ignore[misc]  # stubs: 3-tuple with has_aux
    return hv
