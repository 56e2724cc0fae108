"""KFAC factors and the damped-KFAC start beyond nn.Linear, against explicit computations in float64.

For every layer whose adapter captures KFAC factors, the explicit factors come from autograd alone: the
input vector ā_t of a position t is the gradient of the output entry y_{o,t} in the block's row o
(y_{o,t} = ⟨X_o, ā_t⟩, the same for every row of a band), δ_t the gradient of Σ ℓ in y_{:,t} (for
attention's q/k/v, in the projections of an attention written out by hand). The start is then compared with
s · (G + √γπI)⁻¹ ⊗ (A + √γ/πI)⁻¹, by explicit inverses and Kronecker products, per band.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.kfac import kfac_start, kronecker_factors

DAMPING = 0.3
SAMPLES = 2


class Tokens(nn.Module):
    """Embedding of integer tokens carried as floats, then a sequence Linear head (mean over positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 3, padding_idx=0)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x.long())).mean(1)


class Attention(nn.Module):
    """Self-attention over a sequence of 4 tokens of width 4, then a Linear head on the mean."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(len(x), 3, 4)
        return self.head(self.attention(h, h, h, need_weights=False)[0].mean(1))


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(5, 2, 6, 6, generator=generator)
    signals = torch.randn(5, 2, 7, generator=generator)
    return {
        "conv2d": (nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten()), images),
        "conv1d": (nn.Sequential(nn.Conv1d(2, 4, 3, dilation=2, bias=False), nn.Flatten()), signals),
        "grouped": (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten()), images),
        "transposed": (
            nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), nn.Flatten()),
            images[:, :, :3, :3],
        ),
        "transposed_grouped": (nn.Sequential(nn.ConvTranspose1d(2, 4, 3, stride=2, groups=2), nn.Flatten()), signals),
        "embedding": (Tokens(), torch.randint(0, 7, (5, 4), generator=generator).double()),
        "attention": (Attention(), torch.randn(5, 12, generator=generator)),
    }


def _hand_attention(module: nn.MultiheadAttention, h: torch.Tensor, projections: list[torch.Tensor]) -> torch.Tensor:
    """Multi-head attention written out, from the projections q, k, v (batch first)."""
    B, T, E = h.shape
    heads = module.num_heads
    q, k, v = (p.reshape(B, T, heads, E // heads).transpose(1, 2) for p in projections)
    weights = torch.softmax(q @ k.mT / math.sqrt(E // heads), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(B, T, E)


def _explicit(name: str, model: Any, inputs: torch.Tensor, likelihood: fl.Likelihood):
    """{block: (G bands, A bands)} from autograd alone (module docstring), with the samples drawn as
    ``kronecker_factors`` draws them (one chunk, sample by sample)."""
    blocks = {block.name: block for block in fl.map_blocks(model)}
    generator = torch.Generator().manual_seed(7)
    n = len(inputs)
    if name == "attention":
        attention = model.attention
        h = inputs.reshape(n, 3, 4)
        E = 4
        W, b = attention.in_proj_weight, attention.in_proj_bias
        projections = [h @ W[i * E : (i + 1) * E].T + b[i * E : (i + 1) * E] for i in range(3)]
        heads = _hand_attention(attention, h, projections)
        y = heads @ attention.out_proj.weight.T + attention.out_proj.bias
        outputs = model.head(y.mean(1))
        torch.testing.assert_close(outputs, model(inputs))  # the hand-written attention is the module's
        G: dict[str, list[Any]] = {"attention": [0, 0, 0], "attention.out_proj": [0], "head": [0]}
        for _ in range(SAMPLES):
            targets = likelihood.sample(outputs, generator)
            total = likelihood.nll(outputs, targets) * n
            grads = torch.autograd.grad(total, [*projections, y, outputs], retain_graph=True)
            for band in range(3):
                d = grads[band].reshape(-1, E)
                G["attention"][band] = G["attention"][band] + d.T @ d
            d = grads[3].reshape(-1, E)
            G["attention.out_proj"][0] = G["attention.out_proj"][0] + d.T @ d
            G["head"][0] = G["head"][0] + grads[4].T @ grads[4]
        a_h = torch.cat([h.reshape(-1, E), torch.ones(n * 3, 1, dtype=h.dtype)], 1)
        a_z = torch.cat([heads.detach().reshape(-1, E), torch.ones(n * 3, 1, dtype=h.dtype)], 1)
        a_y = torch.cat([y.detach().mean(1), torch.ones(n, 1, dtype=h.dtype)], 1)
        A: dict[str, list[Any]] = {
            "attention": [a_h.T @ a_h / len(a_h)] * 3,
            "attention.out_proj": [a_z.T @ a_z / len(a_z)],
        }
        A["head"] = [a_y.T @ a_y / n]
        return {k: ([g / (n * SAMPLES) for g in G[k]], A[k]) for k in G}

    module_name = "embed" if name == "embedding" else "0"
    module = model.get_submodule(module_name)
    block = blocks[module_name]
    recorded: dict[str, Any] = {}
    handle = module.register_forward_hook(lambda m, args, output: recorded.update(y=output))
    outputs = model(inputs)
    handle.remove()
    y = recorded["y"]
    params = [dict(model.named_parameters())[p] for p in block.param_names]
    rows, cols = block.shape
    band_rows = rows // block.row_parts
    if name == "embedding":  # y[b, t, :] = W[index]: the input vector on the rows is ∂y[b, t, 0]/∂W[:, 0]
        positions = [(b, t) for b in range(n) for t in range(y.shape[1])]
        rows_of_w = [torch.autograd.grad(y[b, t, 0], params, retain_graph=True) for b, t in positions]
        a = torch.stack([block.layout.pack(list(g))[:, 0] for g in rows_of_w])
        deltas_of = lambda grad: grad.reshape(-1, cols)  # noqa: E731
        input_bands = [a.T @ a / len(a)]
    else:  # y[b, o, *t]: ā_t is the block's row o of ∂y[b, o, *t]/∂params, for the first row o of each band
        spatial = list(torch.cartesian_prod(*[torch.arange(s) for s in y.shape[2:]]).reshape(-1, y.dim() - 2))
        input_bands = []
        for band in range(block.row_parts):
            o = band * band_rows
            vectors = [
                block.layout.pack(list(torch.autograd.grad(y[(b, o, *t)], params, retain_graph=True)))[o]
                for b in range(n)
                for t in spatial
            ]
            a = torch.stack(vectors)
            input_bands.append(a.T @ a / len(a))
        deltas_of = lambda grad: grad.movedim(1, -1).reshape(-1, rows)  # noqa: E731
    bands: list[Any] = [0] * block.row_parts
    for _ in range(SAMPLES):
        targets = likelihood.sample(outputs, generator)
        (grad,) = torch.autograd.grad(likelihood.nll(outputs, targets) * n, [y], retain_graph=True)
        d = deltas_of(grad)
        for band in range(block.row_parts):
            piece = d[:, band * band_rows : (band + 1) * band_rows]
            bands[band] = bands[band] + piece.T @ piece
    deltas = [g / (n * SAMPLES) for g in bands]
    if name == "embedding":  # the rows are the input side: G is the diagonal input factor
        return {module_name: (input_bands, deltas)}
    return {module_name: (deltas, input_bands)}


def _bands(t: torch.Tensor) -> list[torch.Tensor]:
    return list(t) if t.dim() == 3 else [t]


@pytest.mark.filterwarnings("ignore:exact Fisher-vector product")
@pytest.mark.parametrize("name", list(_models()))
def test_kronecker_factors_and_start_against_explicit_kronecker_inverses(name):
    model, inputs = _models()[name]
    model, inputs = model.double(), inputs.double()
    likelihood = fl.LIKELIHOODS.build("gaussian")
    factors = kronecker_factors(model, likelihood, inputs, SAMPLES, torch.Generator().manual_seed(7))
    explicit = _explicit(name, model, inputs, likelihood)
    for block, (G, A) in explicit.items():
        assert block in factors, f"{name}: no factors for block {block!r}"
        for ours, theirs in zip(_bands(factors[block].G), G, strict=True):
            torch.testing.assert_close(ours, theirs)
        for ours, theirs in zip(_bands(factors[block].A), A, strict=True):
            torch.testing.assert_close(ours, theirs)
    if name == "embedding":  # the padding row gets no gradient, and no weight in the input factor
        assert factors["embed"].G[0, 0] == 0 and bool((factors["embed"].G.diagonal()[1:] > 0).any())

    q = fl.build_model_q(model, {"default": "kron"}, init_scale=0.5)
    generator = torch.Generator().manual_seed(3)
    params = {k: p for k, p in model.named_parameters()}
    directions = [{k: torch.randn(p.shape, generator=generator, dtype=p.dtype) for k, p in params.items()}]
    fishers = [lambda v: fl.fisher_vp(model, likelihood, inputs, v, "exact", DAMPING)]
    s, started = kfac_start(q, factors, DAMPING, directions, fishers)
    assert s > 0 and set(explicit) <= set(started)
    for block, (G, A) in explicit.items():
        expected = []
        for G_band, A_band in zip(G, A):
            pi = math.sqrt((G_band.trace() / len(G_band)) / (A_band.trace() / len(A_band)))
            root = math.sqrt(DAMPING)
            left = torch.linalg.inv(G_band + root * pi * torch.eye(len(G_band), dtype=G_band.dtype))
            right = torch.linalg.inv(A_band + root / pi * torch.eye(len(A_band), dtype=A_band.dtype))
            expected.append(s * torch.kron(left, right))
        (group,) = [group for group in q.groups if group.blocks[0].name == block]
        torch.testing.assert_close(group.form.to_dense(), torch.block_diag(*expected))


def test_forms_own_their_start_and_refuse_other_shapes():
    for name in ("kron", "ekfac", "kron_sum", "diagonal"):
        form = fl.QFORMS.build(name, shape=(2, 3), dtype=torch.float64)
        assert not form.set_kronecker(torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
        assert form.set_kronecker(2 * torch.eye(2, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    for name in ("dense", "diag_low_rank"):
        form = fl.QFORMS.build(name, shape=(2, 3), dtype=torch.float64)
        before = form.to_dense()
        assert not form.set_kronecker(torch.eye(2, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
        torch.testing.assert_close(form.to_dense(), before)
