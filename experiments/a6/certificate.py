"""A convergence certificate that a learning-rate decay cannot fake: continue the fit and see what it gains.

From the fitted Q, a continuation of the same optimiser on a stream of directions and curvature batches the
fit never saw, by ``certificate_schedule``:

- ``constant`` (default): ``certificate_steps`` steps at the constant rate ``certificate_lr_factor`` × the
  fit's peak rate (no decay). Cheap, but its noise floor sits above a decayed fit's, so it can hide a slow
  descent (on the A.6 network it certified a 500-step ``kron`` fit 3.6 % above the 4,000-step value).
- ``repeat`` (a doubling test): the fit's own schedule again, ``steps`` steps at the peak rate with the
  same cosine tail. It ends decayed like the fit, so it compares like with like; it doubles the cost.

With A_fit and A_cont the held-out A of the fit and of the continuation, the fit is certified converged when
the continuation gains at most ``certificate_tolerance`` of |A_fit|:

    gain = A_fit − A_cont ≤ tolerance · |A_fit|.

A fit stopped early, or frozen by its decay before the asymptote, leaves a gain the continuation takes.
A fit that diverged is refused whatever the continuation gains (``divergence``): a continuation from a
point far up the loss can gain little in a few steps at a small rate, so the gain test alone would pass it.
What it does not certify: that no other optimiser or start would go lower, or that a longer continuation
would not.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from contextlib import closing
from typing import Any

from torch import nn

import fishleg_core as fl
from experiments.a6.config import StudyConfig
from experiments.a6.fit_schedule import cosine_tail, training_streams
from experiments.a6.heldout import float64_copy
from experiments.common.data import Examples
from fishleg_core.frozen import fit_q

CERTIFICATE_SEED_OFFSET = 4
"""The continuation's stream is seeded with seed + this offset (directions the fit never saw)."""


def divergence(monitor: Sequence[float], heldout_aux_loss: float) -> str | None:
    """Why a fit must not be certified whatever its continuation gains, or None when it descended: its monitor
    M (the mean auxiliary loss over the fixed training directions, ``Monitor.record["aux_loss"]``, M_0 at
    step 0) or its held-out A is not finite, or M ends above where it started (M_end > M_0)."""
    if not monitor:
        raise ValueError("divergence needs the monitor's record of the fit, got an empty one")
    if not all(math.isfinite(value) for value in monitor):
        return "diverged: monitor not finite"
    if not math.isfinite(heldout_aux_loss):
        return f"diverged: held-out A = {heldout_aux_loss}"
    if monitor[-1] > monitor[0]:
        return f"diverged: monitor rose from {monitor[0]:.5g} to {monitor[-1]:.5g}"
    return None


def continuation_certificate(
    name: str,
    q: fl.ModelQ,
    fitted_aux_loss: float,
    config: StudyConfig,
    model: nn.Module,
    likelihood: fl.Likelihood,
    train: Examples,
    evaluator: fl.ProbeEvaluator,
) -> dict[str, Any]:
    """Continue a copy of the fitted ``q`` (held-out A ``fitted_aux_loss``) at a constant rate and compare
    held-out A (see the module docstring); ``q`` itself is left as fitted."""
    continued = copy.deepcopy(q)
    repeat = config.certificate_schedule == "repeat"
    steps = config.steps if repeat else config.certificate_steps
    lr = config.lr(name) * (1.0 if repeat else config.certificate_lr_factor)
    stream, batches = training_streams(
        model,
        likelihood,
        train,
        config.batch_size,
        config.curvature_batch,
        config.seed + CERTIFICATE_SEED_OFFSET,
        continued,
    )
    with closing(stream):
        fit = fit_q(
            model,
            likelihood,
            continued,
            stream,
            batches,
            steps,
            lr=lr,
            damping=config.damping,
            schedule=cosine_tail(steps, config.decay_fraction) if repeat else None,
            aux_optimizer=config.optimizer(name),
        )
    continued_aux_loss = evaluator.evaluate(float64_copy(continued)).mean_aux_loss
    gain = fitted_aux_loss - continued_aux_loss
    return {
        "schedule": config.certificate_schedule,
        "steps": steps,
        "lr": lr,
        "tolerance": config.certificate_tolerance,
        "heldout_aux_loss_fit": fitted_aux_loss,
        "heldout_aux_loss_continued": continued_aux_loss,
        "relative_gain": gain / abs(fitted_aux_loss),
        "certified": bool(gain <= config.certificate_tolerance * abs(fitted_aux_loss)),
        "seconds": fit.seconds,
    }
