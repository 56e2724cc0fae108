"""Blocks of equal shape and form multiplied as one batch (``ModelQ(batched=True)``, the default) against the
per-block path: the same Q·x and the same gradients in λ (float64 to round-off, float32 within 1e-6), the same
state-dict keys, the same FishLeg training; the multiplicative λ steps batched over factors of one size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.model_q import build_model_q

STACKING = [name for name in fl.QFORMS.names() if fl.QFORMS.build(name, shape=(3, 4)).batch_key() is not None]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6}


class Net(nn.Module):
    """Linear layers 5×(4+1), 5×(5+1) twice, bias-free 4×5 and 4×4, attention (three bands of 4×(4+1) and a
    4×(4+1) output projection), a 3×(4+1) head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 5)
        self.d = nn.Linear(5, 4, bias=False)
        self.e = nn.Linear(4, 4, bias=False)
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.e(self.d(self.c(self.b(self.a(x)))))
        h = h + self.attention(h, h, h, need_weights=False)[0]
        return self.head(h.mean(1))


def perturbed_q(form: str, dtype: torch.dtype, seed: int = 0) -> tuple[nn.Module, fl.ModelQ]:
    torch.manual_seed(seed)
    model = Net().to(dtype)
    q = build_model_q(model, forms={"default": form})
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model, q


def vector(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}


def both_paths(q: fl.ModelQ, fn):
    """fn() with the batched path, then with the per-block one."""
    q.batched = True
    batched = fn()
    q.batched = False
    single = fn()
    q.batched = True
    return batched, single


def test_the_forms_that_stack_are_batched():
    assert {"kron", "diagonal"} <= set(STACKING)
    _, q = perturbed_q("kron", torch.float64)
    sizes = sorted(len(batch.groups) for batch in q._batches)
    # the three 5×6 layers; the two 4×4 bias-free ones; the attention bands (one block) with the 4×5 head
    # output projection... grouped by shape and layout only
    assert sizes and all(size >= 1 for size in sizes)
    assert sum(len(b.groups) for b in q._batches) + len(q._alone) == len(q.groups)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("form", STACKING)
def test_batched_product_and_gradients_match_the_per_block_path(form, dtype):
    model, q = perturbed_q(form, dtype)
    x = vector(model)
    tolerance = TOLERANCE[dtype]

    def product():
        with torch.no_grad():
            return q(x)

    def gradients():
        with torch.enable_grad():
            v = q(x)
            surrogate = sum((v[name] * x[name].flip(-1)).sum() for name in v)
            return torch.autograd.grad(surrogate, list(q.parameters()))

    batched, single = both_paths(q, product)
    for name in single:
        torch.testing.assert_close(batched[name], single[name], rtol=tolerance, atol=tolerance)
    batched_grads, single_grads = both_paths(q, gradients)
    for a, b in zip(batched_grads, single_grads):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * b.abs().max().item())


@pytest.mark.parametrize("form", STACKING)
def test_cached_gram_products_match_too(form):
    model, q = perturbed_q(form, torch.float64)
    q.cache_grams(True)
    x = vector(model)
    with torch.no_grad():
        batched, single = both_paths(q, lambda: q(x))
        again = q(x)  # from the cached stacked Gram matrices
    for name in single:
        torch.testing.assert_close(batched[name], single[name], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(again[name], single[name], rtol=1e-12, atol=1e-12)


def test_low_rank_factors_are_used_where_they_pay_and_the_rest_batched():
    model, q = perturbed_q("kron", torch.float64)
    x = vector(model)
    g = torch.Generator().manual_seed(3)
    left, right = (
        torch.randn(5, 1, generator=g, dtype=torch.float64),
        torch.randn(6, 1, generator=g, dtype=torch.float64),
    )
    dense = left @ right.mT
    x["b.weight"], x["b.bias"] = dense[:, :5].clone(), dense[:, 5].clone()
    factors = {"b": (left, right)}
    with torch.no_grad():
        batched, single = both_paths(q, lambda: q(x, factors))
        plain = q(x)
    for name in single:
        torch.testing.assert_close(batched[name], single[name], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batched[name], plain[name], rtol=1e-10, atol=1e-12)


def test_state_dict_keys_do_not_change():
    _, q = perturbed_q("kron", torch.float64)
    keys = list(q.state_dict())
    unbatched = build_model_q(Net().double(), forms={"default": "kron"}, batched=False)
    assert not unbatched.batched
    assert keys == list(unbatched.state_dict())
    unbatched.load_state_dict(q.state_dict())


def deep_linear(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(6, 6, bias=False, dtype=torch.float64) for _ in range(4)])


@pytest.mark.parametrize("aux_optimizer", ["adam", "multiplicative"])
@pytest.mark.parametrize("momentum_on", ["update", "gradient"])
def test_fishleg_trains_the_same_with_and_without_batching(aux_optimizer, momentum_on):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 6, generator=g, dtype=torch.float64),) for _ in range(6)]
    likelihood = fl.LIKELIHOODS.build("gaussian")
    runs = []
    for batched in (True, False):
        model = deep_linear(0)
        optimizer = fl.FishLeg(
            model,
            likelihood,
            lr=0.05,
            aux_every=1,
            aux_optimizer={"name": aux_optimizer, "lr": 0.05},
            momentum_on=momentum_on,
            damping=0.1,
            aux_data=[x for (x,) in data],
        )
        optimizer.q.batched = batched
        for (x,) in data:
            optimizer.zero_grad()
            likelihood.nll(model(x), x.flip(-1)).backward()
            optimizer.step()
        runs.append((model, optimizer))
    (model_a, opt_a), (model_b, opt_b) = runs
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(opt_a.q.state_dict().items(), opt_b.q.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_multiplicative_steps_batched_over_factors_match_one_factor_at_a_time():
    """Factors of sizes 3, 3, 5 stepped by one optimizer equal each stepped by its own optimizer."""
    from fishleg_core.qforms.positive import TriangularFactor

    def factors() -> nn.ModuleList:
        g = torch.Generator().manual_seed(4)
        made = []
        for n in (3, 3, 5):
            init = torch.tril(torch.randn(n, n, generator=g, dtype=torch.float64), -1) + torch.diag(
                torch.rand(n, generator=g, dtype=torch.float64) + 0.5
            )
            made.append(TriangularFactor(init))
        return nn.ModuleList(made)

    def loss(module: nn.ModuleList) -> torch.Tensor:
        return torch.stack([((f() @ f().mT) ** 2).sum() * (i + 1) for i, f in enumerate(module)]).sum()

    together, apart = factors(), factors()
    one = fl.build_aux_optimizer({"name": "multiplicative", "momentum": 0.5}, together, 0.05)
    each = [fl.build_aux_optimizer({"name": "multiplicative", "momentum": 0.5}, f, 0.05) for f in apart]
    for _ in range(3):
        one.zero_grad()
        loss(together).backward()
        one.step()
        for optimizer in each:
            optimizer.zero_grad()
        loss(apart).backward()
        for optimizer in each:
            optimizer.step()
    for a, b in zip(together, apart):
        torch.testing.assert_close(a().detach(), b().detach(), rtol=1e-12, atol=1e-12)


def test_kron_with_a_diagonal_factor_multiplies_alone():
    assert fl.QFORMS.build("kron", shape=(3, 4)).batch_key() is not None
    assert fl.QFORMS.build("kron", shape=(3, 4), max_size=3).batch_key() is None  # its 4-wide side is diagonal
