"""The deep linear network of the paper's section 5.1 and its noisy teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fishleg_core import LIKELIHOODS, Likelihood


def build_deep_linear(depth: int, width: int, seed: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """f(x) = W_depth ⋯ W_1 x: ``depth`` bias-free ``nn.Linear(width, width)`` with entries W_ij ~ N(0, 1/width)."""
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(depth):
        layer = nn.Linear(width, width, bias=False, dtype=dtype)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(width, width, generator=generator, dtype=dtype) / width**0.5)
        layers.append(layer)
    return nn.Sequential(*layers)


def half_squared_error(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """L = mean_b ½‖y_b − f(x_b)‖² / n (n outputs): the negative log-likelihood of y ~ N(f(x), σ² I) with
    σ² = n, without its constant (see ``likelihood``), i.e. half the mean squared error per output."""
    return 0.5 * (targets - model(inputs)).pow(2).mean()


def likelihood(width: int) -> Likelihood:
    """The Gaussian likelihood whose NLL ``half_squared_error`` is: σ = √width."""
    return LIKELIHOODS.build("gaussian", sigma=width**0.5)


@dataclass(frozen=True)
class TeacherData:
    """Inputs x ~ N(0, I) and targets y = teacher(x) + σ₀ ε, for training and testing, plus the teacher."""

    teacher: nn.Sequential
    train_inputs: Tensor
    train_targets: Tensor
    test_inputs: Tensor
    test_targets: Tensor

    @property
    def noise_floor(self) -> float:
        """The teacher's own test loss: what no student can beat on average."""
        with torch.no_grad():
            return half_squared_error(self.teacher, self.test_inputs, self.test_targets).item()


def teacher_data(depth: int, width: int, n_train: int, n_test: int, noise: float, seed: int) -> TeacherData:
    """A teacher of the student's class (seeded by ``seed``) and its noisy samples."""
    teacher = build_deep_linear(depth, width, seed=10_000 + seed)
    generator = torch.Generator().manual_seed(20_000 + seed)
    inputs = torch.randn(n_train + n_test, width, generator=generator)
    with torch.no_grad():
        targets = teacher(inputs) + noise * torch.randn(n_train + n_test, width, generator=generator)
    return TeacherData(teacher, inputs[:n_train], targets[:n_train], inputs[n_train:], targets[n_train:])
