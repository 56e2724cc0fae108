"""Adapters for attention, recurrent, transposed and grouped convolution layers; tied parameters; row bands."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.layers import LAYER_ADAPTERS
from fishleg_core.qforms import QFORMS, RowBandsQ


class TiedLM(nn.Module):
    """Embedding and an output head (with bias) sharing the weight: the usual language-model tying."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 3)
        self.head = nn.Linear(3, 6)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens))).transpose(1, 2)


def blocks_without_warnings(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return [(b.name, b.param_names, b.shape, b.row_parts) for b in fl.map_blocks(model)]


def test_a_tied_head_bias_joins_the_embedding_block_and_fishleg_runs():
    model = TiedLM()
    assert blocks_without_warnings(model) == [("embed", ("embed.weight", "head.bias"), (6, 4), 1)]
    tokens = torch.randint(0, 6, (4, 5), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer = fl.FishLeg(model, "categorical", lr=0.1, aux_every=1, aux_data=[tokens])
    loss = fl.LIKELIHOODS.build("categorical").nll(model(tokens), tokens)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(optimizer.last_aux_loss)


def test_whichever_module_comes_first_owns_the_tied_block():
    model = TiedLM()
    model.embed, model.head = model.head, model.embed  # now the Linear is registered first
    assert blocks_without_warnings(model) == [("embed", ("embed.weight", "embed.bias"), (6, 4), 1)]


def test_tied_linear_layers_share_one_block_with_both_biases():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    assert blocks_without_warnings(model) == [("0", ("0.weight", "0.bias", "2.bias"), (3, 5), 1)]


def test_a_tied_parameter_that_does_not_fit_is_warned_about_with_the_reason():
    class TiedConvAutoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decode = nn.ConvTranspose1d(2, 3, 1)  # weight (2, 3, 1): 3 output-channel rows
            self.encode = nn.Conv1d(3, 2, 1)  # the same weight as (out 2, in 3, 1): its bias has 2 rows
            self.encode.weight = self.decode.weight

    with pytest.warns(
        UserWarning,
        match=r"own diagonal block: encode.bias \(module 'encode' shares decode.weight "
        r"with block 'decode', whose rows it does not fit\)",
    ):
        blocks = fl.map_blocks(TiedConvAutoencoder())
    assert [(b.name, b.param_names) for b in blocks] == [
        ("decode", ("decode.weight", "decode.bias")),
        ("encode.bias", ("encode.bias",)),
    ]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (
            nn.MultiheadAttention(4, 2),
            [
                ("", ("in_proj_weight", "in_proj_bias"), (12, 5), 3),
                ("out_proj", ("out_proj.weight", "out_proj.bias"), (4, 5), 1),
            ],
        ),
        (
            nn.GRU(3, 4),
            [
                ("ih_l0", ("weight_ih_l0", "bias_ih_l0"), (12, 4), 1),
                ("hh_l0", ("weight_hh_l0", "bias_hh_l0"), (12, 5), 1),
            ],
        ),
        (
            nn.LSTM(3, 4, bias=False, proj_size=2),
            [
                ("ih_l0", ("weight_ih_l0",), (16, 3), 1),
                ("hh_l0", ("weight_hh_l0",), (16, 2), 1),
                ("hr_l0", ("weight_hr_l0",), (2, 4), 1),
            ],
        ),
        (
            nn.RNN(2, 3, bidirectional=True),
            [
                ("ih_l0", ("weight_ih_l0", "bias_ih_l0"), (3, 3), 1),
                ("hh_l0", ("weight_hh_l0", "bias_hh_l0"), (3, 4), 1),
                ("ih_l0_reverse", ("weight_ih_l0_reverse", "bias_ih_l0_reverse"), (3, 3), 1),
                ("hh_l0_reverse", ("weight_hh_l0_reverse", "bias_hh_l0_reverse"), (3, 4), 1),
            ],
        ),
        (nn.ConvTranspose2d(4, 6, 3, groups=2), [("", ("weight", "bias"), (6, 19), 2)]),
        (nn.ConvTranspose1d(2, 3, 2, bias=False), [("", ("weight",), (3, 4), 1)]),
        (nn.Conv2d(4, 6, 3, groups=2), [("", ("weight", "bias"), (6, 19), 2)]),
    ],
    ids=[
        "attention",
        "gru",
        "lstm_projected",
        "rnn_bidirectional",
        "conv_transpose_grouped",
        "conv_transpose_1d",
        "conv_grouped",
    ],
)
def test_new_layers_get_their_blocks(module, expected):
    assert blocks_without_warnings(module) == expected
    q = fl.build_model_q(module)
    for group, (_, _, _, parts) in zip(q.groups, expected):
        assert isinstance(group.form, RowBandsQ) == (parts > 1)


