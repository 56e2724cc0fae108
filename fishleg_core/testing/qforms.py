"""The QForm contract as a public test helper: ``check_qform("name", **options)`` runs every check on a
registered form and raises ``AssertionError`` naming the check that failed.

A form in one's own file passes the package's own contract with::

    from fishleg_core.testing import check_qform
    check_qform("my_form", rank=2)

The checks run in float64 (dense references need the precision) on a small block:

- Q·G matches the dense matrix (``to_dense``, row-major vec) before and after perturbing λ, on single
  and batched blocks, and ``multiply_low_rank`` is None or matches the product with the dense block;
- the factory arguments ``device=`` and ``dtype=`` give λ and the products that dtype;
- Q is symmetric positive definite after perturbations, small and large;
- Q starts at ``init_scale · I`` (up to the form's declared ``init_deviation``);
- gradients with respect to λ match finite differences (``gradcheck``);
- products outside autograd (cached factors) follow every step of the auxiliary Adam;
- its ``state_dict`` loads with ``torch.load(weights_only=True)``, restores Q exactly and takes no more
  room on disk than its tensors (``check_checkpoint``);
- a block of the wrong shape, a non-positive ``init_scale`` and a malformed ``shape`` are rejected with
  errors that say so.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from fishleg_core.auxiliary.optimizers import AuxiliaryAdam
from fishleg_core.qforms import QFORMS, QForm
from fishleg_core.testing._assertions import raises, run_check

SHAPE = (3, 4)
INIT_SCALE = 0.7

QFormCheck = Callable[[str, dict[str, Any]], None]


def check_qform(name: str, **options: Any) -> None:
    """Run every check of ``QFORM_CHECKS``, in float64, on the form registered as ``name`` built with
    ``options``; the first that fails raises ``AssertionError`` naming it."""
    QFORMS.get(name)  # an unknown name fails here, listing the known forms
    with float64():
        for label, check in QFORM_CHECKS.items():
            run_check(f"QForm {name!r} {options}", label, check, name, options)


@contextmanager
def float64() -> Iterator[None]:
    """torch's default dtype set to float64 inside the block."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(name: str, options: dict[str, Any], shape: Any = SHAPE, init_scale: Any = INIT_SCALE, seed: int = 0) -> QForm:
    """The form ``name`` on a block of ``shape``, started at ``init_scale · I``, its random terms from ``seed``."""
    torch.manual_seed(seed)
    return QFORMS.build(name, shape=shape, init_scale=init_scale, **options)


@torch.no_grad()
def perturb(q: QForm, scale: float, seed: int = 1, shift: float = 0.0) -> None:
    """λ ← λ + scale·N(0, 1) + shift, elementwise, from its own generator."""
    generator = torch.Generator().manual_seed(seed)
    for p in q.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype) + shift)


