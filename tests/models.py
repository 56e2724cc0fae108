"""Tiny model builders shared by the test files; deterministic, and they leave the global RNG alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)

MLP_INPUT = (4,)
CNN_INPUT = (2, 5, 5)


def _seeded(build: Callable[[], M], seed: int, dtype: torch.dtype) -> M:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().to(dtype)


def tiny_mlp(out_features: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Sequential:
    """Linear(4, 5) → Tanh → Linear(5, out_features), inputs of shape (B, 4)."""
    return _seeded(lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, out_features)), seed, dtype)


def tiny_cnn(out_features: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Sequential:
    """Conv2d(2, 3, 3) → Tanh → Flatten → Linear(27, out_features), inputs of shape (B, 2, 5, 5)."""

    def build() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(27, out_features))

    return _seeded(build, seed, dtype)


def batchnorm_dropout_mlp(out_features: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Sequential:
    """Linear(4, 6) → BatchNorm1d → Tanh → Dropout(0.5) → Linear(6, out_features), inputs (B, 4)."""

    def build() -> nn.Sequential:
        return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, out_features))

    return _seeded(build, seed, dtype)


def random_inputs(
    input_shape: tuple[int, ...], batch: int, dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    """A standard-normal batch of shape (batch, *input_shape)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape), generator=generator, dtype=dtype)
