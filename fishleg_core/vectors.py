"""Arithmetic on parameter-space vectors stored as dicts {parameter name: tensor}."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

ParamDict = dict[str, Tensor]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters by name (``requires_grad=True``); a parameter shared by several modules
    appears once, under its first name, as ``named_parameters`` gives it."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """⟨a, b⟩ = Σ over parameters of the sum of elementwise products."""
    return sum((a[name] * b[name]).sum() for name in a)  # type: ignore[return-value]


def norm(a: Mapping[str, Tensor]) -> Tensor:
    """‖a‖ over all parameters together."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in a.values()]))


def scale(a: Mapping[str, Tensor], factor: float | Tensor) -> ParamDict:
    """factor · a."""
    return {name: t * factor for name, t in a.items()}


def axpy(alpha: float | Tensor, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> ParamDict:
    """alpha · x + y."""
    return {name: alpha * x[name] + y[name] for name in y}


def detach(a: Mapping[str, Tensor]) -> ParamDict:
    return {name: t.detach() for name, t in a.items()}


def all_finite(a: Mapping[str, Tensor]) -> bool:
    """True when every entry of every tensor is finite (one host synchronisation)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in a.values()]).all())


def flatten(a: Mapping[str, Tensor], names: Iterable[str]) -> Tensor:
    """The concatenation of the tensors of ``names``, each flattened row-major."""
    return torch.cat([a[name].reshape(-1) for name in names])


def unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> ParamDict:
    """Split ``flat`` into tensors with the names and shapes of ``like`` (inverse of ``flatten``)."""
    sizes = [t.numel() for t in like.values()]
    if flat.numel() != sum(sizes):
        raise ValueError(f"a flat vector of {flat.numel()} entries cannot fill parameters of {sum(sizes)} entries")
    pieces = torch.split(flat, sizes)
    return {name: piece.reshape(t.shape) for (name, t), piece in zip(like.items(), pieces)}
