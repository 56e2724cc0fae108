"""Exact Fisher-vector product F v = (1/B) Σ_b J_bᵀ H_b J_b v: one forward pass carrying J v, one reverse pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fishleg_core._vectors import dot
from fishleg_core._warnings import warn_user
from fishleg_core.fisher.functional import Inputs, detached_parameters, model_function
from fishleg_core.fisher.registry import FISHER_METHODS
from fishleg_core.likelihoods import Likelihood, ParametricLikelihood
from fishleg_core.likelihoods.parametric import PREFIX, split_vector


@dataclass(frozen=True)
class Linearisation:
    """The outputs f(θ) on the autograd tape of the leaves θ, and their tangent J v (detached)."""

    leaves: dict[str, Tensor]
    outputs: Tensor
    jv: Tensor

    def transpose_product(self, cotangent: Tensor) -> dict[str, Tensor]:
        """Jᵀ c by one reverse pass through the forward pass, zeros for parameters the outputs ignore."""
        grads = torch.autograd.grad(self.outputs, list(self.leaves.values()), cotangent, allow_unused=True)
        return {name: torch.zeros_like(leaf) if g is None else g for (name, leaf), g in zip(self.leaves.items(), grads)}


def linearise(model: nn.Module, inputs: Inputs, vector: dict[str, Tensor], tape: bool = True) -> Linearisation:
    """One forward pass on dual parameters (θ, v): the outputs, on the autograd tape (without one when ``tape``
    is False: J v alone, for a quadratic form), and their tangent J v (forward-mode AD).

    Where an operation has no forward-mode rule (the fused attention kernels on CPU, a custom
    ``autograd.Function`` without ``jvp``), the pass is retried with attention on its math kernel, and
    failing that J v comes from reverse mode: J v = ∂/∂w ⟨Jᵀ w, v⟩, the vjp of the vjp. Each fallback is
    announced once per process (a warning).
    """
    leaves = {name: p.requires_grad_(tape) for name, p in detached_parameters(model).items()}
    try:
        return _forward_mode(model, inputs, vector, leaves)
    except NotImplementedError:
        pass
    with sdpa_kernel(SDPBackend.MATH):
        try:
            linear = _forward_mode(model, inputs, vector, leaves)
            _announce("forward-mode AD with attention on its math kernel (the fused kernel has no forward-mode rule)")
        except NotImplementedError:
            on_tape = {name: leaf.requires_grad_() for name, leaf in leaves.items()}
            linear = _reverse_mode(model, inputs, vector, on_tape)
            _announce("reverse-mode AD (J v as the vjp of a vjp): an operation has no forward-mode rule")
    return linear


def _forward_mode(
    model: nn.Module, inputs: Inputs, vector: dict[str, Tensor], leaves: dict[str, Tensor]
) -> Linearisation:
    """J v by forward-mode AD; parameters whose entry of v is zero enter as plain tensors (the same J v, and
    the layers before the first nonzero entry carry no tangent: cheaper per-layer products)."""
    tape = any(leaf.requires_grad for leaf in leaves.values())
    with torch.set_grad_enabled(tape), model_function(model, inputs) as f, forward_ad.dual_level():
        dual_outputs = f(
            {
                name: forward_ad.make_dual(leaf, vector[name]) if bool(vector[name].any()) else leaf
                for name, leaf in leaves.items()
            }
        )
        outputs, jv = forward_ad.unpack_dual(dual_outputs)
        jv = torch.zeros_like(outputs) if jv is None else jv.detach()
    return Linearisation(leaves, outputs, jv)


def _reverse_mode(
    model: nn.Module, inputs: Inputs, vector: dict[str, Tensor], leaves: dict[str, Tensor]
) -> Linearisation:
    """J v = ∂/∂w (Jᵀ w)ᵀ v: Jᵀ w is linear in w, built with a graph (create_graph), then differentiated in w."""
    with torch.enable_grad(), model_function(model, inputs) as f:
        outputs = f(leaves)
        w = torch.zeros_like(outputs, requires_grad=True)
        transposed = torch.autograd.grad(outputs, list(leaves.values()), w, create_graph=True, allow_unused=True)
        pairs = [(g, vector[name]) for name, g in zip(leaves, transposed) if g is not None and g.requires_grad]
        jv = None
        if pairs:
            (jv,) = torch.autograd.grad([g for g, _ in pairs], w, [v for _, v in pairs], allow_unused=True)
    return Linearisation(leaves, outputs, torch.zeros_like(outputs) if jv is None else jv.detach())


def _announce(path: str) -> None:
    if path not in _ANNOUNCED:
        _ANNOUNCED.add(path)
        warn_user(f"exact Fisher-vector product: using {path}")


_ANNOUNCED: set[str] = set()


@FISHER_METHODS.register("exact")
def exact_fisher_vp(
    model: nn.Module,
    likelihood: Likelihood,
    inputs: Inputs,
    targets: Tensor | None,
    vector: dict[str, Tensor],
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """F v = Jᵀ (H (J v)) / B with H from the likelihood, from one forward pass carrying J v and one
    reverse pass through it. No sampling and no data targets (``targets`` and ``generator`` are unused),
    no per-layer code. For a ``ParametricLikelihood`` with parameters φ and v = (v_θ, v_φ):
    (F v)_θ = Jᵀ (H_ff J v_θ + H_fφ v_φ) / B and (F v)_φ = Σ_b (H_φf J_b v_θ + H_φφ v_φ) / B."""
    model_vector, likelihood_vector = split_vector(likelihood, vector)
    linear = linearise(model, inputs, model_vector)
    outputs = linear.outputs.detach()
    batch = outputs.shape[0]
    if not isinstance(likelihood, ParametricLikelihood) or not likelihood_vector:
        return linear.transpose_product(likelihood.hessian_vp(outputs, linear.jv) / batch)
    h_outputs, h_params = likelihood.joint_hessian_vp(outputs, linear.jv, likelihood_vector)
    product = linear.transpose_product(h_outputs / batch)
    product.update({PREFIX + name: h / batch for name, h in h_params.items()})
    return product


exact_fisher_vp.supports_likelihood_parameters = True  # read by fisher_vp


def exact_fisher_quadratic(
    model: nn.Module, likelihood: Likelihood, inputs: Inputs, vector: dict[str, Tensor]
) -> Tensor:
    """vᵀ F v = (1/B) Σ_b (J_b v)ᵀ H_b (J_b v) from one forward pass carrying J v, without an autograd tape or
    a reverse pass (about half the cost of vᵀ(F v) by ``exact_fisher_vp``). For a ``ParametricLikelihood``
    with entries of its own parameters in ``vector``: vᵀ(F v) by ``exact_fisher_vp``."""
    model_vector, likelihood_vector = split_vector(likelihood, vector)
    if isinstance(likelihood, ParametricLikelihood) and likelihood_vector:
        return dot(vector, exact_fisher_vp(model, likelihood, inputs, None, vector, None))
    linear = linearise(model, inputs, model_vector, tape=False)
    outputs = linear.outputs.detach()
    return torch.sum(linear.jv * likelihood.hessian_vp(outputs, linear.jv)) / outputs.shape[0]
