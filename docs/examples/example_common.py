"""What the examples share: synthetic data, a training loop, an Adam sweep, and the comparison they print.

Every example trains one model from the same random start with Adam (at each rate of a sweep of three) and
with FishLeg (at the tuning guide's settings for its family, docs/guide/tuning.md) on the same minibatches,
and reports the training loss on the whole training set after each run.
"""

from __future__ import annotations

import argparse
import ast
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def image_batches(
    count: int, batch: int, classes: int, size: int, seed: int, noise: float = 3.0, templates_seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images of ``classes`` random templates (fixed by ``templates_seed``) plus Gaussian noise of standard
    deviation ``noise``, with their labels."""
    templates = torch.randn(classes, 3, size, size, generator=torch.Generator().manual_seed(templates_seed))
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, classes, (batch,), generator=generator)
        images = templates[labels] + noise * torch.randn(batch, 3, size, size, generator=generator)
        batches.append((images, labels))
    return batches


def train(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[Batch], loss_fn: LossFn, steps: int
) -> list[float]:
    """``steps`` steps over ``batches`` (cycled); returns the minibatch losses."""
    losses = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        optimizer.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def training_loss(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn) -> float:
    """The mean loss over the training set, with the model in its training mode (BatchNorm on batch statistics)."""
    return sum(loss_fn(model, batch).item() for batch in batches) / len(batches)


@dataclass
class Comparison:
    adam: dict[float, float]  # Adam's rate -> its training loss after the run
    fishleg: float

    @property
    def best_adam(self) -> tuple[float, float]:
        return min(self.adam.items(), key=lambda item: item[1])

    def report(self, name: str, steps: int) -> str:
        lines = [f"{name}: training loss after {steps} steps (same start, same minibatches)"]
        if not self.adam:
            return "\n".join([*lines, f"  FishLeg: {self.fishleg:.4f}"])
        rate, loss = self.best_adam
        lines += [
            f"  Adam lr={lr:g}: {value:.4f}" + ("  (best)" if lr == rate else "") for lr, value in self.adam.items()
        ]
        lines.append(
            f"  FishLeg: {self.fishleg:.4f} ({'reaches' if self.fishleg <= loss else 'does not reach'} Adam's best)"
        )
        return "\n".join(lines)


def compare(
    build: Callable[[], nn.Module],
    make_fishleg: Callable[..., torch.optim.Optimizer],
    batches: Sequence[Batch],
    loss_fn: LossFn,
    steps: int,
    adam_rates: Sequence[float],
) -> Comparison:
    """Adam at each of ``adam_rates`` and FishLeg, each from a copy of the same initial model."""
    start = build()
    adam = {}
    for lr in adam_rates:
        model = copy.deepcopy(start)
        train(model, torch.optim.Adam(model.parameters(), lr=lr), batches, loss_fn, steps)
        adam[lr] = training_loss(model, batches, loss_fn)
    model = copy.deepcopy(start)
    optimizer = make_fishleg(model)
    train(model, optimizer, batches, loss_fn, steps)
    return Comparison(adam, training_loss(model, batches, loss_fn))


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data (default 0)")
    parser.add_argument(
        "--fishleg",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="FishLeg settings overriding the example's, as Python literals: --fishleg lr=0.1 damping=1.0",
    )
    parser.add_argument("--no-adam", dest="adam", action="store_false", help="run FishLeg only")
    args = parser.parse_args()
    args.fishleg = {key: ast.literal_eval(value) for key, value in (item.split("=", 1) for item in args.fishleg)}
    return args
