"""FishLeg inside a Lightning module: an MLP classifier trained by ``lightning.Trainer`` from random
initialisation on synthetic data. Lightning steps the optimizer with a closure that zeroes the gradients
between the forward and the backward pass; FishLeg keeps the gradient factors captured in the forward pass
through that ``zero_grad``, so the low-rank Q·g runs on every step, as in a plain loop.

Run from the repository root: ``PYTHONPATH=. python docs/examples/lightning_mlp.py [--steps 100]``.
"""

from __future__ import annotations

import logging

import lightning
import torch
from example_common import Comparison, arguments, training_loss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fishleg_core as fl

FEATURES, HIDDEN, CLASSES, BATCH, BATCHES = 20, 64, 5, 32, 8
ADAM_RATES = (3e-2, 1e-1, 3e-1)
# The tuning guide's settings for an MLP (docs/guide/tuning.md).
FISHLEG = {"lr": 1.0, "damping": 0.1, "aux_lr": 1e-2, "aux_every": 1, "momentum": 0.9}


def data(seed: int, count: int = BATCHES) -> TensorDataset:
    """Points around one random centre per class (fixed), with unit noise."""
    centres = 0.3 * torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (count * BATCH,), generator=generator)
    return TensorDataset(centres[labels] + torch.randn(count * BATCH, FEATURES, generator=generator), labels)


class Classifier(lightning.LightningModule):
    def __init__(self, optimizer: str, lr: float, seed: int = 0, fishleg: dict | None = None) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES))
        self.optimizer_name, self.lr, self.seed, self.fishleg = optimizer, lr, seed, fishleg or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return make_fishleg(self.net, self.seed, **self.fishleg)


def make_fishleg(net: nn.Module, seed: int = 0, **overrides: object) -> fl.FishLeg:
    aux = [x for x, _ in DataLoader(data(seed=10 * seed + 2, count=4), batch_size=BATCH)]
    return fl.FishLeg(net, "categorical", aux_data=aux, **{**FISHLEG, **overrides})


def build(seed: int = 0) -> nn.Module:
    return Classifier("fishleg", FISHLEG["lr"], seed).net


def train_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The minibatches the Trainer takes, in its order (no shuffling)."""
    return list(DataLoader(data(seed=10 * seed + 1), batch_size=BATCH))


def fit(module: Classifier, steps: int) -> Classifier:
    trainer = lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data(seed=10 * module.seed + 1), batch_size=BATCH))
    return module


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def main(steps: int = 100, seed: int = 0, fishleg: dict | None = None, adam: bool = True) -> Comparison:
    """Adam at each of ``ADAM_RATES`` (unless not ``adam``) and FishLeg at ``FISHLEG`` updated by ``fishleg``."""
    logging.getLogger("lightning").setLevel(logging.ERROR)
    batches = train_batches(seed)
    rates = ADAM_RATES if adam else ()
    losses = {lr: training_loss(fit(Classifier("adam", lr, seed), steps).net, batches, loss_fn) for lr in rates}
    module = fit(Classifier("fishleg", FISHLEG["lr"], seed, fishleg), steps)
    comparison = Comparison(losses, training_loss(module.net, batches, loss_fn))
    print(comparison.report("MLP in a LightningModule (lightning.Trainer)", steps))
    return comparison


if __name__ == "__main__":
    main(**vars(arguments(__doc__ or "")))
