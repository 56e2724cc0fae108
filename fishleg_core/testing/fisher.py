"""The contract of a Fisher-vector product method (``FISHER_METHODS``) as a public test helper:
``check_fisher_method(method)`` runs every check through ``fisher_vp`` on a tiny float64 MLP and a batch of
its inputs, with data targets drawn from the model, and raises ``AssertionError`` naming the check that failed.

A method in one's own file passes the package's own contract with::

    from fishleg_core.testing import check_fisher_method
    check_fisher_method("my_method")  # or the function itself, registered or not

The checks, in this order, hold for every method, sampled ones included (each call draws from a generator
with the same seed, so that a sampled method's calls share one draw):

- output: the method's own return value is a detached, finite tensor per entry of v, keyed like v, with the
  parameter's shape and dtype; the model's parameters, buffers and the global RNG are unchanged;
- reproducible: two calls with generators of the same seed give the same product;
- linear: F(a u + b v) = a F u + b F v;
- symmetric: ⟨u, F v⟩ = ⟨F u, v⟩;
- positive semi-definite: ⟨v, F v⟩ ≥ 0 (skipped for a method whose single call is a random Hessian, such as
  "sampled": only its mean is semi-definite);
- damping: ``fisher_vp(..., damping=γ)`` adds γ v;
- dense Fisher (only for an exact method, such as "exact"): F v equals (1/B) Σ_b J_bᵀ H_b J_b v with J_b the
  per-example Jacobian (``torch.func.jacrev``) and H_b the likelihood's Hessian written out.

Expectations (that a sampled method's mean is the Fisher, that the empirical Fisher is the mean of per-example
gradient outer products) are not checked here: they are the method's own reference tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from fishleg_core.fisher import FISHER_METHODS, fisher_vp
from fishleg_core.likelihoods import Likelihood, resolve_likelihood
from fishleg_core.testing._assertions import close, run_check
from fishleg_core.testing._dense import dense_fisher, flatten, random_vector, trainable

TOLERANCE = 1e-10
"""Relative tolerance of every comparison (float64)."""

BATCH = 5
DAMPING = 0.3

FisherMethod = Callable[..., dict[str, Tensor]]


def check_fisher_method(
    method: str | FisherMethod,
    *,
    exact: bool | None = None,
    semi_definite: bool | None = None,
    likelihood: Likelihood | str = "categorical",
    seed: int = 0,
) -> None:
    """Run the checks of the module docstring on ``method``.

    Args:
        method: a name in ``FISHER_METHODS``, or a method function (registered or not; one that is not is
            registered under a private name for the duration of the check).
        exact: also check F v against the dense Fisher; default True for the built-in "exact" method only.
        semi_definite: check ⟨v, F v⟩ ≥ 0; default True except for the built-in "sampled" method.
        likelihood: the likelihood on the model's outputs (a name in ``LIKELIHOODS``), default categorical.
        seed: the seed of the model, the inputs, the targets, the vectors and the methods' generators.

    Raises:
        AssertionError: a check failed (or the method's own code raised inside it); the message names the
            method and the check.
        UnknownNameError: ``method`` is a name that is not registered.
    """
    function = FISHER_METHODS.get(method) if isinstance(method, str) else method
    exact = function is FISHER_METHODS.get("exact") if exact is None else exact
    semi_definite = function is not FISHER_METHODS.get("sampled") if semi_definite is None else semi_definite
    with _registered(function) as name:
        case = _Case(name, resolve_likelihood(likelihood), seed)
        checks: dict[str, Callable[[_Case], None]] = {
            "output": _check_output,
            "reproducible": _check_reproducible,
            "linear": _check_linear,
            "symmetric": _check_symmetric,
        }
        if semi_definite:
            checks["positive semi-definite"] = _check_semi_definite
        checks["damping"] = _check_damping
        if exact:
            checks["dense Fisher"] = _check_dense_fisher
        label = f"Fisher method {name!r}" if isinstance(method, str) else f"Fisher method {function.__name__}"
        for check_name, check in checks.items():
            run_check(label, check_name, check, case)


@contextlib.contextmanager
def _registered(function: FisherMethod) -> Iterator[str]:
    """The name ``function`` is registered under, registering it for the duration if it is not."""
    for key, registered in FISHER_METHODS.items():
        if registered is function:
            yield str(key)
            return
    name = f"_check_fisher_method_{id(function)}"
    FISHER_METHODS.register(name)(function)
    try:
        yield name
    finally:
        FISHER_METHODS.unregister(name)


class _Case:
    """A tiny float64 MLP (3 → 4 → 3, tanh), a batch of its inputs and data targets drawn from it."""

    def __init__(self, method: str, likelihood: Likelihood, seed: int) -> None:
        self.method, self.likelihood, self.seed = method, likelihood, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
            self.inputs = torch.randn(BATCH, 3, dtype=torch.float64)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.targets = likelihood.sample(self.model(self.inputs), generator)
        self.params = trainable(self.model)
        self.names = list(self.params)

    def vector(self, offset: int) -> dict[str, Tensor]:
        return random_vector(self.params, self.seed + offset)

    def product(self, vector: dict[str, Tensor], damping: float = 0.0) -> dict[str, Tensor]:
        """(F + damping I) v by the method, its generator seeded with the case's seed."""
        return fisher_vp(
            self.model,
            self.likelihood,
            self.inputs,
            vector,
            method=self.method,
            damping=damping,
            generator=torch.Generator().manual_seed(self.seed),
            targets=self.targets,
        )

    def raw_product(self, vector: dict[str, Tensor]) -> dict[str, Tensor]:
        """The method's own return value, called as ``fisher_vp`` calls it (before the damping is added)."""
        return FISHER_METHODS.get(self.method)(
            model=self.model,
            likelihood=self.likelihood,
            inputs=self.inputs,
            targets=self.targets,
            vector=vector,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def flat_product(self, vector: dict[str, Tensor]) -> Tensor:
        return flatten(self.product(vector), self.names)


def _dot(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a, b))


def _check_output(case: _Case) -> None:
    v = case.vector(1)
    state = {name: t.clone() for name, t in case.model.state_dict().items()}
    rng = torch.get_rng_state()
    product = case.raw_product(v)
    assert isinstance(product, dict), f"returns a {type(product).__name__}, not a dict of tensors"
    assert list(product) == list(v), f"keys {list(product)}, not those of the vector {list(v)}"
    for name, t in product.items():
        p = case.params[name]
        assert isinstance(t, Tensor), f"entry {name!r} is a {type(t).__name__}, not a tensor"
        assert t.shape == p.shape, f"entry {name!r} has shape {tuple(t.shape)}, not the parameter's {tuple(p.shape)}"
        assert t.dtype == p.dtype, f"entry {name!r} has dtype {t.dtype}, not the parameter's {p.dtype}"
        assert not t.requires_grad, f"entry {name!r} is not detached"
        assert torch.isfinite(t).all(), f"entry {name!r} is not finite"
    changed = [name for name, t in case.model.state_dict().items() if not torch.equal(t, state[name])]
    assert not changed, f"the model's parameters or buffers {changed} changed"
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG state changed"


def _check_reproducible(case: _Case) -> None:
    v = case.vector(1)
    assert torch.equal(case.flat_product(v), case.flat_product(v)), "two calls with the same seed differ"


def _check_linear(case: _Case) -> None:
    u, v = case.vector(1), case.vector(2)
    combined = {name: 0.7 * u[name] - 1.9 * v[name] for name in u}
    expected = 0.7 * case.flat_product(u) - 1.9 * case.flat_product(v)
    close(case.flat_product(combined), expected, "F(a u + b v) against a F u + b F v", TOLERANCE)


def _check_symmetric(case: _Case) -> None:
    u, v = case.vector(1), case.vector(2)
    u_fv = _dot(flatten(u, case.names), case.flat_product(v))
    fu_v = _dot(case.flat_product(u), flatten(v, case.names))
    scale = max(abs(u_fv), abs(fu_v), 1e-300)
    assert abs(u_fv - fu_v) <= TOLERANCE * scale, f"⟨u, F v⟩ = {u_fv:.6g} but ⟨F u, v⟩ = {fu_v:.6g}"


def _check_semi_definite(case: _Case) -> None:
    for offset in range(1, 4):
        v = flatten(case.vector(offset), case.names)
        fv = case.flat_product(case.vector(offset))
        v_fv = _dot(v, fv)
        floor = -TOLERANCE * float(v.norm() * fv.norm())
        assert v_fv >= floor, f"⟨v, F v⟩ = {v_fv:.6g} < 0 for the vector of seed {case.seed + offset}"


def _check_damping(case: _Case) -> None:
    v = case.vector(1)
    damped = flatten(case.product(v, damping=DAMPING), case.names)
    close(damped - case.flat_product(v), DAMPING * flatten(v, case.names), f"(F + {DAMPING} I) v − F v", TOLERANCE)


def _check_dense_fisher(case: _Case) -> None:
    v = case.vector(1)
    expected = dense_fisher(case.model, case.inputs, case.likelihood) @ flatten(v, case.names)
    close(case.flat_product(v), expected, "F v against (1/B) Σ_b J_bᵀ H_b J_b v", TOLERANCE)
