"""Fitting one QForm on the frozen autoencoder: data streams, initial scale, LR schedule, plateau test."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

import fishleg_core as fl
from experiments.common.data import Examples, as_pair, disjoint_pairs, inputs_of
from fishleg_core.fisher.exact import exact_fisher_quadratic
from fishleg_core.frozen import Direction
from fishleg_core.param_vectors import ParamDict, dot


def training_streams(
    model: nn.Module,
    likelihood: fl.Likelihood,
    train: Examples,
    batch: int,
    curvature_batch: int,
    seed: int,
    q: fl.ModelQ | None = None,
) -> tuple[Generator[Direction, None, None], Iterator[Tensor]]:
    """Directions u = g/‖g‖ from fresh training minibatches and, step for step, the inputs of F_γ v from
    other training minibatches (the two batches of a step share no example); a seeded, endless stream.
    ``train``: inputs that are their own targets, or (inputs, targets). With ``q``, each u comes with the
    low-rank factors of its Linear blocks (cheaper Q·u for ``q``)."""
    pairs = disjoint_pairs(train, batch, curvature_batch, torch.Generator().manual_seed(seed))
    for_directions, for_curvature = itertools.tee(pairs)
    directions = fl.normalized_gradients(model, likelihood, (as_pair(xy) for xy, _ in for_directions), factors_for=q)
    # normalized_gradients is a generator function (annotated as returning an Iterator)
    return cast(Generator[Direction, None, None], directions), (inputs_of(xy) for _, xy in for_curvature)


def best_identity_scale(directions: Sequence[ParamDict], fisher_products: Sequence[ParamDict]) -> float:
    """c* = Σ_u uᵀu / Σ_u uᵀF_γu, the minimiser of the mean over u of A(cI; u) = ½c² uᵀF_γu − c uᵀu."""
    return cast(
        Tensor, sum(dot(u, u) for u in directions) / sum(dot(u, fu) for u, fu in zip(directions, fisher_products))
    ).item()


def cosine_tail(
    steps: int, decay_fraction: float
) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]:
    """An LR schedule: constant, then a cosine decay to 0 over the final ``decay_fraction`` of the steps."""
    start = steps * (1 - decay_fraction)

    def factor(step: int) -> float:
        return 1.0 if step < start else 0.5 * (1 + math.cos(math.pi * (step - start) / (steps - start)))

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Monitor:
    """M(Q) = mean over fixed training directions u_i of A(Q; u_i), each with F_γ on its own fixed training
    minibatch, recorded at step 0, every ``every`` steps and at the last step. Unlike the training curve,
    whose u changes every step (and with it A*(u)), M changes only when Q does.

    Called as ``fit_q``'s ``stop`` hook, the only per-step hook it has; it never stops the fit.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: fl.Likelihood,
        q: fl.ModelQ,
        directions: Sequence[ParamDict],
        curvature: Sequence[Tensor],
        damping: float,
        steps: int,
        points: int = 20,
    ) -> None:
        self.model, self.likelihood, self.q, self.damping = model, likelihood, q, damping
        self.directions, self.curvature = directions, curvature
        self.total_steps, self.every = steps, max(1, math.ceil(steps / points))
        self.record: dict[str, list] = {"steps": [], "aux_loss": []}
        self._measure(0)

    def __call__(self, curve: Sequence[float]) -> bool:
        if len(curve) % self.every == 0 or len(curve) == self.total_steps:
            self._measure(len(curve))
        return False

    def _aux_loss(self, u: ParamDict, inputs: Tensor) -> float:
        """A(Q; u) = ½ vᵀF_γv − uᵀv, v = Qu, with the exact Fisher on ``inputs`` (its quadratic form alone:
        forward passes carrying J v, ``exact_fisher_quadratic``)."""
        v = self.q(u)
        quadratic = exact_fisher_quadratic(self.model, self.likelihood, inputs, v) + self.damping * dot(v, v)
        return (0.5 * quadratic - dot(u, v)).item()

    @torch.no_grad()
    def _measure(self, step: int) -> None:
        values = [self._aux_loss(u, x) for u, x in zip(self.directions, self.curvature)]
        self.record["steps"].append(step)
        self.record["aux_loss"].append(statistics.fmean(values))


def last_tenth_mean(curve: Sequence[float]) -> float:
    """The mean of the last tenth of ``curve`` (at least its last value)."""
    return statistics.fmean(curve[-max(1, len(curve) // 10) :])


def plateau(steps: Sequence[int], values: Sequence[float], tolerance: float) -> dict[str, Any]:
    """The plateau test on the monitor M (``Monitor.record``): its gain over the last tenth of the steps,
    M(0.9·S) − M(S), must be at most ``tolerance`` times its gain over the whole fit, M(0) − M(S) (M(0.9·S):
    the last record at or before 0.9·S)."""
    at_nine_tenths = max(i for i, step in enumerate(steps) if step <= 0.9 * steps[-1])
    last_gain, total_gain = values[at_nine_tenths] - values[-1], values[0] - values[-1]
    return {
        "on_plateau": bool(last_gain <= tolerance * max(total_gain, 0.0)),
        "last_tenth_gain": last_gain,
        "total_gain": total_gain,
        "relative_last_gain": last_gain / total_gain if total_gain > 0 else None,
        "tolerance": tolerance,
    }
