"""The zoo: small models of the kinds researchers use, each with its inputs, likelihood and output selector.

Every model is float64, tiny (at most a few hundred parameters, so dense Fishers are cheap) and built
deterministically without touching the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fishleg_core.layers import LAYER_ADAPTERS, BlockLayout, LayerAdapter


@dataclass(frozen=True)
class ZooCase:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    likelihood: str = "categorical"
    output_fn: Callable | None = None
    integer_inputs: int = 0  # > 0: token ids in [0, integer_inputs)
    warns: str | None = None  # the fallback warning expected when the model is mapped


class GatedLinear(nn.Module):
    """y = (x Wᵀ) ⊙ sigmoid(gate): a custom layer with its own adapter."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.gate = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return (x @ self.weight.T) * torch.sigmoid(self.gate)


@LAYER_ADAPTERS.register(GatedLinear)
class GatedLinearAdapter(LayerAdapter):
    parameter_names = ("weight", "gate")

    def layout(self, module, shapes):
        return BlockLayout(tuple(shapes), size=module.weight.shape[0], axis=1)


class TinyGPT(nn.Module):
    """Token and position embeddings, one pre-norm transformer block (causal multi-head attention through
    the fused attention kernel, GELU MLP) and an output head tied to the token embedding (with a bias)."""

    def __init__(self, vocab: int = 7, dim: int = 4, length: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(length, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 6), nn.GELU(), nn.Linear(6, dim))
        self.head = nn.Linear(dim, vocab)
        self.head.weight = self.embed.weight
        self.register_buffer("mask", torch.triu(torch.ones(length, length, dtype=torch.bool), 1))

    def forward(self, tokens):
        x = self.embed(tokens) + self.position(torch.arange(tokens.shape[1]))
        h = self.norm1(x)
        x = x + self.attention(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x).transpose(1, 2)  # (B, vocab, length): a categorical per position


class RecurrentClassifier(nn.Module):
    """A recurrent layer over the sequence, a linear head on its last output; returns (logits, state)."""

    def __init__(self, rnn: nn.RNNBase, width: int) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(width, 3)

    def forward(self, x):
        out, state = self.rnn(x)
        return self.head(out[:, -1]), state


class DictOutput(nn.Module):
    """An MLP returning {"logits": ..., "features": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        features = torch.tanh(self.body(x))
        return {"logits": self.head(features), "features": features}


class Temperature(nn.Module):
    """An MLP whose logits are scaled by a raw, adapter-less nn.Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        self.temperature = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.mlp(x) * self.temperature


class TiedConvs(nn.Module):
    """Two convolutions sharing one weight, each with its own bias (conv ↔ conv tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.second.weight = self.first.weight
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))).flatten(1))


def _frozen_mlp() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
    model[0].requires_grad_(False)
    model[1].bias.requires_grad_(False)
    return model


ZOO: dict[str, ZooCase] = {
    "mlp": ZooCase(lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)), (4,)),
    "cnn_batchnorm_pool": ZooCase(
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 3)
        ),
        (1, 6, 6),
    ),
    "grouped_and_transposed_conv2d": ZooCase(
        lambda: nn.Sequential(
            nn.Conv2d(4, 4, 3, groups=2),
            nn.Tanh(),
            nn.ConvTranspose2d(4, 2, 2, stride=2),
            nn.Flatten(),
            nn.Linear(72, 3),
        ),
        (4, 5, 5),
    ),
    "conv1d_grouped_transposed": ZooCase(
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3),
            nn.Tanh(),
            nn.ConvTranspose1d(4, 2, 3, stride=2, groups=2),
            nn.Flatten(),
            nn.Linear(14, 3),
        ),
        (2, 5),
    ),
    "transposed_conv3d": ZooCase(
        lambda: nn.Sequential(nn.ConvTranspose3d(2, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(54, 2)),
        (2, 2, 2, 2),
        likelihood="gaussian",
    ),
    "gpt_tied_embeddings": ZooCase(TinyGPT, (5,), integer_inputs=7),
    "gru": ZooCase(
        lambda: RecurrentClassifier(nn.GRU(3, 4, batch_first=True), 4), (4, 3), output_fn=lambda out: out[0]
    ),
    "lstm_bidirectional_projected": ZooCase(
        lambda: RecurrentClassifier(nn.LSTM(3, 3, batch_first=True, bidirectional=True, proj_size=2), 4),
        (3, 3),
        output_fn=lambda out: out[0],
    ),
    "frozen_parameters": ZooCase(_frozen_mlp, (4,)),
    "raw_parameter": ZooCase(
        Temperature,
        (4,),
        warns=r"own diagonal block: temperature \(module '' \(Temperature\) "
        r"has no layer adapter\)",
    ),
    "custom_adapter": ZooCase(lambda: nn.Sequential(GatedLinear(4, 5), nn.Tanh(), nn.Linear(5, 3)), (4,)),
    "dict_output": ZooCase(DictOutput, (4,), output_fn=lambda out: out["logits"]),
    "tied_convolutions": ZooCase(TiedConvs, (2, 4, 4)),
}


def build(name: str, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ZOO[name].build().to(torch.float64)


def inputs(name: str, batch: int, seed: int = 0) -> torch.Tensor:
    case = ZOO[name]
    generator = torch.Generator().manual_seed(seed)
    if case.integer_inputs:
        return torch.randint(0, case.integer_inputs, (batch, *case.input_shape), generator=generator)
    return torch.randn((batch, *case.input_shape), generator=generator, dtype=torch.float64)
