"""Low-rank gradient factors of linear layers and the cached Kronecker products (paper §4.4)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.auxiliary.gradient_factors import GradientFactors
from fishleg_core.coupled.low_rank import LowRank, dense, factored_pays, sandwich
from fishleg_core.qforms.positive import TriangularFactor, triangular_gram


class TwoUses(nn.Module):
    """A linear layer applied twice, one without bias, on inputs with an extra sequence dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(5, 5)
        self.plain = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.plain(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


def gradient_and_factors(model, inputs):
    q = fl.build_model_q(model, {"Linear": "kron"})
    capture = GradientFactors(model, [g.block for g in q.groups])
    model.zero_grad()
    model(inputs).pow(2).sum().backward()
    gradient = {n: p.grad for n, p in model.named_parameters()}
    return q, capture, gradient


@pytest.mark.usefixtures("float64")
def test_captured_factors_reproduce_the_block_gradients():
    model = TwoUses()
    q, capture, gradient = gradient_and_factors(model, torch.randn(4, 2, 5))
    factors = capture.factors(gradient)
    assert set(factors) == {"shared", "plain"}
    for group in q.groups:
        left, right = factors[group.block.name]
        assert left.shape[1] == right.shape[1] == (16 if group.block.name == "shared" else 8)
        G = group.block.layout.pack([gradient[n] for n in group.param_names])
        torch.testing.assert_close(left @ right.T, G, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_q_on_factors_equals_q_on_the_dense_gradient():
    model = nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 20))
    q, capture, gradient = gradient_and_factors(model, torch.randn(3, 40))
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.1 * torch.randn_like(p))
    factors = capture.factors(gradient)
    assert all(g.form.multiply_low_rank(*factors[g.block.name]) is not None for g in q.groups)  # pays here
    for mode, cache in [(torch.no_grad, True), (torch.no_grad, False), (torch.enable_grad, True)]:
        q.cache_grams(cache)
        with mode():
            for _ in range(2):  # with a cached Gram matrix: built, then reused
                low_rank, dense = q(gradient, factors), q(gradient)
                for n in dense:
                    torch.testing.assert_close(low_rank[n], dense[n], rtol=1e-10, atol=1e-12)


def test_a_modified_gradient_falls_back_to_the_dense_product():
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2))
    q, capture, gradient = gradient_and_factors(model, torch.randn(3, 6))
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    with pytest.warns(UserWarning) as caught:
        assert capture.factors(gradient) == {}
    assert sorted(str(w.message) for w in caught) == [
        f"layer '{name}': using the dense Q·g product because its .grad differs from the captured factors "
        "(clipped, decayed or accumulated?)"
        for name in ("0", "2")
    ]


def test_a_forward_pass_without_backward_falls_back_to_the_dense_product():
    model = nn.Sequential(nn.Linear(6, 2))
    q, capture, gradient = gradient_and_factors(model, torch.randn(3, 6))
    model(torch.randn(3, 6))  # e.g. a logged loss computed with autograd on
    with pytest.warns(UserWarning, match="a forward pass with autograd on had no backward pass"):
        assert capture.factors(gradient) == {}


