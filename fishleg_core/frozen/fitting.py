"""Fitting Q on a frozen model by minimising the auxiliary loss over a stream of directions u."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fishleg_core._validation import (
    check_callable,
    check_generator,
    check_integer,
    check_module,
    check_number,
    check_type,
)
from fishleg_core._vectors import (
    ParamDict,
    norm,
    scale,
    trainable_parameters,
)
from fishleg_core._warnings import warn_user
from fishleg_core.auxiliary.data import split_batch
from fishleg_core.auxiliary.gradient_factors import GradientFactors
from fishleg_core.auxiliary.loss import auxiliary_loss
from fishleg_core.auxiliary.optimizers import AuxOptimizerSpec, build_aux_optimizer
from fishleg_core.fisher import FISHER_METHODS, fisher_vp
from fishleg_core.fisher.functional import Inputs, OutputFn, select_output
from fishleg_core.likelihoods import Likelihood, likelihood_parameters, resolve_likelihood
from fishleg_core.model_q import LowRankFactors, ModelQ

Direction = ParamDict | tuple[ParamDict, LowRankFactors]
"""A unit vector u, optionally with low-rank factors of some of its blocks."""


def normalized_gradients(
    model: nn.Module,
    likelihood: Likelihood | str,
    batches: Iterable[tuple[Tensor, Tensor]],
    factors_for: ModelQ | None = None,
    output_fn: OutputFn | None = None,
    *,
    with_likelihood: bool = False,
) -> Iterator[Direction]:
    """u = g/‖g‖ for the minibatch gradient g of the batch NLL of each (inputs, targets) batch.

    With ``factors_for`` (the Q to be fitted), yields (u, factors) with the low-rank factors of u's linear
    and convolution blocks (``GradientFactors``), so that Q·u can use the cheaper low-rank product; its
    module hooks stay on the model until the generator is exhausted or closed (``contextlib.closing``).
    ``output_fn`` selects the output tensor of a model returning a tuple or a dict. ``with_likelihood``: g
    also in the parameters of a ``ParametricLikelihood`` (as ``"likelihood.<name>"``, like ``fisher_vp``).
    """
    likelihood = resolve_likelihood(likelihood)
    params = trainable_parameters(model)
    if with_likelihood:
        params.update(likelihood_parameters(likelihood))
    check_type("batches", batches, Iterable, "an iterable of (inputs, targets) pairs")
    if factors_for is not None:
        check_type("factors_for", factors_for, ModelQ, "a ModelQ or None")
    check_callable("output_fn", output_fn, optional=True)
    return _normalized_gradients(model, likelihood, params, batches, factors_for, output_fn)


def _normalized_gradients(
    model: nn.Module,
    likelihood: Likelihood,
    params: dict[str, nn.Parameter],
    batches: Iterable[tuple[Tensor, Tensor]],
    factors_for: ModelQ | None,
    output_fn: OutputFn | None,
) -> Iterator[Direction]:
    capture = GradientFactors.for_q(model, factors_for) if factors_for else None
    try:
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError(f"batches must yield (inputs, targets) pairs, got {type(batch).__name__}")
            inputs, targets = batch
            with torch.enable_grad():
                loss = likelihood.nll(select_output(model(inputs), output_fn), targets)
                grads = torch.autograd.grad(loss, list(params.values()))
            g = dict(zip(params, grads))
            g_norm = norm(g)
            if g_norm == 0:
                raise ValueError("normalized_gradients: a batch has a zero gradient, which gives no direction u")
            inverse_norm = 1.0 / g_norm
            u = scale(g, inverse_norm)
            if capture is None:
                yield u
            else:
                factors = capture.factors(g)
                yield u, {name: (left * inverse_norm, right) for name, (left, right) in factors.items()}
    finally:
        if capture is not None:
            capture.remove()


@dataclass
class FitResult:
    """The auxiliary-loss curve of a fit (one value per step) and its wall time."""

    curve: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def fit_q(
    model: nn.Module,
    likelihood: Likelihood | str,
    q: ModelQ,
    directions: Iterable[Direction],
    curvature_batches: Iterable[Tensor | tuple[Tensor, ...]],
    steps: int,
    lr: float = 3e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    damping: float = 1.0,
    method: str = "exact",
    schedule: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
    stop: Callable[[list[float]], bool] | None = None,
    generator: torch.Generator | None = None,
    progress: bool | str = False,
    output_fn: OutputFn | None = None,
    aux_optimizer: AuxOptimizerSpec = "adam",
) -> FitResult:
    """Minimise A(λ; u) on a frozen model, one optimizer step per (direction, curvature batch) pair.

    A stream that runs out before ``steps`` ends the fit with a warning (the curve is then shorter).

    Args:
        model: the frozen network (its parameters are not changed).
        likelihood: a ``Likelihood`` or a registered name (``LIKELIHOODS``).
        q: the ``ModelQ`` whose λ is fitted in place.
        directions: unit vectors u, alone or with low-rank factors of their blocks (e.g.
            ``normalized_gradients`` of fresh minibatches, with ``factors_for=q``).
        curvature_batches: the batches on which F_γ v is evaluated (other minibatches: input tensors or
            (inputs, targets) pairs, as ``FishLeg``'s aux_data).
        steps: the number of optimizer steps.
        lr: the learning rate of λ's optimizer.
        betas: the default betas of Adam (λ's default optimizer).
        damping: γ >= 0 of F_γ = F + γ I.
        method: a name in ``FISHER_METHODS``.
        schedule: builds an LR scheduler for λ's optimizer, stepped after each step.
        stop: ``stop(curve)`` may end the fit early (``FitResult.stopped_early``).
        generator: drives sampling Fisher methods.
        progress: show a progress bar (a string names it).
        output_fn: selects the output tensor of a model returning a tuple or a dict.
        aux_optimizer: the optimizer of λ: a name in ``AUX_OPTIMIZERS`` or ``{"name": ..., **options}``.

    Returns:
        A ``FitResult``: the auxiliary loss after each step (``curve``), the wall time and whether ``stop``
        ended the fit.

    Raises:
        UnknownNameError: ``likelihood``, ``method`` or ``aux_optimizer`` is not registered.
        ValueError: ``steps``, ``lr``, ``betas`` or ``damping`` out of range.
        TypeError: an argument of the wrong kind (``q`` not a ``ModelQ``, a non-callable ``schedule``, ...).
    """
    check_module(model)
    likelihood = resolve_likelihood(likelihood)
    check_type("q", q, ModelQ, "a ModelQ (see build_model_q)")
    check_type("directions", directions, Iterable, "an iterable of unit vectors")
    check_type("curvature_batches", curvature_batches, Iterable, "an iterable of input tensors or (inputs, targets)")
    check_integer("steps", steps, 0)
    check_number("lr", lr, 0.0)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2) in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        check_number(f"betas[{i}]", beta, 0.0, inclusive=True, below=1.0)
    check_number("damping", damping, 0.0, inclusive=True)
    FISHER_METHODS.get(method)
    check_callable("schedule", schedule, optional=True)
    check_callable("stop", stop, optional=True)
    check_generator(generator)
    check_callable("output_fn", output_fn, optional=True)
    optimizer = build_aux_optimizer(aux_optimizer, q, lr, betas=tuple(betas))
    scheduler = schedule(optimizer) if schedule else None
    result = FitResult()
    start = time.perf_counter()
    pairs = zip(range(steps), directions, curvature_batches)
    bar = tqdm(
        pairs, total=steps, desc=progress if isinstance(progress, str) else "fit", disable=not progress, leave=False
    )
    for _, direction, batch in bar:
        u, factors = direction if isinstance(direction, tuple) else (direction, None)
        inputs, targets = split_batch(batch, "fit_q: each of curvature_batches")

        def damped_fisher(v: ParamDict, inputs: Inputs = inputs, targets: Tensor | None = targets) -> ParamDict:
            return fisher_vp(
                model,
                likelihood,
                inputs,
                v,
                method,
                damping,
                generator,
                targets,
                output_fn=output_fn,
            )

        loss = auxiliary_loss(q, u, damped_fisher, factors)
        optimizer.zero_grad(set_to_none=True)
        loss.surrogate.backward()
        optimizer.step()
        if scheduler:
            scheduler.step()
        result.curve.append(loss.value.item())
        bar.set_postfix(aux_loss=f"{result.curve[-1]:.4g}", refresh=False)
        if stop and stop(result.curve):
            result.stopped_early = True
            break
    result.seconds = time.perf_counter() - start
    if len(result.curve) < steps and not result.stopped_early:
        warn_user(f"fit_q: directions or curvature_batches ran out after {len(result.curve)} of steps={steps}")
    return result
