"""The CoupledQ contract as reusable checks: a new coupled form passes them all by naming itself in one
parametrised test list (see ``tests/test_coupled.py``). Each check raises ``AssertionError`` on failure.

Checks run in float64 on a small chain of linear layers whose blocks are large enough for the low-rank
product to pay on some blocks and not on others, so both paths and their mixture are exercised.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fishleg_core._vectors import ParamDict
from fishleg_core.coupled import COUPLED_FORMS, CoupledQ
from fishleg_core.layers.mapping import map_blocks
from fishleg_core.model_q import ModelQ
from fishleg_core.optim.fishleg import FishLeg

CHAIN_WIDTHS = (6, 8, 9, 3)
"""Widths of the contract's chain of linear layers: blocks (8, 7), (9, 9), (3, 10)."""


@dataclass(frozen=True)
class CoupledCase:
    """A registered coupled form with its options and the number of consecutive chain blocks it covers."""

    form: str
    options: dict[str, Any] = field(default_factory=dict)
    n_blocks: int = 2

    def __str__(self) -> str:
        return self.form + "".join(f"-{key}={value}" for key, value in self.options.items())


def chain_model(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Linear layers of ``CHAIN_WIDTHS`` with tanh between them."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(CHAIN_WIDTHS, CHAIN_WIDTHS[1:]):
        layers += [nn.Linear(n_in, n_out, dtype=dtype), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def build_coupled(
    case: CoupledCase, init_scale: float = 0.7, seed: int = 0, model: nn.Module | None = None
) -> CoupledQ:
    """The case's group on the first ``n_blocks`` blocks of ``model`` (default: ``chain_model()``)."""
    blocks = map_blocks(model if model is not None else chain_model())[: case.n_blocks]
    torch.manual_seed(seed)
    return COUPLED_FORMS.build(case.form, blocks=blocks, init_scale=init_scale, dtype=torch.float64, **case.options)


@torch.no_grad()
def perturb(group: CoupledQ, scale: float, seed: int = 1) -> None:
    """Add ``scale`` × standard Gaussian noise to every auxiliary parameter."""
    generator = torch.Generator().manual_seed(seed)
    for p in group.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def random_vector(group: CoupledQ, seed: int = 2, rank: int | None = None) -> tuple[ParamDict, dict]:
    """x on the group's parameters, and its blocks' low-rank factors {block: (left, right)} when ``rank``."""
    generator = torch.Generator().manual_seed(seed)
    vector: ParamDict = {}
    factors: dict[str, tuple[Tensor, Tensor]] = {}
    for block in group.blocks:
        rows, cols = block.shape
        if rank is None:
            G = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
        else:
            left, right = (torch.randn(n, rank, generator=generator, dtype=torch.float64) for n in (rows, cols))
            factors[block.name] = (left, right)
            G = left @ right.T
        vector.update(zip(block.param_names, block.layout.unpack(G)))
    return vector, factors


def flat(group: CoupledQ, vector: ParamDict) -> Tensor:
    return torch.cat([vector[name].reshape(-1) for name in group.param_names])


def check_product_matches_dense(case: CoupledCase, scale: float, rank: int | None = None) -> None:
    """Q·x (through low-rank factors when ``rank``) equals ``to_dense() @ x`` in float64."""
    group = build_coupled(case)
    perturb(group, scale)
    vector, factors = random_vector(group, rank=rank)
    with torch.no_grad():
        Q = group.to_dense()
        got = flat(group, group(vector, factors or None))
    torch.testing.assert_close(got, Q @ flat(group, vector), rtol=0, atol=1e-12 * Q.abs().max().item() * len(Q))


def check_symmetric_positive_definite(case: CoupledCase, scale: float, seeds: int = 5) -> None:
    """``to_dense()`` is symmetric with positive eigenvalues after random perturbations of λ."""
    for seed in range(seeds):
        group = build_coupled(case, seed=seed)
        perturb(group, scale, seed=seed)
        Q = group.to_dense().detach()
        torch.testing.assert_close(Q, Q.T, rtol=0, atol=1e-13 * Q.abs().max().item())
        assert torch.linalg.eigvalsh(Q).min() > 0, f"{case}: not positive definite after perturbation {scale}"


def check_starts_at_scaled_identity(case: CoupledCase, init_scale: float = 0.7, tolerance: float = 0.01) -> None:
    """‖Q₀ − init_scale·I‖₂ ≤ init_deviation·init_scale, with a declared deviation of at most ``tolerance``."""
    group = build_coupled(case, init_scale=init_scale)
    assert group.init_deviation <= tolerance, f"{case}: declares a deviation {group.init_deviation} > {tolerance}"
    Q = group.to_dense().detach()
    error = torch.linalg.matrix_norm(Q - init_scale * torch.eye(len(Q), dtype=Q.dtype), ord=2).item()
    assert error <= max(group.init_deviation * init_scale, 1e-12), f"{case}: starts {error:.3g} from s·I"


def check_gradients(case: CoupledCase, rank: int | None = None) -> None:
    """autograd's gradient of Q·x in λ against finite differences (``gradcheck``)."""
    group = build_coupled(case)
    perturb(group, 0.3)
    vector, factors = random_vector(group, rank=rank)
    names = [name for name, _ in group.named_parameters()]

    def apply(*values: Tensor) -> Tensor:
        return flat(group, functional_call(group, dict(zip(names, values)), (vector, factors or None)))

    values = tuple(p.detach().clone().requires_grad_() for p in group.parameters())
    assert torch.autograd.gradcheck(apply, values)


def check_state_dict_round_trip(case: CoupledCase) -> None:
    """A fresh group (other random start) loaded with a perturbed group's state_dict is that group."""
    group = build_coupled(case)
    perturb(group, 0.3)
    other = build_coupled(case, seed=5)
    other.load_state_dict(copy.deepcopy(group.state_dict()))
    torch.testing.assert_close(other.to_dense(), group.to_dense(), rtol=0, atol=0)


def model_q_with(case: CoupledCase, model: nn.Module, seed: int = 0) -> ModelQ:
    """A hand-built ``ModelQ``: the case's group on the first blocks of ``model``, ``kron`` on the others."""
    group = build_coupled(case, seed=seed, model=model)
    rest = [
        COUPLED_FORMS.build("block", blocks=[block], form="kron", dtype=torch.float64)
        for block in map_blocks(model)[case.n_blocks :]
    ]
    return ModelQ([group, *rest], param_order=[name for name, _ in model.named_parameters()])


def check_exact_resume_in_fishleg(case: CoupledCase, steps: int = 3) -> None:
    """FishLeg with the group inside a hand-built Q (``FishLeg(q=...)``), saved after ``steps`` steps and
    resumed into a fresh model and Q (another random start), continues bit-identically."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(96, CHAIN_WIDTHS[0], generator=generator, dtype=torch.float64)
    Y = torch.randn(96, CHAIN_WIDTHS[-1], generator=generator, dtype=torch.float64)
    batches = [(X[i : i + 16], Y[i : i + 16]) for i in range(0, 96, 16)]

    def make(seed: int) -> tuple[nn.Module, FishLeg]:
        model = chain_model(seed=seed)
        optimizer = FishLeg(
            model,
            "gaussian",
            lr=0.05,
            aux_lr=1e-2,
            aux_every=1,
            damping=0.1,
            q=model_q_with(case, model, seed=seed),
            aux_data=batches[1::2],
        )
        return model, optimizer

    def run(model: nn.Module, optimizer: FishLeg, n: int) -> None:
        for i in range(n):
            inputs, targets = batches[(2 * i) % len(batches)]
            optimizer.zero_grad()
            optimizer.likelihood.nll(model(inputs), targets).backward()
            optimizer.step()

    model, optimizer = make(seed=0)
    run(model, optimizer, steps)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    run(model, optimizer, steps)
    resumed_model, resumed = make(seed=1)
    resumed_model.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    run(resumed_model, resumed, steps)
    for (name, p), q in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), f"{case}: {name} differs after resuming"
    for (name, a), b in zip(optimizer.q.named_parameters(), resumed.q.parameters()):
        assert torch.equal(a, b), f"{case}: λ {name} differs after resuming"
