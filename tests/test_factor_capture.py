"""A layer adapter's gradient factors are used or refused, never silently ignored: on a module the adapter
splits into several blocks, ``captures_factors=True`` is an error that says why; on a module of one block,
factors that do not reproduce the gradient fall back to the dense product with a warning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.layers.adapters import LayerAdapter, LinearAdapter


class TwoMaps(nn.Module):
    """y = x Uᵀ + x Vᵀ: two weight matrices, which its adapter makes two blocks."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.U = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.V = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)

    def forward(self, x):
        return x @ self.U.T + x @ self.V.T


class TwoBlocksWithFactors(LayerAdapter):
    """Two blocks (U and V), and factors that claim to be the gradient of the module: deliberately wrong."""

    def blocks(self, module):
        return [(":U", ("U",)), (":V", ("V",))]

    def captures_factors(self, module):
        return True

    def factor_columns(self, module, inputs):
        return 3 * inputs

    def factor_rows(self, module, output_grad):
        return output_grad


class WrongLinearFactors(LinearAdapter):
    """The Linear adapter with factors twice the gradient."""

    def factor_rows(self, module, output_grad):
        return 2 * output_grad


@pytest.fixture
def two_blocks_with_factors():
    fl.LAYER_ADAPTERS.register(TwoMaps)(TwoBlocksWithFactors)
    yield
    fl.LAYER_ADAPTERS.unregister(TwoMaps)


def test_factors_on_a_module_of_several_blocks_are_refused_with_the_reason(two_blocks_with_factors):
    model = nn.Sequential(TwoMaps(4, 3), nn.Tanh(), nn.Linear(3, 2))
    assert [block.name for block in fl.map_blocks(model)] == ["0:U", "0:V", "2"]
    with pytest.raises(ValueError) as error:
        fl.FishLeg(model, "gaussian", lr=0.1, aux_every=0)
    message = str(error.value)
    assert "TwoBlocksWithFactors: captures_factors is True for module '0' (TwoMaps)" in message
    assert "2 blocks ('0:U', '0:V')" in message and "the factors would be ignored" in message
    assert "Return False from captures_factors" in message
    fl.FishLeg(model, "gaussian", lr=0.1, aux_every=0, low_rank=False)  # no capture: nothing to refuse


def test_wrong_factors_of_a_single_block_fall_back_to_the_dense_product_with_a_warning(monkeypatch):
    monkeypatch.setitem(fl.LAYER_ADAPTERS._entries, nn.Linear, WrongLinearFactors)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 20))  # wide enough for rank 4 to pay
    dense_model = nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 20))
    dense_model.load_state_dict(model.state_dict())
    x, y = torch.randn(4, 40), torch.randn(4, 20)
    optimizer = fl.FishLeg(model, "gaussian", lr=0.1, aux_every=0)
    dense = fl.FishLeg(dense_model, "gaussian", lr=0.1, aux_every=0, low_rank=False)
    likelihood = fl.LIKELIHOODS.build("gaussian")
    with pytest.warns(UserWarning, match="using the dense Q·g product because its .grad differs"):
        for net, opt in ((model, optimizer), (dense_model, dense)):
            opt.zero_grad()
            likelihood.nll(net(x), y).backward()
            opt.step()
    for p, q in zip(model.parameters(), dense_model.parameters()):
        torch.testing.assert_close(p, q)
