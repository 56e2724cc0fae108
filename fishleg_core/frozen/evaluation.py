"""Exact measurement of a fitted Q on fixed probe directions: A(Q; u), the optimum A*(u) by conjugate
gradients, and the normalised error e(Q; u)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, cg
from torch import Tensor, nn

from fishleg_core._validation import check_callable, check_integer, check_number, check_tensor, check_type
from fishleg_core._vectors import (
    ParamDict,
    axpy,
    checked_vector,
    dot,
    flatten,
    trainable_parameters,
    unflatten,
)
from fishleg_core.fisher import fisher_vp
from fishleg_core.fisher.exact import exact_fisher_quadratic
from fishleg_core.fisher.functional import OutputFn, selected_output
from fishleg_core.likelihoods import Likelihood, resolve_likelihood
from fishleg_core.model_q import ModelQ


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
    ``output_fn`` selects the output tensor of a model returning a tuple or a dict. ``preconditioner``, a
    symmetric positive-definite map P ≈ F_γ⁻¹ (a fitted Q, a KFAC inverse), preconditions CG: fewer
    iterations to the same residual ‖u − F_γx‖ ≤ cg_rtol·‖u‖, the same solution.

    Args:
        model: the frozen network.
        likelihood: a ``Likelihood`` or a registered name (``LIKELIHOODS``).
        probes: the probe directions u, dicts keyed by the trainable parameters' names; at least one.
        curvature_inputs: the inputs of F_γ, at least one example.
        damping: γ >= 0.
        chunk_size: examples per ``fisher_vp`` call (all at once when None).
        cg_rtol: CG's relative residual (default 1e-10 in float64, 1e-5 in float32).
        cg_maxiter: CG's iteration limit (scipy's default when None).
        output_fn: selects the output tensor of a model returning a tuple or a dict.
        preconditioner: P ≈ F_γ⁻¹, symmetric positive-definite, for CG.
        solutions: F_γ⁻¹u for every probe, computed before (skips CG).

    Raises:
        ValueError: no probes, empty ``curvature_inputs``, a probe or solution that does not match the
            parameters, as many solutions as probes not given, or a number out of range.
        TypeError: an argument of the wrong kind.
        UnknownNameError: ``likelihood`` is not registered.
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
        output_fn: OutputFn | None = None,
        preconditioner: Callable[[ParamDict], ParamDict] | None = None,
        solutions: Sequence[ParamDict] | None = None,
    ) -> None:
        self.params = trainable_parameters(model)
        self.model = model
        self.likelihood = resolve_likelihood(likelihood)
        check_callable("output_fn", output_fn, optional=True)
        self.output_fn = output_fn
        check_callable("preconditioner", preconditioner, optional=True)
        self.preconditioner = preconditioner
        self.cg_iterations: list[int] = []
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
        if solutions is not None:
            check_type("solutions", solutions, Sequence, "a list of F_γ⁻¹u, one per probe")
            if len(solutions) != len(self.probes):
                raise ValueError(f"solutions: {len(solutions)} given for {len(self.probes)} probes")
            self._solutions = [checked_vector(self.params, x, f"solutions[{i}]") for i, x in enumerate(solutions)]

    def damped_fisher(self, v: ParamDict) -> ParamDict:
        """F_γ v on the whole curvature set."""
        total = sum(len(chunk) for chunk in self.chunks)
        products = [
            fisher_vp(self.model, self.likelihood, chunk, v, "exact", 0.0, output_fn=self.output_fn)
            for chunk in self.chunks
        ]
        fv = {name: cast(Tensor, sum(len(c) / total * p[name] for c, p in zip(self.chunks, products))) for name in v}
        return axpy(self.damping, v, fv)

    def damped_quadratic(self, v: ParamDict) -> Tensor:
        """vᵀF_γv = vᵀFv + γ‖v‖² on the whole curvature set, from forward passes carrying J v alone
        (``exact_fisher_quadratic``: about half the cost of vᵀ(F_γ v))."""
        total = sum(len(chunk) for chunk in self.chunks)
        with selected_output(self.output_fn):
            parts = [len(c) / total * exact_fisher_quadratic(self.model, self.likelihood, c, v) for c in self.chunks]
        return cast(Tensor, sum(parts)) + self.damping * dot(v, v)

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
            aux.append((0.5 * self.damped_quadratic(v) - dot(v, u)).item())
            r = axpy(-1.0, x, v)
            errors.append((self.damped_quadratic(r) / dot(u, x)).clamp_min(0).sqrt().item())
        return QEvaluation(aux, self.optimal_aux_loss, errors)

    def _solve(self, u: ParamDict) -> ParamDict:
        names = list(u)
        like = {name: u[name] for name in names}
        n = sum(t.numel() for t in like.values())

        def as_map(apply: Callable[[ParamDict], ParamDict]) -> LinearOperator:
            def matvec(x: np.ndarray) -> np.ndarray:
                v = unflatten(
                    torch.as_tensor(x.ravel(), dtype=like[names[0]].dtype, device=like[names[0]].device), like
                )
                return flatten(apply(v), names).double().cpu().numpy()

            return LinearOperator((n, n), matvec=matvec, dtype=np.float64)

        b = flatten(u, names).double().cpu().numpy()
        iterations = 0

        def count(_: np.ndarray) -> None:
            nonlocal iterations
            iterations += 1

        x, info = cg(
            as_map(self.damped_fisher),
            b,
            rtol=self.cg_rtol,
            maxiter=self.cg_maxiter,
            M=None if self.preconditioner is None else as_map(self.preconditioner),
            callback=count,
        )
        if info != 0:
            raise RuntimeError(
                f"conjugate gradients on F_γ x = u did not reach relative residual {self.cg_rtol:g} in {info} "
                "iterations: raise cg_maxiter or damping, or evaluate in float64"
            )
        self.cg_iterations.append(iterations)
        return unflatten(torch.as_tensor(x, dtype=like[names[0]].dtype, device=like[names[0]].device), like)
