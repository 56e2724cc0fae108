"""Layer-to-block mapping, form choice and the whole-model Q (docs/design.md §6)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.layers import LayerAdapter
from fishleg_core.param_vectors import flatten


class Net(nn.Module):
    """A nested, non-Sequential model with one module of every built-in adapter kind and a bare parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 3)
        self.features = nn.ModuleDict({"conv": nn.Conv2d(1, 2, 3), "bn": nn.BatchNorm2d(2)})
        self.head = nn.ModuleList([nn.LayerNorm(5), nn.Linear(5, 4)])
        self.temperature = nn.Parameter(torch.ones(3))


def blocks_by_name(blocks):
    return {block.name: block for block in blocks}


def test_custom_nested_module_gets_the_expected_blocks():
    with pytest.warns(UserWarning, match=r"own diagonal block: temperature \(module '' \(Net\) has no layer adapter\)"):
        blocks = blocks_by_name(fl.map_blocks(Net()))
    expected = {
        "embed": ((7, 3), "diagonal", ("embed.weight",)),
        "features.conv": ((2, 10), "kron", ("features.conv.weight", "features.conv.bias")),
        "features.bn": ((2, 2), "diagonal", ("features.bn.weight", "features.bn.bias")),
        "head.0": ((2, 5), "diagonal", ("head.0.weight", "head.0.bias")),
        "head.1": ((4, 6), "kron", ("head.1.weight", "head.1.bias")),
        "temperature": ((3, 1), "diagonal", ("temperature",)),
    }
    assert {name: (b.shape, b.default_form, b.param_names) for name, b in blocks.items()} == expected


def test_strict_mode_rejects_a_bare_parameter():
    with pytest.raises(
        fl.UnsupportedLayerError,
        match=r"strict mode: .* parameters temperature \(module '' \(Net\) has no layer adapter\);",
    ):
        fl.map_blocks(Net(), strict=True)


def test_tied_weights_form_one_block():
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(6, 3)
            self.decoder = nn.Linear(3, 6, bias=False)
            self.decoder.weight = self.embed.weight

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blocks = fl.map_blocks(TiedLM())
    assert [(b.name, b.param_names) for b in blocks] == [("embed", ("embed.weight",))]


def test_a_module_used_twice_is_one_block():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    assert [b.name for b in fl.map_blocks(model)] == ["0"]


def test_subclasses_resolve_along_the_class_hierarchy():
    class MyLinear(nn.Linear):
        pass

    (block,) = fl.map_blocks(MyLinear(4, 2))
    assert block.shape == (2, 5) and block.default_form == "kron"


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    model[1].requires_grad_(False)
    assert [b.name for b in fl.map_blocks(model)] == ["0"]


def test_a_user_registered_adapter_is_used():
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = nn.Parameter(torch.randn(4, 3))
            self.offset = nn.Parameter(torch.zeros(4))

    @fl.LAYER_ADAPTERS.register(Gated)
    class GatedAdapter(LayerAdapter):
        parameter_names = ("kernel", "offset")

    (block,) = fl.map_blocks(Gated())
    assert (block.shape, block.param_names, block.default_form) == ((4, 4), ("kernel", "offset"), "kron")


def test_forms_are_chosen_by_pattern_then_type_then_default():
    choices = {"head.*": {"form": "kron_sum", "K": 3}, "Linear": "kron", "Conv2d": "ekfac", "default": "dense"}
    with pytest.warns(UserWarning, match="temperature"):
        q = fl.build_model_q(Net(), choices)
    forms = {group.block.name: group.form for group in q.groups}
    assert type(forms["head.1"]).__name__ == "KronSumQ" and forms["head.1"].K == 3
    assert type(forms["head.0"]).__name__ == "KronSumQ"
    assert type(forms["features.conv"]).__name__ == "EKFACQ"
    assert {type(forms[name]).__name__ for name in ["embed", "features.bn", "temperature"]} == {"DenseQ"}


def test_a_choice_that_matches_nothing_is_warned_about():
    with pytest.warns(UserWarning, match=r"form choices 'decoder\.\*', 'GRU' match no layer type or module name"):
        fl.build_model_q(nn.Sequential(nn.Linear(2, 2)), {"decoder.*": "kron", "GRU": "kron"})


def test_an_unknown_form_name_is_rejected():
    with pytest.raises(fl.UnknownNameError, match="unknown QForm 'kronecker'; known: diagonal, kron"):
        fl.build_model_q(nn.Linear(2, 2), {"Linear": "kronecker"})


@pytest.mark.usefixtures("float64")
def test_model_q_is_the_block_diagonal_assembly_of_its_forms():
    with pytest.warns(UserWarning):
        model = Net()
        q = fl.build_model_q(model, {"Linear": "kron_sum", "Conv2d": "ekfac", "LayerNorm": "dense"})
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = dict(model.named_parameters())
    names = list(params)
    offsets = dict(zip(names, torch.cumsum(torch.tensor([0] + [p.numel() for p in params.values()]), 0).tolist()))
    expected = torch.zeros(sum(p.numel() for p in params.values()), sum(p.numel() for p in params.values()))
    for group in q.groups:
        # vec(G) row-major, built here by hand: column-stacked blocks put W[i, :] then b[i] on row i.
        index_tensors = [
            torch.arange(params[n].numel()).reshape(params[n].shape) + offsets[n] for n in group.param_names
        ]
        if group.block.layout.axis == 1:
            vec_index = torch.cat([t.reshape(group.block.shape[0], -1) for t in index_tensors], dim=1).reshape(-1)
        else:
            vec_index = torch.cat([t.reshape(1, -1) for t in index_tensors], dim=0).reshape(-1)
        expected[vec_index[:, None], vec_index[None, :]] = group.form.to_dense().detach()
    order = torch.cat([torch.arange(params[n].numel()) + offsets[n] for n in q.param_names])
    torch.testing.assert_close(q.to_dense().detach(), expected[order][:, order], rtol=0, atol=1e-14)
    x = {n: torch.randn_like(p) for n, p in params.items()}
    torch.testing.assert_close(flatten(q(x), q.param_names), q.to_dense() @ flatten(x, q.param_names))


def test_model_q_reports_missing_entries():
    q = fl.build_model_q(nn.Linear(2, 2))
    with pytest.raises(KeyError, match="missing: bias"):
        q({"weight": torch.zeros(2, 2)})
