"""Built-in adapters for third-party layers: Hugging Face's Conv1D (a linear layer with a transposed weight,
banded per q, k, v projection in GPT-2's c_attn) and a fused q, k, v nn.Linear banded by module-name pattern."""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import dense_fisher, flat, trainable
from thirdparty_models import StandInConv1D, StandInGPTBlock, import_optional, load_example
from torch import nn

import fishleg_core as fl
from fishleg_core.layers import adapter_for
from fishleg_core.layers.adapters import TransposedLinearAdapter
from fishleg_core.qforms import RowBandsQ
from fishleg_core.testing import check_adapter


class StandInGPT(nn.Module):
    """Token embedding, one GPT-2-layout block and a linear head: logits of shape (B, vocab, T)."""

    def __init__(self, vocab: int = 7, embed: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.block = StandInGPTBlock(embed, heads)
        self.head = nn.Linear(embed, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(tokens))).transpose(1, 2)


def without_warnings(action):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return action()


def perturbed_q(model, **options):
    q = fl.build_model_q(model, **options)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return q


def test_the_adapter_registers_by_qualified_name_without_importing_transformers():
    assert isinstance(adapter_for(StandInConv1D(6, 2)), TransposedLinearAdapter)
    assert "transformers.pytorch_utils.Conv1D" in fl.LAYER_ADAPTERS.names()


@pytest.mark.usefixtures("float64")
def test_a_conv1d_block_is_the_transposed_weight_beside_the_bias():
    layer = StandInConv1D(5, 3)
    (block,) = without_warnings(lambda: fl.map_blocks(layer))
    assert (block.shape, block.row_parts) == ((5, 4), 1)
    G = block.layout.pack([layer.weight, layer.bias])
    torch.testing.assert_close(G, torch.cat([layer.weight.T, layer.bias[:, None]], dim=1), rtol=0, atol=0)
    fused = StandInConv1D(6, 2)  # three times as many outputs as inputs: GPT-2's fused q, k, v
    assert without_warnings(lambda: fl.map_blocks(fused))[0].row_parts == 3
    assert fl.map_blocks(fused, bands={"": 1})[0].row_parts == 1


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("bands", [None, {"block.c_fc": 2}])
def test_q_times_a_vector_matches_its_dense_matrix(bands):
    torch.manual_seed(0)
    model = StandInGPT()
    q = perturbed_q(model, bands=bands)
    v = {name: torch.randn_like(p) for name, p in trainable(model).items()}
    torch.testing.assert_close(flat(q(v), q.param_names), q.to_dense() @ flat(v, q.param_names))
    c_attn = next(group for group in q.groups if group.block.name == "block.c_attn")
    assert isinstance(c_attn.form, RowBandsQ) and len(c_attn.form.forms) == 3


@pytest.mark.usefixtures("float64")
def test_the_exact_fisher_vector_product_matches_the_dense_fisher():
    torch.manual_seed(0)
    model = StandInGPT()
    tokens = torch.randint(0, 7, (3, 5))
    names = list(trainable(model))
    F = dense_fisher(model, tokens, "categorical")
    v = {name: torch.randn_like(p) for name, p in trainable(model).items()}
    Fv = fl.fisher_vp(model, "categorical", tokens, v)
    torch.testing.assert_close(flat(Fv, names), F @ flat(v, names), rtol=1e-10, atol=1e-12)


def spy_on_factors(optimizer):
    """The block names whose low-rank factors each step used."""
    used, factors = [], optimizer._capture.factors

    def recording(gradient):
        found = factors(gradient)
        used.append(sorted(found))
        return found

    optimizer._capture.factors = recording
    return used


@pytest.mark.usefixtures("float64")
def test_low_rank_and_dense_q_times_g_agree_on_conv1d_layers():
    """The captured factors Δᵀ[A | 1] reproduce the Conv1D gradients (banded c_attn included): runs with
    and without the low-rank product take the same steps, and the low-rank one used the factors."""
    torch.manual_seed(0)
    tokens = [torch.randint(0, 7, (1, 4)) for _ in range(3)]
    results = []
    for low_rank in (True, False):
        torch.manual_seed(1)
        model = StandInGPT(embed=8)
        q = perturbed_q(model)  # a fixed Q away from the identity (Adam on λ would amplify round-off)
        optimizer = fl.FishLeg(model, "categorical", lr=0.05, aux_every=0, q=q, low_rank=low_rank)
        used = spy_on_factors(optimizer) if low_rank else None
        for batch in tokens:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch), batch).backward()
            optimizer.step()
        results.append(flat(trainable(model), list(trainable(model))))
        if used is not None:
            assert used == [["block.c_attn", "block.c_fc", "block.c_proj", "block.mlp_proj", "head"]] * 3
    torch.testing.assert_close(results[0], results[1])


def linear_equivalent_blocks_are_kron(q, linear_types):
    labels = {group.block.name: (group.block.module_type.__name__, group.label) for group in q.groups}
    linear = {name: label for name, (layer, label) in labels.items() if layer in linear_types}
    assert linear and all("kron" in label for label in linear.values()), linear
    return labels


def test_tiny_gpt2_gets_a_kronecker_q_on_every_conv1d_and_bands_on_c_attn():
    transformers = import_optional("transformers")
    config = transformers.GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    q = without_warnings(lambda: fl.build_model_q(model))
    labels = linear_equivalent_blocks_are_kron(q, {"Conv1D", "Linear"})
    assert sum(layer == "Conv1D" for layer, _ in labels.values()) == 8
    assert labels["transformer.h.0.attn.c_attn"] == ("Conv1D", "3×kron")


@pytest.mark.usefixtures("float64")
def test_tiny_gpt2_fisher_vector_product_matches_the_dense_fisher():
    transformers = import_optional("transformers")
    config = transformers.GPT2Config(
        vocab_size=11, n_positions=4, n_embd=4, n_layer=1, n_head=2, attn_implementation="eager"
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    tokens = torch.randint(0, 11, (2, 4))

    def output_fn(out):
        return out.logits.transpose(1, 2)

    names = list(trainable(model))
    F = dense_fisher(model, tokens, "categorical", output_fn=output_fn)
    v = {name: torch.randn_like(p) for name, p in trainable(model).items()}
    Fv = fl.fisher_vp(model, "categorical", tokens, v, output_fn=output_fn)
    torch.testing.assert_close(flat(Fv, names), F @ flat(v, names), rtol=1e-10, atol=1e-12)


def test_a_timm_layout_vit_gets_kronecker_q_everywhere_and_bands_on_qkv():
    vit = load_example("timm_vit")
    model = vit.tiny_vit()
    q = fl.build_model_q(model, bands={"*.qkv": 3})
    labels = linear_equivalent_blocks_are_kron(q, {"Linear", "Conv2d"})
    assert labels["blocks.0.attn.qkv"] == ("Linear", "3×kron")
    assert labels["blocks.1.mlp.fc1"] == ("Linear", "kron")
    assert labels["patch_embed.proj"] == ("Conv2d", "kron")


@pytest.mark.parametrize(("nf", "nx"), [(5, 3), (6, 2)], ids=["conv1d", "conv1d_fused_qkv"])
def test_the_conv1d_adapter_keeps_the_layer_adapter_contract(nf, nx):
    check_adapter(StandInConv1D(nf, nx), torch.randn(4, 3, nx, generator=torch.Generator().manual_seed(0)))
