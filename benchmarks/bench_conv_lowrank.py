"""Q·g for a convolution block from its gradient factors (Δᵀ[A | 1], rank N·positions) against the dense
product M_L G M_R, on late-stage convolution shapes where the feature maps are small.

For each batch size N: a Conv2d(C, C, 3, padding=1) on N × C × S × S inputs, a kron form with perturbed λ
(Gram matrices cached, as FishLeg with aux_every > 1), the gradient of a random linear read-out. The two
products alternate in rounds; times are medians over rounds. ``pays``: whether the form's own
``multiply_low_rank`` takes the factors (its FLOP criterion, which decides which product FishLeg uses and
whether the factors are captured at all). One thread.

    python -m benchmarks.bench_conv_lowrank [--channels C] [--size S] [--batches 1,2,4,...] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
from typing import cast

import torch
from torch import nn

import fishleg_core as fl
from benchmarks.common import median, timed, write_json
from fishleg_core.auxiliary import GradientFactors
from fishleg_core.model_q import BlockQ
from fishleg_core.qforms import KronQ

REPEATS = 20


def compare(form: KronQ, G: torch.Tensor, left: torch.Tensor, right: torch.Tensor, rounds: int) -> dict:
    """Times (median over rounds) of (M_L left)(M_R right)ᵀ, also where the form would decline it, and of
    M_L G M_R; their relative difference; whether the form's ``multiply_low_rank`` takes the factors."""

    def factored_product() -> torch.Tensor:
        return form.L.gram_matmul(left) @ form.R.gram_matmul(right).mT

    with torch.no_grad():
        reference = form(G)
        error = ((factored_product() - reference).abs().max() / reference.abs().max()).item()
        low, dense = [], []
        for _ in range(rounds):
            low.append(timed(lambda: [factored_product() for _ in range(REPEATS)]))
            dense.append(timed(lambda: [form(G) for _ in range(REPEATS)]))
        pays = form.multiply_low_rank(left, right) is not None
    return {
        "pays": pays,
        "low_rank_ms": 1e3 * median(low) / REPEATS,
        "dense_ms": 1e3 * median(dense) / REPEATS,
        "relative_difference": error,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=2, help="spatial size S of the feature maps")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    conv = nn.Conv2d(args.channels, args.channels, 3, padding=1)
    q = fl.build_model_q(conv)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.01 * torch.randn_like(p))
    q.cache_grams(True)
    group = cast(BlockQ, q.groups[0])
    form = cast(KronQ, group.form)
    result: dict = {"channels": args.channels, "size": args.size, "block": list(group.block.shape), "runs": []}
    for batch in (int(b) for b in args.batches.split(",")):
        capture = GradientFactors(conv, [group.block])
        x = torch.randn(batch, args.channels, args.size, args.size)
        conv.zero_grad()
        (conv(x) * torch.randn(batch, args.channels, args.size, args.size)).sum().backward()
        capture.remove()
        gradient = {name: cast(torch.Tensor, p.grad) for name, p in conv.named_parameters()}
        factors = capture.factors(gradient)
        rank = factors[""][0].shape[1]
        G = group.block.layout.pack([gradient[name] for name in group.block.param_names])
        run = {"batch": batch, "rank": rank, **compare(form, G, *factors[""], args.rounds)}
        run["speedup"] = run["dense_ms"] / run["low_rank_ms"]
        result["runs"].append(run)
        print(
            f"N={batch:>3} rank={rank:>4} pays={str(run['pays']):<5} low-rank {run['low_rank_ms']:.3f} ms, "
            f"dense {run['dense_ms']:.3f} ms, speed-up {run['speedup']:.2f}x, "
            f"max |difference| / max |Q·g| {run['relative_difference']:.1e}"
        )
    return write_json(result, args.json)


if __name__ == "__main__":
    main()
