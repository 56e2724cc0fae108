"""check_adapter: a layer adapter's contract (coverage, exact F·v against a dense Fisher from per-example
Jacobians, Q·v against to_dense, gradient factors) on built-in layers and on a user's W = UVᵀ layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.layers.adapters import LayerAdapter, LinearAdapter
from fishleg_core.testing import check_adapter


class LowRankLinear(nn.Module):
    """y = x (U Vᵀ)ᵀ + b: a weight W = U Vᵀ of rank r (the newcomer's layer)."""

    def __init__(self, n_in: int, n_out: int, rank: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.U = nn.Parameter(torch.randn(n_out, rank, generator=generator) / rank**0.5)
        self.V = nn.Parameter(torch.randn(n_in, rank, generator=generator) / n_in**0.5)
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.V @ self.U.T + self.b


class LowRankAdapter(LayerAdapter):
    """Two blocks: [U | b] (out × (r + 1)) and V (in × r)."""

    def blocks(self, module):
        return [(":U", ("U", "b")), (":V", ("V",))]


class ForgetsTheBias(LowRankAdapter):
    def blocks(self, module):
        return [(":U", ("U",)), (":V", ("V",))]


class WrongFactors(LinearAdapter):
    def factor_columns(self, module, inputs):
        return 2 * super().factor_columns(module, inputs)


@pytest.fixture
def register(monkeypatch):
    """Register an adapter for a layer type for one test (the previous entry, if any, comes back after)."""

    def put(layer, adapter):
        monkeypatch.setitem(fl.LAYER_ADAPTERS._entries, layer, adapter)

    return put


@pytest.mark.parametrize(
    "module,inputs,options",
    [
        (nn.Linear(4, 3), (5, 4), {}),
        (nn.Linear(4, 3), (5, 4), {"likelihood": "categorical", "form": "ekfac"}),
        (nn.Conv2d(2, 3, 3), (3, 2, 6, 6), {}),
        (nn.LayerNorm(4), (5, 4), {"form": "diagonal"}),
    ],
    ids=["linear", "linear-categorical", "conv2d", "layernorm"],
)
def test_the_built_in_adapters_pass(module, inputs, options):
    check_adapter(module, torch.randn(*inputs, generator=torch.Generator().manual_seed(0)), **options)


def test_a_users_low_rank_layer_passes_with_a_correct_adapter(register):
    register(LowRankLinear, LowRankAdapter)
    check_adapter(LowRankLinear(5, 4, 2), torch.randn(6, 5), form="kron")


def test_a_parameter_no_block_covers_fails_the_coverage_check(register):
    register(LowRankLinear, ForgetsTheBias)
    with pytest.raises(
        AssertionError, match=r"ForgetsTheBias on LowRankLinear: check 'coverage' failed: .*parameters b "
    ):
        check_adapter(LowRankLinear(5, 4, 2), torch.randn(6, 5))


def test_wrong_gradient_factors_fail_their_check(register):
    register(nn.Linear, WrongFactors)
    with pytest.raises(AssertionError, match=r"WrongFactors on Linear: check 'gradient factors' failed"):
        check_adapter(nn.Linear(40, 30), torch.randn(4, 40))


def test_a_layer_without_an_adapter_is_named():
    with pytest.raises(AssertionError, match="no layer adapter is registered for LowRankLinear"):
        check_adapter(LowRankLinear(5, 4, 2), torch.randn(6, 5))
