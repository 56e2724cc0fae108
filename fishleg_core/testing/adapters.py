"""The contract of a layer adapter (``LAYER_ADAPTERS``), checked on a module of its layer type and a batch of
the module's inputs, in float64, against references built without the library's products:

- coverage: ``map_blocks(strict=True)`` covers every trainable parameter of the module exactly once, and
  each block's layout packs its parameters into a matrix of the block's shape and unpacks them unchanged;
- Fisher-vector product: the exact F·v equals (1/B) Σ_b J_bᵀ H_b J_b v with J_b the per-example Jacobian of
  the outputs in the parameters (``torch.func.jacrev``) and H_b the likelihood's Hessian in the outputs,
  written out column by column;
- Q·v: Q (each block's form, its λ perturbed away from c·I) times v equals ``to_dense()`` times v flattened;
- gradient factors (only where the adapter's ``captures_factors`` is True): the captured Δᵀ[A | 1]
  reproduces the gradient of the module's block.

``check_adapter`` runs them in that order; the first that fails raises ``AssertionError`` naming it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fishleg_core.auxiliary.gradient_factors import GradientFactors
from fishleg_core.fisher import fisher_vp
from fishleg_core.layers import Block, map_blocks
from fishleg_core.layers.adapters import adapter_for
from fishleg_core.likelihoods import Likelihood, resolve_likelihood
from fishleg_core.model_q import build_model_q
from fishleg_core.testing._assertions import close, run_check
from fishleg_core.testing._dense import dense_fisher, flatten, random_vector, trainable

TOLERANCE = 1e-9
"""Relative tolerance of every comparison (float64)."""


def check_adapter(
    module: nn.Module,
    inputs: Tensor,
    *,
    likelihood: Likelihood | str = "gaussian",
    form: str = "kron",
    seed: int = 0,
) -> None:
    """Check the layer adapter registered for ``type(module)`` (or its nearest base class) on a float64 copy
    of ``module`` and ``inputs`` (a batch; floating inputs are cast to float64): see the module docstring.

    Args:
        module: a module of the layer type the adapter is for, with trainable parameters.
        inputs: a batch of its inputs (B, ...), B ≥ 2.
        likelihood: the likelihood on the module's outputs (a name in ``LIKELIHOODS``), default gaussian.
        form: the QForm of every block for the Q·v check.
        seed: the seed of the random vectors and of the perturbation of λ.

    Raises:
        AssertionError: a check failed; the message names the adapter, the module and the check.
    """
    adapter = adapter_for(module)
    name = f"layer adapter {type(adapter).__name__} on {type(module).__name__}"
    if adapter is None:
        raise AssertionError(f"no layer adapter is registered for {type(module).__name__} or its base classes")
    model = copy.deepcopy(module).double()
    batch = inputs.double() if inputs.is_floating_point() else inputs
    resolved = resolve_likelihood(likelihood)
    checks: dict[str, Callable[[], None]] = {
        "coverage": lambda: _check_coverage(model),
        "Fisher-vector product": lambda: _check_fisher(model, batch, resolved, seed),
        "Q·v": lambda: _check_q(model, form, seed),
    }
    if adapter.captures_factors(model):
        checks["gradient factors"] = lambda: _check_factors(model, batch, resolved, seed)
    for label, check in checks.items():
        run_check(name, label, check)


def _blocks(model: nn.Module) -> list[Block]:
    return map_blocks(model, strict=True)


def _check_coverage(model: nn.Module) -> None:
    params = trainable(model)
    assert params, "the module has no trainable parameters"
    covered = [name for block in _blocks(model) for name in block.param_names]
    twice = sorted({name for name in covered if covered.count(name) > 1})
    missing = sorted(set(params) - set(covered))
    assert not twice and not missing, f"parameters in several blocks: {twice}; in none: {missing}"
    for block in _blocks(model):
        tensors = [params[name] for name in block.param_names]
        G = block.layout.pack(tensors)
        assert tuple(G.shape) == tuple(block.shape), f"block {block.name!r}: packed {tuple(G.shape)}, not {block.shape}"
        assert G.numel() == sum(t.numel() for t in tensors), f"block {block.name!r}: {G.numel()} entries"
        for param_name, back, t in zip(block.param_names, block.layout.unpack(G), tensors):
            assert torch.equal(back, t), f"block {block.name!r}: unpacking does not give {param_name!r} back"


def _check_fisher(model: nn.Module, inputs: Tensor, likelihood: Likelihood, seed: int) -> None:
    names = list(trainable(model))
    v = random_vector(trainable(model), seed)
    expected = dense_fisher(model, inputs, likelihood) @ flatten(v, names)
    product = fisher_vp(model, likelihood, inputs, v, method="exact")
    _close(flatten(product, names), expected, "F·v against (1/B) Σ_b J_bᵀ H_b J_b v")


def _check_q(model: nn.Module, form: str, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = build_model_q(model, {"default": form}).double()
        with torch.no_grad():
            for p in q.parameters():
                p.add_(0.1 * torch.randn_like(p))
    params = trainable(model)
    v = random_vector(params, seed + 1)
    qv = q(v)
    for group in q.groups:
        x = torch.cat([v[name].reshape(-1) for name in group.param_names])
        got = torch.cat([qv[name].reshape(-1) for name in group.param_names])
        _close(got, group.to_dense().detach() @ x, f"Q·v of {group.describe()[0]!r} against to_dense()")


def _check_factors(model: nn.Module, inputs: Tensor, likelihood: Likelihood, seed: int) -> None:
    blocks = _blocks(model)
    capture = GradientFactors(model, blocks)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            outputs = model(inputs)
            targets = likelihood.sample(outputs)
        model.zero_grad(set_to_none=True)
        likelihood.nll(outputs, targets).backward()
        gradient = {name: p.grad for name, p in trainable(model).items() if p.grad is not None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            factors = capture.factors(gradient)
    finally:
        capture.remove()
    reasons = "; ".join(str(w.message) for w in caught)
    assert factors, f"no block's factors were captured or they did not reproduce its gradient ({reasons or 'none'})"
    for block in blocks:
        if block.name in factors:
            left, right = factors[block.name]
            G = block.layout.pack([gradient[name] for name in block.param_names])
            _close((left @ right.mT).reshape(-1), G.reshape(-1), f"Δᵀ[A | 1] of block {block.name!r}")


def _close(got: Tensor, expected: Tensor, what: str) -> None:
    close(got, expected, what, TOLERANCE)
