"""Held-out evaluation in float64: fixed probe directions and a fixed curvature set (docs/design.md §1)."""

from __future__ import annotations

import copy
import itertools
from typing import cast

import torch
from torch import nn

import fishleg_core as fl
from experiments.common.data import Examples, as_pair, in_float64, inputs_of, minibatches, select
from fishleg_core.param_vectors import ParamDict


def float64_copy(module: nn.Module) -> nn.Module:
    """A float64 deep copy (of the frozen model, or of a fitted Q), so that CG and A are accurate."""
    return copy.deepcopy(module).double()


def heldout_evaluator(
    model: nn.Module,
    likelihood: fl.Likelihood,
    heldout: Examples,
    n_curvature: int,
    n_probes: int,
    batch: int,
    damping: float,
    cg_rtol: float,
    seed: int,
    solutions: list[ParamDict] | None = None,
) -> fl.ProbeEvaluator:
    """A ``ProbeEvaluator`` on a float64 copy of ``model``: the curvature set is the first ``n_curvature``
    held-out inputs, the probes u = g/‖g‖ are gradients of ``n_probes`` seeded minibatches of the other
    held-out examples (so no probe gradient shares an example with the curvature set). ``heldout``: inputs
    that are their own targets, or (inputs, targets). ``solutions``: F_γ⁻¹u of every probe from an earlier
    solve of the same settings (CG skipped)."""
    model64, heldout64 = float64_copy(model), in_float64(heldout)
    pool = select(heldout64, slice(n_curvature, None))
    batches = minibatches(pool, batch, torch.Generator().manual_seed(seed))
    gradients = fl.normalized_gradients(model64, likelihood, map(as_pair, itertools.islice(batches, n_probes)))
    probes = cast(list[ParamDict], list(gradients))  # no factors_for: plain vectors
    curvature = inputs_of(heldout64)[:n_curvature]
    return fl.ProbeEvaluator(model64, likelihood, probes, curvature, damping, cg_rtol=cg_rtol, solutions=solutions)