def test_fisher_computations_and_no_grad_passes_are_not_captured():
    model = nn.Sequential(nn.Linear(6, 2))
    q, capture, gradient = gradient_and_factors(model, torch.randn(3, 6))
    fl.fisher_vp(model, "gaussian", torch.randn(5, 6), {n: torch.ones_like(p) for n, p in model.named_parameters()})
    with torch.no_grad():
        model(torch.randn(7, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ((left, right),) = capture.factors(gradient).values()
    assert left.shape == (2, 3)


@pytest.mark.usefixtures("float64")
def test_fishleg_with_low_rank_products_matches_the_dense_products():
    torch.manual_seed(0)
    inputs = torch.randn(64, 12)
    targets = torch.randn(64, 3)
    runs = []
    for low_rank in (True, False):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 3))
        optimizer = fl.FishLeg(
            model,
            "gaussian",
            lr=0.1,
            sgd_lr=0.05,
            aux_every=3,
            aux_lr=0.01,
            momentum_on="update",
            low_rank=low_rank,
            aux_data=[inputs[:32], inputs[32:]],
        )
        for step in range(12):
            x, y = inputs[4 * step : 4 * step + 4], targets[4 * step : 4 * step + 4]
            optimizer.zero_grad()
            fl.LIKELIHOODS.build("gaussian").nll(model(x), y).backward()
            optimizer.step()
        runs.append(list(model.parameters()))
    assert optimizer._capture is None
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_triangular_factor_caches_follow_parameter_changes():
    factor = TriangularFactor(torch.randn(300, 300).tril() + 20 * torch.eye(300))
    X = torch.randn(300, 4)
    with torch.no_grad():
        first = factor.gram_matmul(X)  # builds and caches the Gram matrix
        torch.testing.assert_close(factor.gram_matmul(X), first)
        factor.off.add_(0.1)
        L = factor()
        torch.testing.assert_close(factor.gram_matmul(X), L @ (L.T @ X))
        torch.testing.assert_close(factor.gram(), L @ L.T)
    torch.testing.assert_close(triangular_gram(L, min_size=16), L @ L.T)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(
    ("layer", "input_shape"),
    [
        (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1), (2, 2, 5, 5)),
        (lambda: nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1), bias=False), (2, 2, 6, 7)),
        (lambda: nn.Conv2d(2, 3, 3), (2, 4, 4)),  # unbatched
        (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=2, dilation=2), (3, 2, 9)),
    ],
    ids=["conv2d_strided_padded", "conv2d_rectangular_dilated_no_bias", "conv2d_unbatched", "conv1d"],
)
def test_convolution_factors_reproduce_the_block_gradient(layer, input_shape):
    model = nn.Sequential(layer(), nn.Tanh())
    (block,) = fl.map_blocks(model)
    capture = GradientFactors(model, [block])
    model(torch.randn(input_shape)).pow(2).sum().backward()
    gradient = {n: p.grad for n, p in model.named_parameters()}
    ((left, right),) = capture.factors(gradient).values()
    G = block.layout.pack([gradient[n] for n in block.param_names])
    torch.testing.assert_close(left @ right.T, G, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_convolution_low_rank_product_is_used_where_it_pays_and_matches_the_dense_one():
    small = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Tanh(), nn.Flatten(), nn.Linear(16, 3))  # 1 position: rank 2
    q = fl.build_model_q(small)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.1 * torch.randn_like(p))
    capture = GradientFactors.for_q(small, q)
    small(torch.randn(2, 8, 3, 3)).pow(2).sum().backward()
    gradient = {n: p.grad for n, p in small.named_parameters()}
    factors = capture.factors(gradient)
    assert set(factors) == {"0", "3"} and factors["0"][0].shape == (16, 2)
    torch.testing.assert_close(q(gradient, factors), q(gradient), rtol=1e-10, atol=1e-12)
    big = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Tanh())  # 2 × 36 positions: the dense product is cheaper
    capture = GradientFactors.for_q(big, fl.build_model_q(big))
    big(torch.randn(2, 8, 8, 8)).pow(2).sum().backward()
    assert capture.factors({n: p.grad for n, p in big.named_parameters()}) == {}


@pytest.mark.parametrize("rank", [1, 40])
def test_group_sandwich_is_exact_whether_or_not_it_stays_factored(rank):
    """A X Bᵀ for X = l rᵀ: a thin X stays factored (cheaper), a wide one is formed first; both exact."""
    generator = torch.Generator().manual_seed(rank)
    A, B = (
        torch.randn(6, 5, generator=generator, dtype=torch.float64),
        torch.randn(7, 8, generator=generator, dtype=torch.float64),
    )
    X = LowRank(
        torch.randn(5, rank, generator=generator, dtype=torch.float64),
        torch.randn(8, rank, generator=generator, dtype=torch.float64),
    )
    product = sandwich(A, X, B)
    assert isinstance(product, LowRank) == (rank == 1) == factored_pays(A, X, B)
    torch.testing.assert_close(dense(product), A @ X.dense() @ B.mT, rtol=1e-12, atol=1e-12)
