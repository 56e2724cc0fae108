"""The exact Fisher-vector product where forward-mode AD is missing: the math attention kernel, then a
reverse-mode JVP (vjp of vjp), each against the dense Jacobian Fisher and announced once."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from reference import dense_fisher, flat, trainable, unflat
from torch import nn

import fishleg_core as fl
from fishleg_core.fisher import exact


class SelfAttention(nn.Module):
    """Causal single-head self-attention through F.scaled_dot_product_attention, then a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(3, 9), nn.Linear(3, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (B, heads=1, T, 3): the fused kernel's layout
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)).flatten(1)


class CubeWithoutJvp(torch.autograd.Function):
    """x³ with a backward but no forward-mode rule (jvp)."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


class CustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.second(CubeWithoutJvp.apply(torch.tanh(self.first(x))))


def seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().double()


@pytest.mark.parametrize(
    ("build", "input_shape", "path"),
    [
        (lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), (3,), None),
        (SelfAttention, (4, 3), "math kernel"),
        (CustomOp, (3,), "reverse-mode AD"),
    ],
    ids=["forward_mode", "math_attention", "reverse_mode"],
)
def test_each_path_matches_the_dense_fisher_and_is_announced_once(monkeypatch, build, input_shape, path):
    monkeypatch.setattr(exact, "_ANNOUNCED", set())
    model = seeded(build)
    params = trainable(model)
    x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    F_dense = dense_fisher(model, x, "gaussian")
    for seed in (2, 3):
        v = torch.randn(F_dense.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fv = fl.fisher_vp(model, "gaussian", x, unflat(v, params))
        torch.testing.assert_close(flat(fv, params), F_dense @ v, rtol=1e-9, atol=1e-12)
        notes = [str(w.message) for w in caught if "exact Fisher-vector product" in str(w.message)]
        if path is None or seed == 3:
            assert notes == []
        else:
            assert len(notes) == 1 and path in notes[0]


def test_a_tuple_output_needs_an_output_fn_and_names_it():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(x), x

    model = Pair().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    v = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with pytest.raises(TypeError, match="output is a tuple, not a tensor: pass output_fn="):
        fl.fisher_vp(model, "gaussian", x, v)
    with pytest.raises(TypeError, match="output_fn must be callable"):
        fl.fisher_vp(model, "gaussian", x, v, output_fn="logits")
    selected = fl.fisher_vp(model, "gaussian", x, v, output_fn=lambda out: out[0])
    expected = fl.fisher_vp(model.linear, "gaussian", x, {k.removeprefix("linear."): t for k, t in v.items()})
    torch.testing.assert_close(selected["linear.weight"], expected["weight"])
