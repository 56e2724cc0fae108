"""The contract of an auxiliary optimizer (``AUX_OPTIMIZERS``) as a public test helper:
``check_auxiliary_optimizer(spec)`` runs every check and raises ``AssertionError`` naming the one that failed.

An optimizer of λ in one's own file passes the package's own contract with::

    from fishleg_core.testing import check_auxiliary_optimizer
    check_auxiliary_optimizer({"name": "my_optimizer", "lr": 0.01})

The checks run in float64 on the Q of a tiny MLP (Linear(4, 5), Tanh, Linear(5, 2); ``kron`` forms), whose
auxiliary loss A(λ; u) uses the dense damped Gauss-Newton matrix of a Gaussian likelihood, built by
``torch.func.jacrev``:

- options: the spec builds through ``build_aux_optimizer``, and the factory takes only keyword options (its
  signature is the contract of the spec);
- versions: ``step`` bumps the version counter of every parameter it updates (the cached products of the
  triangular factors rely on it);
- fit: 40 steps on A(λ; u) at fixed directions are finite and deterministic, and A goes down;
- resume: an optimizer restored from ``state_dict`` after 5 steps takes the same next 5 steps, to the bit.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from fishleg_core.auxiliary.loss import auxiliary_loss
from fishleg_core.auxiliary.optimizers import AUX_OPTIMIZERS, AuxOptimizerSpec, build_aux_optimizer, split_spec
from fishleg_core.model_q import ModelQ, build_model_q
from fishleg_core.testing._assertions import run_check

DAMPING = 0.1

AuxOptimizerCheck = Callable[[AuxOptimizerSpec], None]


def check_auxiliary_optimizer(spec: AuxOptimizerSpec) -> None:
    """Run every check of ``AUX_OPTIMIZER_CHECKS`` on the optimizer that ``spec`` names.

    Args:
        spec: a name in ``AUX_OPTIMIZERS`` or ``{"name": ..., **options}`` (give ``lr`` where the factory
            has no default).

    Raises:
        AssertionError: a check failed (or the optimizer's own code raised inside it); the message names the
            spec and the check.
    """
    for label, check in AUX_OPTIMIZER_CHECKS.items():
        run_check(f"auxiliary optimizer {spec!r}", label, check, spec)


class Problem:
    """Q of the tiny MLP, fixed unit directions u and the dense F_γ = JᵀJ/B + γI of 8 inputs."""

    def __init__(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
            self.q: ModelQ = build_model_q(self.model, {"default": "kron"})
        generator = torch.Generator().manual_seed(1)
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        inputs = torch.randn(8, 4, generator=generator, dtype=torch.float64)
        jacobians = jacrev(lambda p: functional_call(self.model, p, (inputs,)))(params)
        self.names = list(params)
        J = torch.cat([jacobians[name].reshape(16, -1) for name in self.names], dim=1)
        self.fisher = J.T @ J / 8 + DAMPING * torch.eye(J.shape[1], dtype=torch.float64)
        self.shapes = {name: p.shape for name, p in params.items()}
        self.directions = []
        for _ in range(3):
            flat = torch.randn(J.shape[1], generator=generator, dtype=torch.float64)
            self.directions.append(self._unflat(flat / flat.norm()))

    def _unflat(self, flat: Tensor) -> dict[str, Tensor]:
        pieces = torch.split(flat, [torch.Size(shape).numel() for shape in self.shapes.values()])
        return {name: piece.reshape(self.shapes[name]) for name, piece in zip(self.names, pieces)}

    def damped_fisher(self, v: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._unflat(self.fisher @ torch.cat([v[name].reshape(-1) for name in self.names]))

    def step(self, optimizer: torch.optim.Optimizer, t: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = auxiliary_loss(self.q, self.directions[t % 3], self.damped_fisher)
        loss.surrogate.backward()
        optimizer.step()
        return loss.value.item()


def check_options(spec: AuxOptimizerSpec) -> None:
    name, _ = split_spec(spec)
    kinds = [p.kind for p in inspect.signature(AUX_OPTIMIZERS.get(name)).parameters.values()]
    assert inspect.Parameter.VAR_POSITIONAL not in kinds, "the factory takes *args: its options must be named"
    optimizer = build_aux_optimizer(spec, Problem().q)
    assert isinstance(optimizer, torch.optim.Optimizer), f"the factory returned a {type(optimizer).__name__}"


def check_versions_bumped(spec: AuxOptimizerSpec) -> None:
    problem = Problem()
    optimizer = build_aux_optimizer(spec, problem.q)
    params = [p for p in problem.q.parameters() if p.requires_grad]
    before = [(p._version, p.detach().clone()) for p in params]
    problem.step(optimizer, 0)
    for (version, value), p in zip(before, params):
        if not torch.equal(value, p.detach()):
            assert p._version > version, "step changed a parameter without bumping its version counter"


def _fit(spec: AuxOptimizerSpec, steps: int = 40) -> tuple[list[float], list[Tensor]]:
    problem = Problem()
    optimizer = build_aux_optimizer(spec, problem.q)
    curve = [problem.step(optimizer, t) for t in range(steps)]
    return curve, [p.detach().clone() for p in problem.q.parameters()]


def check_fit(spec: AuxOptimizerSpec) -> None:
    curve, params = _fit(spec)
    again, params_again = _fit(spec)
    assert curve == again and all(torch.equal(a, b) for a, b in zip(params, params_again)), "not deterministic"
    assert all(torch.isfinite(torch.tensor(curve))), "A is not finite"
    assert sum(curve[-5:]) < sum(curve[:5]), f"A does not go down: {curve[:5]} ... {curve[-5:]}"


def check_resume(spec: AuxOptimizerSpec) -> None:
    problem = Problem()
    optimizer = build_aux_optimizer(spec, problem.q)
    for t in range(5):
        problem.step(optimizer, t)
    saved_q, saved_optimizer = copy.deepcopy(problem.q.state_dict()), copy.deepcopy(optimizer.state_dict())
    for t in range(5, 10):
        problem.step(optimizer, t)
    resumed = Problem()
    resumed.q.load_state_dict(saved_q)
    resumed_optimizer = build_aux_optimizer(spec, resumed.q)
    resumed_optimizer.load_state_dict(saved_optimizer)
    for t in range(5, 10):
        resumed.step(resumed_optimizer, t)
    for (name, a), b in zip(problem.q.state_dict().items(), resumed.q.state_dict().values()):
        assert torch.equal(a, b), f"λ entry {name} differs after resuming"


AUX_OPTIMIZER_CHECKS: dict[str, AuxOptimizerCheck] = {
    "options": check_options,
    "versions bumped": check_versions_bumped,
    "fit": check_fit,
    "resume": check_resume,
}
"""The contract, check by check: ``AUX_OPTIMIZER_CHECKS[label](spec)``."""
