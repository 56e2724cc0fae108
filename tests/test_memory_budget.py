"""A memory budget for Q: diagonal Kronecker factors beyond a size (PSGD's max_size, max_skew), a total budget
that build_model_q meets by making the largest factors diagonal, bytes in the summary; torchvision's
ResNet-18 (or its torch.nn stand-in) under the defaults."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from thirdparty_models import load_example
from torch import nn

import fishleg_core as fl
from fishleg_core.qforms.kron import kron_parameter_count
from fishleg_core.qforms.positive import DiagonalFactor, TriangularFactor
from fishleg_core.testing import check_qform


@pytest.mark.parametrize("options", [{"max_size": 3}, {"max_skew": 1.0}, {"max_size": 1, "max_skew": 0.5}])
def test_kron_with_diagonal_factors_keeps_the_qform_contract(options):
    check_qform("kron", **options)


@pytest.mark.parametrize(
    ("options", "sides"),
    [
        ({}, (TriangularFactor, TriangularFactor)),
        ({"max_size": 5}, (TriangularFactor, DiagonalFactor)),
        ({"max_skew": 1.0}, (TriangularFactor, DiagonalFactor)),
        ({"max_size": None}, (TriangularFactor, TriangularFactor)),
    ],
)
def test_a_side_beyond_max_size_or_max_skew_is_diagonal_and_counted(options, sides):
    q = fl.QFORMS.build("kron", shape=(4, 6), **options)
    assert (type(q.L), type(q.R)) == sides
    assert sum(p.numel() for p in q.parameters()) == kron_parameter_count((4, 6), **options)


@pytest.mark.usefixtures("float64")
def test_a_diagonal_factor_is_the_diagonal_of_m():
    q = fl.QFORMS.build("kron", shape=(3, 4), max_size=3, init_scale=2.0)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.3 * torch.randn_like(p))
    dense = q.to_dense()
    torch.testing.assert_close(dense, torch.kron(q.L.gram(), torch.diag(q.R.diagonal())))
    G = torch.randn(3, 4)
    torch.testing.assert_close(q(G).reshape(-1), dense @ G.reshape(-1))
    fresh = fl.QFORMS.build("kron", shape=(3, 4), max_size=3, init_scale=2.0)
    torch.testing.assert_close(fresh.to_dense(), 2.0 * torch.eye(12))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 20), nn.Tanh(), nn.Linear(20, 5))


def aux_count(q):
    return sum(p.numel() for p in q.parameters())


def test_a_total_budget_makes_the_largest_factors_diagonal_first():
    model = mlp()
    n = sum(p.numel() for p in model.parameters())
    full = fl.build_model_q(model)
    assert aux_count(full) > 0.5 * n
    q = fl.build_model_q(model, aux_budget=0.5)
    assert aux_count(q) <= 0.5 * n
    diagonal = [
        (g.block.name, side) for g in q.groups for side in "LR" if isinstance(getattr(g.form, side), DiagonalFactor)
    ]
    assert ("0", "R") in diagonal  # the 41-wide input side of the first layer goes first
    assert ("4", "L") not in diagonal  # the 5-wide output side of the last stays full


def test_a_budget_that_cannot_be_met_is_warned_about():
    with pytest.warns(UserWarning, match="aux_budget: Q holds .* with every Kronecker factor diagonal"):
        fl.build_model_q(mlp(), aux_budget=0.001)


def test_the_summary_shows_bytes_and_warns_above_twice_the_model():
    model = nn.Sequential(nn.Linear(300, 2))
    lines = fl.build_model_q(model, {"default": {"form": "kron", "max_size": None}}).summary().splitlines()
    # (2, 301): 3 + 301·302/2 = 45,454 auxiliary parameters in float32 for 602 model parameters
    assert lines[-1].startswith("! Q holds 75.50× the model's parameters (above 2×), 177.6 kB")
    assert "Q holds" not in fl.build_model_q(model, aux_budget=1.0).summary()


def test_resnet18_fits_twice_the_model_and_a_checkpoint_three_times_its_state_dict():
    example = load_example("torchvision_resnet")
    torch.manual_seed(0)
    model = example.resnet18(num_classes=10)
    params = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        optimizer = fl.FishLeg(model, "categorical", lr=0.01, aux_every=1)
    assert aux_count(optimizer.q) <= 2 * params
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step(aux_batch=x)

    def size(state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.tell()

    assert size(optimizer.state_dict()) <= 3 * size(model.state_dict())
