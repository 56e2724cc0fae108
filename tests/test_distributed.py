"""FishLeg under DistributedDataParallel: 2 CPU processes, gloo backend, loopback address."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from models import tiny_mlp
from torch.nn.parallel import DistributedDataParallel

import fishleg_core as fl

WORLD, STEPS, BATCH = 2, 5, 8
OPTIONS = dict(
    lr=0.1,
    q={"init_scale": 0.05 / 0.1, "forms": {"Linear": "kron"}},
    aux_optimizer={"name": "adam", "lr": 0.01},
    aux_every=1,
)


def data():
    """Per step: a global batch (inputs, targets) and a global auxiliary batch; rank r takes half r."""
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(WORLD * BATCH, 4, generator=generator, dtype=torch.float64),
            torch.randn(WORLD * BATCH, 2, generator=generator, dtype=torch.float64),
            torch.randn(WORLD * BATCH, 4, generator=generator, dtype=torch.float64),
        )
        for _ in range(STEPS)
    ]


def train(model, optimizer, batches):
    likelihood = fl.LIKELIHOODS.build("gaussian")
    for x, y, aux in batches:
        optimizer.zero_grad()
        likelihood.nll(model(x), y).backward()
        optimizer.step(aux_batch=aux)


def worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = DistributedDataParallel(tiny_mlp(2))
        optimizer = fl.FishLeg(model, "gaussian", **OPTIONS)
        half = slice(rank * BATCH, (rank + 1) * BATCH)
        train(model, optimizer, [(x[half], y[half], aux[half]) for x, y, aux in data()])
        torch.save(
            {
                "params": [p.detach() for p in model.module.parameters()],
                "q": [p.detach() for p in optimizer.q.parameters()],
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_agree_and_match_one_process_on_the_union_of_their_batches(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for key in ("params", "q"):
        for a, b in zip(ranks[0][key], ranks[1][key]):
            assert torch.equal(a, b), key  # identical on every rank, not merely close

    model = tiny_mlp(2)
    optimizer = fl.FishLeg(model, "gaussian", **OPTIONS)
    train(model, optimizer, data())
    # The union's mean gradient and exact Fisher are the averages of the two halves': equal up to the
    # float64 round-off of summing in another order.
    for a, b in zip(ranks[0]["params"], model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)
    for a, b in zip(ranks[0]["q"], optimizer.q.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)
