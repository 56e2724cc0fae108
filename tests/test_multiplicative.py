"""The auxiliary optimizer "multiplicative": L ← L(I + S), S = −lr·m/‖m‖_F with m the momentum of
tril(Lᵀ ∂A/∂L), checked against the formula on dense matrices in float64; Adam on every other parameter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.auxiliary.multiplicative import lower_part_of_transposed_product, lower_product
from fishleg_core.qforms.positive import PositiveTensor, TriangularFactor


class Toy(nn.Module):
    """A triangular factor and a positive vector, as λ of a quartic loss."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        init = torch.tril(torch.randn(n, n, generator=g, dtype=torch.float64), -1) + torch.diag(
            torch.rand(n, generator=g, dtype=torch.float64) + 0.5
        )
        self.L = TriangularFactor(init)
        self.d = PositiveTensor(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
        self.target = torch.randn(n, n, generator=g, dtype=torch.float64)

    def loss(self, L: torch.Tensor | None = None) -> torch.Tensor:
        L = self.L() if L is None else L
        M = L @ L.mT
        return ((M - self.target @ self.target.mT) ** 2).sum() + (self.d() * M.diagonal()).sum()


def _step(model: Toy, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model.loss().backward()
    optimizer.step()


def test_one_step_is_the_formula():
    model = Toy(7, seed=0)
    L = model.L().detach().clone().requires_grad_()
    (G,) = torch.autograd.grad(model.loss(L), L)
    D = torch.tril(L.detach().mT @ torch.tril(G))
    expected = L.detach() @ (torch.eye(7, dtype=torch.float64) - 0.05 * D / D.norm())
    optimizer = fl.build_aux_optimizer({"name": "multiplicative", "momentum": 0.5}, model, 0.05)
    _step(model, optimizer)
    torch.testing.assert_close(model.L().detach(), expected, rtol=1e-12, atol=1e-12)


def test_momentum_accumulates_the_relative_gradients():
    model, twin = Toy(5, seed=1), Toy(5, seed=1)
    model.d.raw.requires_grad_(False)  # the factor alone
    optimizer = fl.build_aux_optimizer({"name": "multiplicative", "momentum": 0.8}, model, 0.02)
    m = torch.zeros(5, 5, dtype=torch.float64)
    for _ in range(3):
        _step(model, optimizer)
        L = twin.L().detach().clone().requires_grad_()
        (G,) = torch.autograd.grad(twin.loss(L), L)
        m = 0.8 * m + 0.2 * torch.tril(L.detach().mT @ torch.tril(G))
        with torch.no_grad():
            twin.L.assign_(L.detach() @ (torch.eye(5, dtype=torch.float64) - 0.02 * m / m.norm()))
        torch.testing.assert_close(model.L().detach(), twin.L().detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [3, 60])
def test_a_step_changes_the_factor_by_at_most_lr_relative_whatever_its_width(n):
    model = Toy(n, seed=2)
    before = model.L().detach().clone()
    optimizer = fl.build_aux_optimizer("multiplicative", model, 0.1)
    _step(model, optimizer)
    after = model.L().detach()
    assert torch.linalg.matrix_norm(after - before, ord=2) <= 0.1 * torch.linalg.matrix_norm(before, ord=2) + 1e-12
    assert bool((after.diagonal() > 0).all()) and torch.equal(after, torch.tril(after))


def test_small_steps_descend():
    model = Toy(6, seed=3)
    optimizer = fl.build_aux_optimizer({"name": "multiplicative", "momentum": 0.0}, model, 1e-4, adam_lr=1e-6)
    before = model.loss().item()
    _step(model, optimizer)
    assert model.loss().item() < before


def test_other_parameters_take_adam_steps_at_adam_lr():
    model, twin = Toy(4, seed=4), Toy(4, seed=4)
    optimizer = fl.build_aux_optimizer("multiplicative", model, 0.05, adam_lr=0.01)
    adam = torch.optim.Adam(twin.d.parameters(), lr=0.01)
    for _ in range(3):
        adam.zero_grad()
        twin.loss(model.L().detach()).backward()  # at the model's factor before its step
        adam.step()
        _step(model, optimizer)
        torch.testing.assert_close(model.d.raw, twin.d.raw, rtol=1e-12, atol=1e-12)


def test_it_needs_q_not_its_parameters():
    with pytest.raises(ValueError, match="give build_aux_optimizer the ModelQ itself"):
        fl.build_aux_optimizer("multiplicative", Toy(3, seed=0).parameters(), 0.01)
    with pytest.raises(ValueError, match=r"lr \(the relative step\) must be in \(0, 1\)"):
        fl.build_aux_optimizer("multiplicative", Toy(3, seed=0), 1.5)


@pytest.mark.parametrize("n", [5, 9, 300])
def test_triangular_products_by_blocks(n):
    g = torch.Generator().manual_seed(n)
    A, B = (torch.tril(torch.randn(n, n, generator=g, dtype=torch.float64)) for _ in range(2))
    torch.testing.assert_close(lower_product(A, B, min_size=4), A @ B, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        lower_part_of_transposed_product(A, B, min_size=4), torch.tril(A.mT @ B), rtol=1e-12, atol=1e-12
    )
