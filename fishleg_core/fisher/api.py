"""The public Fisher-vector product: (F + γ I) v on a batch, by a registered method."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fishleg_core._validation import check_callable, check_generator, check_number, check_tensor, check_type
from fishleg_core._vectors import checked_vector, trainable_parameters
from fishleg_core.fisher.functional import Inputs, ModelCall, OutputFn, selected_output
from fishleg_core.fisher.registry import FISHER_METHODS
from fishleg_core.likelihoods import Likelihood, likelihood_parameters, resolve_likelihood


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

    The model's parameters, buffers and the global RNG state are left unchanged.

    Args:
        model: the network.
        likelihood: a ``Likelihood`` or a registered name (``LIKELIHOODS``).
        inputs: the batch: a tensor, or a ``ModelCall`` with the model's positional and keyword arguments.
        vector: v, a dict keyed by the names of the model's trainable parameters (tied ones once, as
            ``named_parameters`` gives them), shaped like them, and, for a ``ParametricLikelihood``, its
            parameters as ``"likelihood.<name>"`` (F then is the Fisher in (θ, φ); method "exact" only).
        method: a name in ``FISHER_METHODS`` ("exact", "sampled" and "empirical" built in).
        damping: γ >= 0.
        generator: drives sampling methods.
        targets: the batch's data targets, used only by methods that need them ("empirical").
        output_fn: selects the output tensor of a model whose forward returns a tuple or a dict
            (``lambda out: out["logits"]``).

    Returns:
        (F + γ I)·v, keyed and shaped like ``vector``, without an autograd graph.

    Raises:
        UnknownNameError: ``method`` or ``likelihood`` is not registered.
        ValueError: ``damping`` < 0, ``vector`` misses, adds or misshapes a trainable parameter, or the
            likelihood does not fit the outputs.
        TypeError: an argument of the wrong kind (``inputs`` not a tensor or ``ModelCall``, ``vector`` not a
            dict, ...).
    """
    compute = FISHER_METHODS.get(method)
    likelihood = resolve_likelihood(likelihood)
    damping = check_number("damping", damping, 0.0, inclusive=True)
    check_type("inputs", inputs, (Tensor, ModelCall), "a tensor or a ModelCall(args, kwargs)")
    if targets is not None:
        check_tensor("targets", targets)
    check_generator(generator)
    check_callable("output_fn", output_fn, optional=True)
    own = likelihood_parameters(likelihood)
    if own and not getattr(compute, "supports_likelihood_parameters", False):
        raise NotImplementedError(
            f"fisher_vp: method {method!r} has no Fisher for the parameters of {likelihood!r} "
            f"({', '.join(own)}); use method='exact'"
        )
    vector = checked_vector({**trainable_parameters(model), **own}, vector)
    with selected_output(output_fn):
        fv = compute(
            model=model, likelihood=likelihood, inputs=inputs, targets=targets, vector=vector, generator=generator
        )
    return {name: fv[name] + damping * v for name, v in vector.items()}
