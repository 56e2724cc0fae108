"""The models of the A.6 study (``--model``): what is frozen, its likelihood, its data and its pre-training.

- ``autoencoder`` (the paper's): the MNIST autoencoder [784, 300, 100, 30, 100, 300, 784], ReLU except after
  the bottleneck and the output, Bernoulli likelihood on the pixels it reconstructs (targets = inputs).
- ``cnn``: Conv2d(1, 8, 5, stride 2) → ReLU → Conv2d(8, 16, 5, stride 2) → ReLU → Linear(256, 32) → ReLU →
  Linear(32, 10) on the 28 × 28 images, Categorical likelihood on the labels (11,978 parameters).
- ``transformer``: each digit as a sequence of its 28 rows (28 tokens of 28 pixels): Linear(28, 32) token
  embedding plus a learned position embedding (nn.Embedding(28, 32)), one pre-LayerNorm transformer block
  (nn.MultiheadAttention with 4 heads, then a 32 → 64 → 32 ReLU MLP, each with a residual connection), a
  final LayerNorm, mean-pooling over the rows and Linear(32, 10); Categorical likelihood on the labels
  (10,762 parameters).

Every model takes the flattened pixels (n, 784) (the classifiers reshape them in their first module), so
the data path is the same for all: the same shuffle and split of the same digits, with the labels as
targets for the classifiers. Each is pre-trained by SGD with momentum on minibatches of ``batch_size`` from
the training split, with its own defaults (``StudyConfig`` fills them in for the fields not given):
``MODEL_DEFAULTS``, which also hold the CNN's rate of λ for ``diagonal``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from experiments.common.autoencoder import SIZES, build_autoencoder

CNN_WIDTH, TRANSFORMER_DIM, TRANSFORMER_HEADS, ROWS = 8, 32, 4, 28


def build_cnn(seed: int = 0) -> nn.Sequential:
    """The study's small CNN (see the module docstring); PyTorch's default initialisation from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Unflatten(1, (1, ROWS, ROWS)),
            nn.Conv2d(1, CNN_WIDTH, 5, stride=2),  # 12 × 12
            nn.ReLU(),
            nn.Conv2d(CNN_WIDTH, 2 * CNN_WIDTH, 5, stride=2),  # 4 × 4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * CNN_WIDTH * 16, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )


class RowTransformer(nn.Module):
    """The study's small sequence model over the rows of a digit (see the module docstring)."""

    def __init__(self, dim: int = TRANSFORMER_DIM, heads: int = TRANSFORMER_HEADS, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(ROWS, dim)
        self.position = nn.Embedding(ROWS, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.register_buffer("positions", torch.arange(ROWS), persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        h = self.embed(pixels.reshape(len(pixels), ROWS, ROWS)) + self.position(self.positions)
        a = self.norm1(h)
        h = h + self.attention(a, a, a, need_weights=False)[0]
        h = h + self.mlp(self.norm2(h))
        return self.head(self.norm3(h).mean(1))


def build_transformer(seed: int = 0) -> RowTransformer:
    """The study's small transformer; PyTorch's default initialisation from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RowTransformer()


@dataclass(frozen=True)
class StudyModel:
    """One ``--model`` of the study: how to build it (from a seed), its likelihood, whether its targets are
    the labels (else the inputs themselves), the ``StudyConfig`` defaults that differ for it (``defaults``: its
    pre-training, rates of λ), and its description in summary.md."""

    build: Callable[[int], nn.Module]
    likelihood: str
    labelled: bool
    title: str
    describe: Callable[[], str]
    defaults: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, StudyModel] = {
    "autoencoder": StudyModel(
        build=lambda seed: build_autoencoder(seed=seed),
        likelihood="bernoulli",
        labelled=False,
        title="MNIST autoencoder",
        describe=lambda: f"Autoencoder {list(SIZES)}, Bernoulli likelihood",
    ),
    "cnn": StudyModel(
        build=build_cnn,
        likelihood="categorical",
        labelled=True,
        title="CNN on the MNIST digits",
        describe=lambda: (
            "CNN Conv2d(1, 8, 5, stride 2) → ReLU → Conv2d(8, 16, 5, stride 2) → ReLU → Linear(256, 32) → ReLU → "
            "Linear(32, 10), Categorical likelihood on the labels"
        ),
        # diagonal at 0.1: at the autoencoder's 0.3 its 500-step fit is not certified here (continuation +2.4 %)
        defaults={"pretrain_iterations": 200, "pretrain_lr": 0.05, "aux_lr": {"diagonal": 0.1}},
    ),
    "transformer": StudyModel(
        build=build_transformer,
        likelihood="categorical",
        labelled=True,
        title="transformer on the rows of the MNIST digits",
        describe=lambda: (
            "Transformer on each digit as a sequence of its 28 rows (Linear(28, 32) token embedding + learned "
            "position embedding, one pre-LayerNorm block: 4-head nn.MultiheadAttention and a 32 → 64 → 32 ReLU "
            "MLP with residual connections, final LayerNorm, mean-pooling, Linear(32, 10)), Categorical "
            "likelihood on the labels"
        ),
        defaults={"pretrain_iterations": 300, "pretrain_lr": 0.05},
    ),
}
"""The study's models by ``--model`` name."""

MODEL_DEFAULTS = {name: model.defaults for name, model in MODELS.items()}
"""Per model, the settings that differ from ``StudyConfig``'s defaults (the autoencoder's)."""
