"""Dense references built independently of the library, shared by the test files."""

from __future__ import annotations

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel


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


def jacobian(model, inputs, output_fn=None):
    """(outputs, J) with J of shape (*outputs.shape, n_params) over the trainable parameters, by jacrev."""
    params = trainable(model)
    theta = flat(params, params).detach()

    buffers = dict(model.named_buffers())

    def f(t):  # on clones of the buffers, which BatchNorm updates in place
        out = functional_call(model, {**unflat(t, params), **{k: b.clone() for k, b in buffers.items()}}, (inputs,))
        return out if output_fn is None else output_fn(out)

    with sdpa_kernel(SDPBackend.MATH):  # attention by its textbook formula (the fused kernel has no batching rule)
        return f(theta).detach(), torch.func.jacrev(f)(theta)


def dense_fisher(model, inputs, likelihood_name, output_fn=None, sigma=1.0):
    """F = (1/B) Σ_b Σ_positions J_bᵀ H_b J_b from the Jacobian, with H written out: I/σ² (gaussian) or
    diag(p) − p pᵀ over the class dimension 1 (categorical)."""
    outputs, J = jacobian(model, inputs, output_fn)
    B, n = outputs.shape[0], J.shape[-1]
    if likelihood_name == "gaussian":
        J = J.reshape(-1, n)
        return J.T @ J / (sigma**2 * B)
    assert likelihood_name == "categorical"
    classes = outputs.shape[1]
    p = torch.softmax(outputs, dim=1).movedim(1, -1).reshape(-1, classes)
    J = J.movedim(1, -2).reshape(-1, classes, n)
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", J, H, J) / B