def test_attention_with_other_key_and_value_sizes_names_the_bias_it_leaves_out():
    with pytest.warns(UserWarning, match=r"in_proj_bias \(the AttentionAdapter of module '' \(MultiheadAttention\)"):
        blocks = fl.map_blocks(nn.MultiheadAttention(4, 2, kdim=3, vdim=5))
    assert [(b.name, b.shape) for b in blocks] == [
        ("q", (4, 4)),
        ("k", (4, 3)),
        ("v", (4, 5)),
        ("in_proj_bias", (12, 1)),
        ("out_proj", (4, 5)),
    ]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_block_rows_are_output_channels_and_bands_are_groups(transposed, groups):
    """The gradient of one output channel's sum lives in that row of G only, and in the columns of its group
    (which, for a row band, are all its columns)."""
    layer = (nn.ConvTranspose2d if transposed else nn.Conv2d)(4, 6, 2, groups=groups).double()
    (block,) = fl.map_blocks(layer)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    for channel in range(6):
        layer.zero_grad()
        layer(x)[:, channel].sum().backward()
        G = block.layout.pack([layer.weight.grad, layer.bias.grad])
        rows = G.abs().sum(1) > 0
        assert rows.tolist() == [r == channel for r in range(6)]
    assert block.row_parts == groups


@pytest.mark.parametrize("transposed", [0, 2])
def test_layout_pack_unpack_and_permutation_agree(transposed):
    from fishleg_core.layers import BlockLayout

    shapes = (torch.Size([4, 3, 2]), torch.Size([6]))
    layout = (
        BlockLayout(shapes, size=6, axis=1, transposed=(transposed, 0))
        if transposed
        else BlockLayout((torch.Size([6, 2, 2]), torch.Size([6])), size=6)
    )
    tensors = [torch.randn(s) for s in layout.param_shapes]
    G = layout.pack(tensors)
    assert all(torch.equal(a, b) for a, b in zip(layout.unpack(G), tensors))
    flat = torch.cat([t.reshape(-1) for t in tensors])
    assert torch.equal(G.reshape(-1), flat[layout.permutation()])


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("form", ["kron", "diagonal", "kron_sum"])
def test_row_bands_act_band_by_band_and_match_their_dense_matrix(form):
    bands = [QFORMS.build(form, shape=(2, 3)) for _ in range(3)]
    q = RowBandsQ(bands)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.1 * torch.randn_like(p))
    G = torch.randn(6, 3)
    QG = q(G)
    torch.testing.assert_close(QG.reshape(-1), q.to_dense() @ G.reshape(-1))
    torch.testing.assert_close(QG[2:4], bands[1](G[2:4]))
    big = RowBandsQ([QFORMS.build(form, shape=(8, 9)) for _ in range(2)])
    left, right = torch.randn(16, 1), torch.randn(9, 1)
    product = big.multiply_low_rank(left, right)
    if form == "diagonal":  # no low-rank product: the bands decline, and so does RowBandsQ
        assert product is None
    else:
        torch.testing.assert_close(product, big(left @ right.T))


def test_every_registered_adapter_type_is_exercised_here_or_in_the_zoo():
    covered = {
        nn.Linear,
        nn.Bilinear,
        nn.Embedding,
        nn.LayerNorm,
        nn.RMSNorm,
        nn.GroupNorm,
        torch.nn.modules.batchnorm._NormBase,
        torch.nn.modules.conv._ConvNd,
        torch.nn.modules.conv._ConvTransposeNd,
        nn.MultiheadAttention,
        nn.RNNBase,
    }
    registered = {key for key in LAYER_ADAPTERS if isinstance(key, type) and key.__module__.startswith("torch")}
    assert registered <= covered, registered - covered
