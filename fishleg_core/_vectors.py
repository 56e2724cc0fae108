"""Arithmetic on parameter-space vectors stored as dicts {parameter name: tensor}."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from fishleg_core._validation import check_mapping, check_module

ParamDict = dict[str, Tensor]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters by name (``requires_grad=True``); a parameter shared by several modules
    appears once, under its first name, as ``named_parameters`` gives it."""
    check_module(model)
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
    """True when every entry of every tensor is finite: their minima and maxima are (both propagate NaN,
    and ±Inf is an extreme), one fused pass per tensor, about 10× faster on CPU than max-norms, with one
    host synchronisation."""
    extremes = [torch.stack(torch.aminmax(t)) for t in a.values() if t.numel()]
    return not extremes or bool(torch.cat(extremes).isfinite().all())


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


def checked_vector(params: Mapping[str, Tensor], vector: object, name: str = "vector") -> ParamDict:
    """``vector`` detached, in parameter order, cast to each parameter's dtype and device, after checking
    that it holds a tensor of the right shape for each of ``params`` and nothing else (errors name it)."""
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    check_mapping(name, vector)
    assert isinstance(vector, Mapping)  # check_mapping raised otherwise
    missing = [key for key in params if key not in vector]
    if missing:
        raise ValueError(f"{name} has no entry for the trainable parameters {missing}")
    extra = [key for key in vector if key not in params]
    if extra:
        raise ValueError(f"{name} has entries {extra} that are not trainable parameters of the model")
    for key, p in params.items():
        check_entry(name, key, vector[key], p.shape)
    return {key: vector[key].detach().to(dtype=p.dtype, device=p.device) for key, p in params.items()}


def check_entry(name: str, key: str, value: object, shape: torch.Size) -> None:
    """Raise ``ValueError`` unless ``value``, the entry ``key`` of the vector ``name``, is a tensor of ``shape``."""
    if not isinstance(value, Tensor) or value.shape != shape:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name}[{key!r}] must have the shape {tuple(shape)} of the parameter; got {got}")
