"""The public Fisher-vector product: (F + γ I) v on a batch, by a registered method."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fishleg_core._validation import check_callable, check_generator, check_number, check_tensor, check_type
from fishleg_core._vectors import checked_vector, trainable_parameters
from fishleg_core.fisher.functional import Inputs, ModelCall, OutputFn, selected_output
from fishleg_core.fisher.registry import FISHER_METHODS
from fishleg_core.likelihoods import Likelihood, resolve_likelihood


def fisher_vp(
    model: nn.Module,
    likelihood: Likelihood | str,
    inputs: Inputs,
    vector: dict[str, Tensor],
    method: str = "exact",
    damping: float = 0.0,
    generator: torch.Generator | None = None,
    targets: Tensor | None = None,
    output_fn: OutputFn | None = None,
) -> dict[str, Tensor]:
    """(F + damping·I)·vector on the batch ``inputs`` (a tensor, or a ``ModelCall`` with the model's
    positional and keyword arguments), F = (1/B) Σ_b J_bᵀ H_b J_b (J = ∂outputs/∂θ).

    ``vector`` and the result are dicts keyed by the names of the model's trainable parameters (tied ones
    once, as ``named_parameters`` gives them), shaped like them. ``likelihood`` is an instance or a
    registered name; ``method`` a name in ``FISHER_METHODS`` ("exact", "sampled" and "empirical" built in);
    ``generator`` drives sampling methods; ``targets`` are the batch's data targets, used only by methods
    that need them ("empirical"); ``output_fn`` selects the output tensor of a model whose forward returns a
    tuple or a dict (``lambda out: out["logits"]``). The model's parameters, buffers and the global RNG state are left
    unchanged, and the result carries no autograd graph.
    """
    compute = FISHER_METHODS.get(method)
    likelihood = resolve_likelihood(likelihood)
    damping = check_number("damping", damping, 0.0, inclusive=True)
    check_type("inputs", inputs, (Tensor, ModelCall), "a tensor or a ModelCall(args, kwargs)")
    if targets is not None:
        check_tensor("targets", targets)
    check_generator(generator)
    check_callable("output_fn", output_fn, optional=True)
    vector = checked_vector(trainable_parameters(model), vector)
    with selected_output(output_fn):
        fv = compute(
            model=model, likelihood=likelihood, inputs=inputs, targets=targets, vector=vector, generator=generator
        )
    return {name: fv[name] + damping * v for name, v in vector.items()}
