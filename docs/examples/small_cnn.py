"""FishLeg on a small convolutional network without normalisation layers, from random initialisation on
synthetic images (the tuning guide's CNN row).

Run from the repository root: ``PYTHONPATH=. python docs/examples/small_cnn.py [--steps 100]``.
"""

from __future__ import annotations

import functools

import torch
from example_common import Comparison, arguments, compare, image_batches
from torch import nn

import fishleg_core as fl

CLASSES, SIZE, BATCH = 4, 16, 16
ADAM_RATES = (3e-3, 1e-2, 3e-2)
# The tuning guide's settings for a CNN (docs/guide/tuning.md).
FISHLEG = {"lr": 0.5, "damping": 0.1, "aux_lr": 1e-3, "aux_every": 1, "momentum": 0.9}


def build(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, CLASSES),
    )


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images, labels = batch
    return nn.functional.cross_entropy(model(images), labels)


def train_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return image_batches(8, BATCH, CLASSES, SIZE, seed=10 * seed)


def make_fishleg(model: nn.Module, seed: int = 0, **overrides: object) -> fl.FishLeg:
    aux = [images for images, _ in image_batches(4, BATCH, CLASSES, SIZE, seed=10 * seed + 1)]
    return fl.FishLeg(model, "categorical", aux_data=aux, **{**FISHLEG, **overrides})


def main(steps: int = 100, seed: int = 0, fishleg: dict | None = None, adam: bool = True) -> Comparison:
    """Adam at each of ``ADAM_RATES`` (unless not ``adam``) and FishLeg at ``FISHLEG`` updated by ``fishleg``."""
    optimizer = functools.partial(make_fishleg, seed=seed, **(fishleg or {}))
    rates = ADAM_RATES if adam else ()
    comparison = compare(functools.partial(build, seed), optimizer, train_batches(seed), loss_fn, steps, rates)
    print(comparison.report("small CNN (two convolutions), 16x16 images", steps))
    return comparison


if __name__ == "__main__":
    main(**vars(arguments(__doc__ or "")))
