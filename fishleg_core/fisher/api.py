"""The public Fisher-vector product: (F + γ I) v on a batch, by a registered method."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fishleg_core.vectors import trainable_parameters
from fishleg_core.fisher.registry import FISHER_METHODS
from fishleg_core.likelihoods import Likelihood, resolve_likelihood


def fisher_vp(
    model: nn.Module,
    likelihood: Likelihood | str,
    inputs: Tensor,
    vector: dict[str, Tensor],
    method: str = "exact",
    damping: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """(F + damping·I)·vector on the batch ``inputs``, F = (1/B) Σ_b J_bᵀ H_b J_b (J = ∂outputs/∂θ).

    ``vector`` and the result are dicts keyed by the names of the model's trainable parameters (tied ones
    once, as ``named_parameters`` gives them), shaped like them. ``likelihood`` is an instance or a
    registered name; ``method`` a name in ``FISHER_METHODS`` ("exact" or "sampled" built in); ``generator``
    drives sampling methods. The model's parameters, buffers and the global RNG state are left unchanged,
    and the result carries no autograd graph.
    """
    compute = FISHER_METHODS.get(method)
    likelihood = resolve_likelihood(likelihood)
    if not isinstance(damping, (int, float)) or not math.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    vector = _checked_vector(trainable_parameters(model), vector)
    fv = compute(model, likelihood, inputs, vector, generator)
    return {name: fv[name] + damping * v for name, v in vector.items()}


def _checked_vector(params: dict[str, Tensor], vector: dict[str, Tensor]) -> dict[str, Tensor]:
    """``vector`` detached, in parameter order, cast to each parameter's dtype and device, after checks."""
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    if not isinstance(vector, dict):
        raise TypeError(f"vector must be a dict of tensors keyed by parameter name; got {type(vector).__name__}")
    missing = [name for name in params if name not in vector]
    if missing:
        raise ValueError(f"vector has no entry for the trainable parameters {missing}")
    extra = [name for name in vector if name not in params]
    if extra:
        raise ValueError(f"vector has entries {extra} that are not trainable parameters of the model")
    for name, p in params.items():
        v = vector[name]
        if not isinstance(v, Tensor) or v.shape != p.shape:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"vector[{name!r}] must have the shape {tuple(p.shape)} of the parameter; got {got}")
    return {name: vector[name].detach().to(dtype=p.dtype, device=p.device) for name, p in params.items()}
