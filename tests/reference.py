"""Dense references built independently of the library, shared by the test files."""

from __future__ import annotations

import torch
from torch.func import functional_call


def trainable(model):
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def flat(d, names):
    return torch.cat([d[name].reshape(-1) for name in names])


def unflat(x, like):
    pieces = torch.split(x, [t.numel() for t in like.values()])
    return {name: piece.reshape(t.shape) for (name, t), piece in zip(like.items(), pieces)}


def gaussian_fisher(model, inputs, sigma):
    """F = (1/B) Σ_b J_bᵀ J_b / σ², J from torch.func.jacrev over all outputs."""
    params = trainable(model)
    theta = flat(params, params).detach()
    J = torch.func.jacrev(lambda t: functional_call(model, unflat(t, params), (inputs,)))(theta)
    J = J.reshape(-1, theta.numel())
    return J.T @ J / (sigma**2 * inputs.shape[0])
