"""Fitting Q on a frozen model by minimising the auxiliary loss, and measuring the fit exactly."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, cg
from torch import Tensor, nn
from tqdm.auto import tqdm

from fishleg_core.auxiliary import AuxiliaryAdam, auxiliary_loss
from fishleg_core.checks import (
    check_callable,
    check_generator,
    check_integer,
    check_module,
    check_number,
    check_tensor,
    check_type,
)
from fishleg_core.fisher import FISHER_METHODS, fisher_vp
from fishleg_core.inverse_fisher import LowRankFactors, ModelQ
from fishleg_core.likelihoods import Likelihood, resolve_likelihood
from fishleg_core.lowrank import GradientFactors
from fishleg_core.vectors import (
    ParamDict,
    axpy,
    checked_vector,
    dot,
    flatten,
    norm,
    scale,
    trainable_parameters,
    unflatten,
)


Direction = Union[ParamDict, tuple[ParamDict, LowRankFactors]]
"""A unit vector u, optionally with low-rank factors of some of its blocks."""


def normalized_gradients(
    model: nn.Module,
    likelihood: Likelihood | str,
    batches: Iterable[tuple[Tensor, Tensor]],
    factors_for: ModelQ | None = None,
) -> Iterator[Direction]:
    """u = g/‖g‖ for the minibatch gradient g of the batch NLL of each (inputs, targets) batch.

    With ``factors_for`` (the Q to be fitted), yields (u, factors) with the low-rank factors of u's
    linear-layer blocks (``GradientFactors``), so that Q·u can use the cheaper low-rank product; its module
    hooks stay on the model until the generator is exhausted or closed (``contextlib.closing``).
    """
    likelihood = resolve_likelihood(likelihood)
    params = trainable_parameters(model)
    check_type("batches", batches, Iterable, "an iterable of (inputs, targets) pairs")
    if factors_for is not None:
        check_type("factors_for", factors_for, ModelQ, "a ModelQ or None")
    return _normalized_gradients(model, likelihood, params, batches, factors_for)


def _normalized_gradients(
    model: nn.Module,
    likelihood: Likelihood,
    params: dict[str, nn.Parameter],
    batches: Iterable[tuple[Tensor, Tensor]],
    factors_for: ModelQ | None,
) -> Iterator[Direction]:
    capture = GradientFactors.for_q(model, factors_for) if factors_for else None
    try:
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError(f"batches must yield (inputs, targets) pairs, got {type(batch).__name__}")
            inputs, targets = batch
            with torch.enable_grad():
                loss = likelihood.nll(model(inputs), targets)
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
    curvature_batches: Iterable[Tensor],
    steps: int,
    lr: float = 3e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    damping: float = 1.0,
    method: str = "exact",
    schedule: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
    stop: Callable[[list[float]], bool] | None = None,
    generator: torch.Generator | None = None,
    progress: bool | str = False,
) -> FitResult:
    """Minimise A(λ; u) with Adam on a frozen model, one step per (direction, curvature batch) pair.

    ``directions`` yields unit vectors u, alone or with low-rank factors of their blocks (e.g.
    ``normalized_gradients`` of fresh minibatches, with ``factors_for=q``), and
    ``curvature_batches`` the inputs on which F_γ v is evaluated (other minibatches). ``schedule`` builds an
    LR scheduler for the Adam optimizer; ``stop(curve)`` may end the fit early (``stopped_early``).
    ``progress`` shows a progress bar (a string names it).
    """
    check_module(model)
    likelihood = resolve_likelihood(likelihood)
    check_type("q", q, ModelQ, "a ModelQ (see build_model_q)")
    check_type("directions", directions, Iterable, "an iterable of unit vectors")
    check_type("curvature_batches", curvature_batches, Iterable, "an iterable of input tensors")
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
    optimizer = AuxiliaryAdam(q.parameters(), lr, tuple(betas))
    scheduler = schedule(optimizer) if schedule else None
    result = FitResult()
    start = time.perf_counter()
    pairs = zip(range(steps), directions, curvature_batches)
    bar = tqdm(pairs, total=steps, desc=progress if isinstance(progress, str) else "fit", disable=not progress,
               leave=False)
    for _, direction, inputs in bar:
        u, factors = direction if isinstance(direction, tuple) else (direction, None)
        loss = auxiliary_loss(
            q, u, lambda v: fisher_vp(model, likelihood, inputs, v, method, damping, generator), factors  # noqa: B023
        )
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
    return result


@dataclass
class QEvaluation:
    """Per probe direction u: A(Q; u), the exact optimum A*(u) = −½ uᵀF_γ⁻¹u and the normalised error
    e(Q; u) = ‖Qu − F_γ⁻¹u‖_{F_γ} / ‖F_γ⁻¹u‖_{F_γ} = sqrt((A − A*)/(−A*))."""

    aux_loss: list[float]
    optimal_aux_loss: list[float]
    normalized_error: list[float]

    @property
    def mean_aux_loss(self) -> float:
        return statistics.fmean(self.aux_loss)

    @property
    def mean_optimal_aux_loss(self) -> float:
        return statistics.fmean(self.optimal_aux_loss)

    @property
    def mean_normalized_error(self) -> float:
        return statistics.fmean(self.normalized_error)


class ProbeEvaluator:
    """Exact measurement of Q on fixed probe directions and a fixed curvature set.

    F_γ v is the exact damped Fisher on ``curvature_inputs`` (in chunks of ``chunk_size`` examples,
    weighted by their sizes). F_γ⁻¹u is solved once per probe by conjugate gradients (scipy) to relative
    residual ``cg_rtol`` (default 1e-10 in float64, 1e-5 in float32), then reused for every Q evaluated.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood | str,
        probes: Sequence[ParamDict],
        curvature_inputs: Tensor,
        damping: float,
        chunk_size: int | None = None,
        cg_rtol: float | None = None,
        cg_maxiter: int | None = None,
    ) -> None:
        self.params = trainable_parameters(model)
        self.model = model
        self.likelihood = resolve_likelihood(likelihood)
        check_type("probes", probes, Sequence, "a list of probe directions (dicts of tensors by parameter name)")
        if not probes:
            raise ValueError("probes: ProbeEvaluator needs at least one probe direction")
        self.probes = [checked_vector(self.params, u, f"probes[{i}]") for i, u in enumerate(probes)]
        check_tensor("curvature_inputs", curvature_inputs)
        if curvature_inputs.dim() == 0 or len(curvature_inputs) == 0:
            shape = tuple(curvature_inputs.shape)
            raise ValueError(f"curvature_inputs must hold at least one example, got shape {shape}")
        if chunk_size is not None:
            check_integer("chunk_size", chunk_size, 1)
        self.chunks = torch.split(curvature_inputs, chunk_size or len(curvature_inputs))
        self.damping = check_number("damping", damping, 0.0, inclusive=True)
        if cg_rtol is not None:
            check_number("cg_rtol", cg_rtol, 0.0)
        if cg_maxiter is not None:
            check_integer("cg_maxiter", cg_maxiter, 1)
        dtype = next(iter(self.params.values())).dtype
        self.cg_rtol = cg_rtol if cg_rtol is not None else (1e-10 if dtype == torch.float64 else 1e-5)
        self.cg_maxiter = cg_maxiter
        self._solutions: list[ParamDict] | None = None

    def damped_fisher(self, v: ParamDict) -> ParamDict:
        """F_γ v on the whole curvature set."""
        total = sum(len(chunk) for chunk in self.chunks)
        products = [fisher_vp(self.model, self.likelihood, chunk, v, "exact", 0.0) for chunk in self.chunks]
        fv = {name: sum(len(c) / total * p[name] for c, p in zip(self.chunks, products)) for name in v}
        return axpy(self.damping, v, fv)

    @property
    def solutions(self) -> list[ParamDict]:
        """x = F_γ⁻¹ u for every probe u (conjugate gradients, computed once)."""
        if self._solutions is None:
            self._solutions = [self._solve(u) for u in self.probes]
        return self._solutions

    @property
    def optimal_aux_loss(self) -> list[float]:
        """A*(u) = −½ uᵀ F_γ⁻¹ u per probe."""
        return [-0.5 * dot(u, x).item() for u, x in zip(self.probes, self.solutions)]

    @torch.no_grad()
    def evaluate(self, q: ModelQ | Callable[[ParamDict], ParamDict]) -> QEvaluation:
        """A(Q; u) = ½ (Qu)ᵀF_γ(Qu) − uᵀQu, A*(u) and e(Q; u) for every probe; e uses the exact identity
        A − A* = ½ ‖Qu − F_γ⁻¹u‖²_{F_γ} rather than a difference of nearly equal numbers."""
        aux, errors = [], []
        for u, x in zip(self.probes, self.solutions):
            v = q(u)
            aux.append((0.5 * dot(v, self.damped_fisher(v)) - dot(v, u)).item())
            r = axpy(-1.0, x, v)
            errors.append((dot(r, self.damped_fisher(r)) / dot(u, x)).clamp_min(0).sqrt().item())
        return QEvaluation(aux, self.optimal_aux_loss, errors)

    def _solve(self, u: ParamDict) -> ParamDict:
        names = list(u)
        like = {name: u[name] for name in names}
        n = sum(t.numel() for t in like.values())

        def matvec(x: np.ndarray) -> np.ndarray:
            v = unflatten(torch.as_tensor(x.ravel(), dtype=like[names[0]].dtype, device=like[names[0]].device), like)
            return flatten(self.damped_fisher(v), names).double().cpu().numpy()

        b = flatten(u, names).double().cpu().numpy()
        x, info = cg(LinearOperator((n, n), matvec=matvec, dtype=np.float64), b, rtol=self.cg_rtol,
                     maxiter=self.cg_maxiter)
        if info != 0:
            raise RuntimeError(
                f"conjugate gradients on F_γ x = u did not reach relative residual {self.cg_rtol:g} in {info} "
                "iterations: raise cg_maxiter or damping, or evaluate in float64"
            )
        return unflatten(torch.as_tensor(x, dtype=like[names[0]].dtype, device=like[names[0]].device), like)
