"""The silent-failure trial: a small CNN on the labelled embedded digits trained by FishLeg with aux_lr 1e-2,
once ending in logits (healthy) and once in a softmax before the categorical likelihood (stalls at chance);
prints per run the training loss, held-out accuracy, ``optimizer.diagnostics()`` and the warnings given.

    python -m experiments.a6.cnn_diagnostics            # 150 steps per run
    python -m experiments.a6.cnn_diagnostics --quick    # seconds: 12 steps, an auxiliary update every step, 4 channels
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

import fishleg_core as fl
from experiments.common.data import load_digits


def digits(seed: int = 0) -> tuple[TensorDataset, torch.Tensor, torch.Tensor]:
    """4,000 training digits as (image, label) pairs and 1,000 held-out images and labels."""
    pixels, labels = load_digits(None)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    X = torch.tensor(pixels, dtype=torch.float32)[order].reshape(-1, 1, 28, 28) / 255
    Y = torch.tensor(labels, dtype=torch.long)[order]
    return TensorDataset(X[:4000], Y[:4000]), X[4000:], Y[4000:]


def cnn(softmax: bool, width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, width, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * width, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
        *([nn.Softmax(dim=1)] if softmax else []),
    )


def run(softmax: bool, steps: int, aux_every: int, aux_lr: float, width: int) -> dict:
    train, X_test, Y_test = digits()
    model = cnn(softmax, width)
    likelihood = fl.LIKELIHOODS.build("categorical")
    aux = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(2))
    optimizer = fl.FishLeg(model, likelihood, lr=0.1, aux_lr=aux_lr, aux_every=aux_every, aux_data=aux)
    batches = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))
    stream = (batch for _ in range(steps) for batch in batches)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        for _, (x, y) in zip(tqdm(range(steps), desc="softmax" if softmax else "logits", leave=False), stream):
            optimizer.zero_grad()
            loss = likelihood.nll(model(x), y)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(X_test).argmax(1) == Y_test).float().mean().item()
    return {
        "loss": loss.item(),
        "accuracy": accuracy,
        "diagnostics": optimizer.diagnostics(),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 steps, an auxiliary update every step, 4 channels")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--aux-lr", type=float, default=1e-2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, aux_every, width = (12, 1, 4) if args.quick else (args.steps, 10, 16)
    for softmax in (False, True):
        result = run(softmax, steps, aux_every, args.aux_lr, width)
        print(
            f"{'softmax before the likelihood' if softmax else 'logits'}: training loss {result['loss']:.3f}, "
            f"held-out accuracy {result['accuracy']:.3f}, fisher_to_damping "
            f"{result['diagnostics']['fisher_to_damping']:.3g}, warnings {result['diagnostics']['warnings']}"
        )
        for message in result["warnings"]:
            print(f"  warning: {message}")


if __name__ == "__main__":
    main()
