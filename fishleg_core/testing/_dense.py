"""Dense references shared by the contract checkers, built without the library's products (float64)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from fishleg_core.likelihoods import Likelihood


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """The model's trainable parameters by name, in ``named_parameters`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def random_vector(params: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """A standard-normal vector shaped and typed like ``params``, drawn from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(p.shape, generator=generator, dtype=p.dtype) for name, p in params.items()}


def flatten(vector: dict[str, Tensor], names: list[str]) -> Tensor:
    """The entries ``names`` of ``vector`` flattened and concatenated."""
    return torch.cat([vector[name].reshape(-1) for name in names])


def dense_fisher(model: nn.Module, inputs: Tensor, likelihood: Likelihood) -> Tensor:
    """F = (1/B) Σ_b J_bᵀ H_b J_b over the trainable parameters (flattened in ``trainable`` order), with J the
    Jacobian of the outputs in the parameters (``torch.func.jacrev``) and H the likelihood's Hessian in the
    outputs written out column by column (``hessian_vp`` on the basis vectors)."""
    params = {name: p.detach() for name, p in trainable(model).items()}
    names = list(params)

    def outputs_of(flat: Tensor) -> Tensor:
        pieces = torch.split(flat, [p.numel() for p in params.values()])
        values = {name: piece.reshape(params[name].shape) for name, piece in zip(names, pieces)}
        return functional_call(model, values, (inputs,))

    theta = flatten(params, names)
    outputs = outputs_of(theta).detach()
    J = jacrev(outputs_of)(theta).reshape(outputs.numel(), -1)  # rows: every output of every example
    basis = torch.eye(outputs.numel(), dtype=outputs.dtype).reshape(-1, *outputs.shape)
    H = torch.stack([likelihood.hessian_vp(outputs, e).reshape(-1) for e in basis], 1)
    return J.T @ H @ J / outputs.shape[0]
