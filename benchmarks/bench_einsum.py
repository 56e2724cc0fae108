"""torch.einsum (contraction order by opt_einsum) against the hand-ordered chains of Q's multi-factor products.

On the A.6 autoencoder's block shapes, in one process, the fastest of ``--repeats`` calls each, interleaved:

- ``sandwich``: A X Bᵀ of ``tridiag_kron``'s dense products, ``(A @ X) @ B.mT`` against
  ``einsum("ij,jk,lk->il")``;
- ``ekfac``: A ⊙ (L (B² ⊙ (Lᵀ (A ⊙ G) R)) Rᵀ), the two three-factor chains by hand against two einsums;
- ``kron_sum``: Σ_k M_L⁽ᵏ⁾ G M_R⁽ᵏ⁾ (K = 2), term by term against one einsum over the stacked Gram matrices.

The forms are timed without autograd (Q·g between auxiliary updates, cached Gram matrices) and with it
(Q·u forward and backward, λ changing at every step). Ratios are einsum / hand; above 1, einsum is slower.

    python -m benchmarks.bench_einsum [--repeats N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import timed, write_json
from fishleg_core.qforms import EKFACQ, KronSumQ

SHAPES = ((300, 785), (100, 301), (30, 101))
"""Blocks of the A.6 autoencoder [784, 300, 100, 30, ...]: (out, in + 1)."""


def ekfac_by_hand(form: EKFACQ, G: Tensor) -> Tensor:
    L, R, A = form.L(), form.R(), form.A()
    inner = form.B2() * (L.mT @ (A * G) @ R)
    return A * (L @ inner @ R.mT)


def ekfac_einsum(form: EKFACQ, G: Tensor) -> Tensor:
    L, R, A = form.L(), form.R(), form.A()
    inner = form.B2() * torch.einsum("ji,...jk,kl->...il", L, A * G, R)
    return A * torch.einsum("ij,...jk,lk->...il", L, inner, R)


def kron_sum_by_hand(form: KronSumQ, G: Tensor) -> Tensor:
    return sum(L.gram_matmul(R.gram_matmul(G.mT).mT) for L, R in form._factors())  # type: ignore[return-value]


def kron_sum_einsum(form: KronSumQ, G: Tensor) -> Tensor:
    M_L = torch.stack([L.gram() for L, _ in form._factors()])
    M_R = torch.stack([R.gram() for _, R in form._factors()])
    return torch.einsum("kij,...jl,klm->...im", M_L, G, M_R)


def compare(name: str, hand: Callable[[], object], einsum: Callable[[], object], repeats: int) -> dict[str, float]:
    hand(), einsum()  # warm-up
    times = {"hand": float("inf"), "einsum": float("inf")}
    for _ in range(repeats):  # interleaved, so that machine noise hits both alike
        times["hand"] = min(times["hand"], timed(hand))
        times["einsum"] = min(times["einsum"], timed(einsum))
    ratio = times["einsum"] / times["hand"]
    print(f"{name:<34}{1e3 * times['hand']:>11.3f}{1e3 * times['einsum']:>11.3f}{ratio:>9.2f}")
    return {f"{name}_hand_ms": 1e3 * times["hand"], f"{name}_einsum_ms": 1e3 * times["einsum"], f"{name}_ratio": ratio}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small shapes, 2 repeats (a smoke run)")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    shapes = ((6, 5), (4, 7)) if args.quick else SHAPES
    repeats = 2 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    result: dict[str, Any] = {}
    print(f"{'product':<34}{'hand ms':>11}{'einsum ms':>11}{'ratio':>9}")
    for (m, n), (_, k) in zip(shapes, shapes[1:] + shapes[:1]):
        A, X, B = (torch.randn(size, generator=generator) for size in ((k, m), (m, n), (k, n)))
        result.update(
            compare(
                f"sandwich {k}x{m}.{m}x{n}.{n}x{k}",
                lambda: A @ X @ B.mT,  # noqa: B023 - called at once
                lambda: torch.einsum("ij,jk,lk->il", A, X, B),  # noqa: B023 - called at once
                repeats,
            )
        )
    for shape in shapes:
        G = torch.randn(shape, generator=generator)
        for kind, cls, hand, einsum in (
            ("ekfac", EKFACQ, ekfac_by_hand, ekfac_einsum),
            ("kron_sum", KronSumQ, kron_sum_by_hand, kron_sum_einsum),
        ):
            form: Any = cls(shape)
            with torch.no_grad():
                result.update(
                    compare(
                        f"{kind} {shape[0]}x{shape[1]} Q·g",
                        lambda: hand(form, G),  # noqa: B023 - called at once
                        lambda: einsum(form, G),  # noqa: B023 - called at once
                        repeats,
                    )
                )
            for module in form.modules():
                if hasattr(module, "cache_gram"):
                    module.cache_gram = False  # as while λ changes at every step

            def forward_backward(multiply: Callable[[Any, Tensor], Tensor]) -> Callable[[], None]:
                def run() -> None:
                    with torch.enable_grad():
                        (multiply(form, G) * G).sum().backward()  # noqa: B023 - called at once

                return run

            result.update(
                compare(
                    f"{kind} {shape[0]}x{shape[1]} Q·u fwd+bwd",
                    forward_backward(hand),
                    forward_backward(einsum),
                    repeats,
                )
            )
    return write_json(result, args.json)


if __name__ == "__main__":
    main()