def check_checkpoint(state: Any, slack: float = 1.1, per_tensor_bytes: int = 512) -> Any:
    """``torch.save(state)`` loads back with ``torch.load(weights_only=True)`` (plain tensors and containers
    only) and its size is at most ``slack`` × the bytes of its tensors + ``per_tensor_bytes`` per tensor
    + 4 kB (the archive's own records). Returns the loaded state."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tensors = _tensors(state)
    payload = sum(t.numel() * t.element_size() for t in tensors)
    bound = slack * payload + per_tensor_bytes * len(tensors) + 4096
    size = len(buffer.getvalue())
    assert size <= bound, (
        f"checkpoint of {size} bytes for {payload} bytes in {len(tensors)} tensors (bound {bound:.0f})"
    )
    buffer.seek(0)
    try:
        return torch.load(buffer, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError naming the object it refused
        raise AssertionError(f"checkpoint does not load with weights_only=True: {error}") from error


def _tensors(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in _tensors(value)]
    return []


def _close(actual: Tensor, expected: Tensor, atol: float, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def check_multiply_matches_dense(name: str, options: dict[str, Any]) -> None:
    for scale in (0.0, 0.3, 1.0):
        q = build(name, options)
        perturb(q, scale)
        G = torch.randn(*SHAPE)
        with torch.no_grad():
            Q = q.to_dense()
            _close(q(G).reshape(-1), Q @ G.reshape(-1), atol=1e-12 * Q.abs().max().item())


def check_batched_blocks(name: str, options: dict[str, Any]) -> None:
    q = build(name, options)
    perturb(q, 0.5)
    Gs = torch.randn(5, 2, *SHAPE)
    expected = torch.stack([torch.stack([q(G) for G in row]) for row in Gs])
    _close(q(Gs), expected, atol=1e-12, rtol=1e-12)


def check_low_rank_product(name: str, options: dict[str, Any]) -> None:
    q = build(name, options)
    perturb(q, 0.5)
    for rank in (1, 2, min(SHAPE)):
        left, right = torch.randn(SHAPE[0], rank), torch.randn(SHAPE[1], rank)
        product = q.multiply_low_rank(left, right)
        if product is not None:  # None: no cheaper product at this rank, the caller multiplies the dense block
            _close(product, q(left @ right.T), atol=1e-12, rtol=1e-12)


def check_factory_arguments(name: str, options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    q = QFORMS.build(name, shape=SHAPE, init_scale=INIT_SCALE, dtype=torch.float32, device="cpu", **options)
    dtypes = {p.dtype for p in q.parameters()}
    assert dtypes == {torch.float32}, (
        f"dtype=torch.float32 gave parameters of {sorted(map(str, dtypes))}: the factory must pass dtype= and "
        "device= to every tensor it makes"
    )
    dtypes = {q.to_dense().dtype, q(torch.randn(*SHAPE, dtype=torch.float32)).dtype}
    assert dtypes == {torch.float32}, f"dtype=torch.float32 gave products of {sorted(map(str, dtypes))}"


def check_symmetric_positive_definite(name: str, options: dict[str, Any]) -> None:
    for scale, shift in [(0.1, 0.0), (0.5, 0.0), (1.0, 0.0), (1.0, 10.0)]:
        for seed in range(10):
            q = build(name, options, seed=seed)
            perturb(q, scale, seed=seed, shift=shift)
            Q = q.to_dense().detach()
            _close(Q, Q.T, atol=1e-13 * Q.abs().max().item())
            smallest = torch.linalg.eigvalsh(Q).min().item()
            assert smallest > 0, f"smallest eigenvalue {smallest:.3g} after perturbation {scale}, shift {shift}"


def check_initialised_at_scaled_identity(name: str, options: dict[str, Any]) -> None:
    q = build(name, options)
    n = SHAPE[0] * SHAPE[1]
    error = torch.linalg.matrix_norm(q.to_dense() - INIT_SCALE * torch.eye(n), ord=2).item()
    # forms with symmetry-breaking random terms declare their deviation (kron_sum: 1 %); others are exact
    assert q.init_deviation <= 0.01, f"init_deviation {q.init_deviation} > 0.01"
    assert error <= max(q.init_deviation * INIT_SCALE, 1e-12), f"‖Q₀ − init_scale·I‖₂ = {error:.3g}"


def check_gradients(name: str, options: dict[str, Any]) -> None:
    q = build(name, options)
    perturb(q, 0.3)
    names = [n for n, _ in q.named_parameters()]
    G = torch.randn(*SHAPE)

    def apply(*values: Tensor) -> Tensor:
        return functional_call(q, dict(zip(names, values)), (G,))

    values = tuple(p.detach().clone().requires_grad_() for p in q.parameters())
    assert torch.autograd.gradcheck(apply, values, raise_exception=False), "gradients differ from finite differences"


def check_caches_follow_adam(name: str, options: dict[str, Any]) -> None:
    q = build(name, options)
    optimizer = AuxiliaryAdam(q.parameters(), lr=0.1, betas=(0.9, 0.999))
    G = torch.randn(*SHAPE)
    for _ in range(3):
        with torch.no_grad():
            q(G)  # fills the caches
        optimizer.zero_grad()
        q(G).square().sum().backward()
        optimizer.step()
        with torch.no_grad():
            outside_autograd = q(G)
        _close(outside_autograd, q(G).detach(), atol=1e-12, rtol=1e-12)


def check_state_dict(name: str, options: dict[str, Any]) -> None:
    q = build(name, options)
    perturb(q, 0.5)
    G = torch.randn(*SHAPE)
    with torch.no_grad():
        q(G)  # fills the caches, which must not be saved
    loaded = check_checkpoint(q.state_dict())
    fresh = build(name, options, seed=1)
    with torch.no_grad():
        fresh(G)  # fills the caches, which loading must invalidate
        fresh.load_state_dict(loaded)
        assert torch.equal(fresh(G), q(G)), "a form loaded from a state_dict computes another product"


def check_wrong_block_shape(name: str, options: dict[str, Any]) -> None:
    q = build(name, options)
    raises(ValueError, r"blocks of shape \(\.\.\., 3, 4\); got \(4, 3\)", lambda: q(torch.randn(4, 3)))


def check_bad_init_scale(name: str, options: dict[str, Any]) -> None:
    for init_scale in (0.0, -1.0, float("nan"), float("inf")):
        raises(
            ValueError,
            "init_scale must be a finite number > 0",
            functools.partial(build, name, options, init_scale=init_scale),
        )


def check_bad_shape(name: str, options: dict[str, Any]) -> None:
    for shape in ((0, 3), (3,), (2.0, 3), "3x4"):
        raises(
            ValueError,
            "shape must be a pair of positive integers",
            functools.partial(build, name, options, shape=shape),
        )


QFORM_CHECKS: dict[str, QFormCheck] = {
    "multiply matches dense": check_multiply_matches_dense,
    "batched blocks": check_batched_blocks,
    "low-rank product": check_low_rank_product,
    "device and dtype": check_factory_arguments,
    "symmetric positive definite": check_symmetric_positive_definite,
    "starts at init_scale*I": check_initialised_at_scaled_identity,
    "gradients": check_gradients,
    "caches follow Adam": check_caches_follow_adam,
    "state_dict": check_state_dict,
    "wrong block shape": check_wrong_block_shape,
    "bad init_scale": check_bad_init_scale,
    "bad shape": check_bad_shape,
}
"""The contract, check by check: ``QFORM_CHECKS[label](name, options)``, with float64 as torch's default
dtype (``check_qform`` sets it)."""
