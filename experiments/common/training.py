"""The training loop shared by the training experiments: one optimizer on one batch stream, timed, with
evaluations every few iterations that the clock does not count."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
Curve = dict[str, list[float]]
"""Per evaluation point: ``iteration``, ``seconds`` (training time so far), ``minibatch_loss`` (mean of the
minibatch losses since the previous point) and whatever the experiment's ``evaluate`` returns."""


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
    batches: Iterator[Batch],
    iterations: int,
    every: int,
    evaluate: Callable[[int], dict[str, float]],
    *,
    min_seconds: float = 0.0,
    max_iterations: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Curve:
    """``iterations`` steps of ``optimizer`` on L = ``loss_fn(model, inputs, targets)``, one batch each, and
    more while the training time is below ``min_seconds`` (at most ``max_iterations`` steps in all; default
    100 × ``iterations``): a run then covers both an iteration budget and a time budget.

    ``evaluate(iteration)`` runs at iteration 0 and after every ``every`` steps, outside the clock; so does
    the conversion of losses to Python floats (one synchronisation per evaluation). A non-finite minibatch
    loss ends the run (the curve then stops there, its last ``minibatch_loss`` not finite). ``clock``: the
    seconds counter, wall-clock by default (``time.thread_time`` counts only this thread's CPU time).
    """
    curve: Curve = {"iteration": [0], "seconds": [0.0], "minibatch_loss": [math.nan], **_listed(evaluate(0))}
    seconds, window = 0.0, []
    limit = max_iterations if max_iterations is not None else 100 * iterations
    iteration = 0
    while iteration < iterations or (seconds < min_seconds and iteration < limit):
        iteration += 1
        inputs, targets = next(batches)
        start = clock()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, inputs, targets)
        loss.backward()
        optimizer.step()
        seconds += clock() - start
        window.append(loss.detach())
        last = iteration >= iterations and (seconds >= min_seconds or iteration >= limit)
        if iteration % every == 0 or last:
            mean = torch.stack(window).mean().item()
            window = []
            diverged = not math.isfinite(mean)
            point = {
                "iteration": iteration,
                "seconds": seconds,
                "minibatch_loss": mean,
                **({} if diverged else evaluate(iteration)),
            }
            for key, value in point.items():
                curve.setdefault(key, []).append(value)
            if diverged:
                break
    return curve


def _listed(values: dict[str, float]) -> dict[str, list[float]]:
    return {key: [value] for key, value in values.items()}


def finished(curve: Curve, iterations: int) -> bool:
    """The run did at least ``iterations`` and ended with a finite loss."""
    return curve["iteration"][-1] >= iterations and math.isfinite(curve["minibatch_loss"][-1])


def time_to_reach(curve: Curve, target: float, key: str = "minibatch_loss") -> float | None:
    """Training seconds at the first evaluation point where ``curve[key]`` ≤ ``target``; None if never
    (a diverged run's missing values, None in a curve read from JSON, never reach it)."""
    for seconds, value in zip(curve["seconds"][1:], curve[key][1:]):
        if value is not None and value <= target:
            return seconds
    return None


def mean_and_spread(curves: list[Curve], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over seeds, at the evaluation points all the runs reached: iterations, mean and standard deviation
    of ``curve[key]`` (missing values, e.g. after divergence, shorten the arrays)."""
    length = min(len(curve.get(key, [])) for curve in curves)
    values = np.array([curve[key][:length] for curve in curves], dtype=float)
    iterations = np.array(curves[0]["iteration"][:length])
    return iterations, values.mean(axis=0), values.std(axis=0)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return value if math.isfinite(value) else None


def jsonable(curve: Curve) -> dict[str, list[float | None]]:
    return {key: [finite_or_none(float(v)) for v in values] for key, values in curve.items()}
