"""The A.6 autoencoder and the SGD-with-momentum pre-training of the study's models."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from experiments.common.data import Examples, as_pair
from fishleg_core import Likelihood

SIZES = (784, 300, 100, 30, 100, 300, 784)


def build_autoencoder(sizes: Sequence[int] = SIZES, seed: int = 0) -> nn.Sequential:
    """nn.Linear layers of the given widths with ReLU between them, except after the bottleneck (the
    narrowest layer) and the output (linear logits); PyTorch's default initialisation from ``seed``."""
    bottleneck = min(range(1, len(sizes) - 1), key=lambda i: sizes[i])
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            layers.append(nn.Linear(fan_in, fan_out))
            if i not in (bottleneck, len(sizes) - 1):
                layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def pretrain(
    model: nn.Module,
    likelihood: Likelihood,
    batches: Iterator[Examples],
    iterations: int,
    lr: float,
    momentum: float,
    progress: bool = True,
) -> list[float]:
    """SGD with momentum on the NLL L = mean_b ℓ(y_b; x_b) for ``iterations`` minibatches of inputs that
    are their own targets (the autoencoder's reconstruction NLL, y_b = x_b) or of (inputs, targets) pairs;
    returns the loss per iteration (before each update)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    bar = tqdm(range(iterations), desc="pre-training", disable=not progress, leave=False)
    for _ in bar:
        x, y = as_pair(next(batches))
        loss = likelihood.nll(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(nll=f"{losses[-1]:.1f}", refresh=False)
    return losses
