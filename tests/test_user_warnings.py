"""Every warning fishleg_core gives points at the user's line of code, not into the library or torch."""

from __future__ import annotations

import warnings

import pytest
import torch
from models import tiny_mlp
from torch import nn

import fishleg_core as fl

LIKELIHOOD = fl.LIKELIHOODS.build("gaussian")


class WithBareParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2).double()
        self.offset = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.offset


def one_step(optimizer: fl.FishLeg, model: nn.Module, modify_gradient=lambda model: None, batch: int = 8) -> None:
    x = torch.randn(batch, 4, dtype=torch.float64)
    optimizer.zero_grad()
    LIKELIHOOD.nll(model(x), torch.zeros(batch, 2, dtype=torch.float64)).backward()
    modify_gradient(model)
    optimizer.step()


def unmatched_form_choice() -> None:
    fl.FishLeg(tiny_mlp(2), LIKELIHOOD, lr=0.1, aux_every=0, q={"forms": {"decoder.*": "kron"}})


def unsupported_parameter() -> None:
    fl.FishLeg(WithBareParameter(), LIKELIHOOD, lr=0.1, aux_every=0)


def clipped_gradient() -> None:
    model = tiny_mlp(2)
    optimizer = fl.FishLeg(model, LIKELIHOOD, lr=0.1, aux_every=0)
    # batch 2: a rank the low-rank product takes on these 5-wide blocks, so the factors are captured and checked
    one_step(optimizer, model, lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 1e-3), batch=2)


def nan_gradient() -> None:
    model = tiny_mlp(2)
    optimizer = fl.FishLeg(model, LIKELIHOOD, lr=0.1, aux_every=0)
    one_step(optimizer, model, lambda m: m[0].weight.grad.fill_(float("nan")))


@pytest.mark.parametrize("cause", [unmatched_form_choice, unsupported_parameter, clipped_gradient, nan_gradient])
def test_the_warning_names_the_users_line(cause):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cause()
    assert caught, f"{cause.__name__} gave no warning"
    for warning in caught:
        assert warning.filename == __file__, (str(warning.message), warning.filename, warning.lineno)
