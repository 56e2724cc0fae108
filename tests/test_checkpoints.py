"""Checkpoints load with weights_only=True at the size of their tensors; resume is exact across passes of a
seeded shuffled DataLoader."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fishleg_core as fl
from fishleg_core.auxiliary.data import CyclicBatches
from fishleg_core.testing import check_checkpoint


class CountingDataset(Dataset):
    """Items i ↦ (x_i, y_i), counting the items loaded."""

    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=generator, dtype=torch.float64)
        self.y = torch.randn(n, 3, generator=generator, dtype=torch.float64)
        self.loaded = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.loaded += 1
        return self.x[i], self.y[i]


def shuffled_loader(dataset, seed=5, batch_size=4, **options):
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), **options
    )


class ReshufflingBatches:
    """A re-iterable that is not a DataLoader: a new order each pass from its own generator."""

    def __init__(self, batches, seed):
        self.batches, self.generator = batches, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return (self.batches[i] for i in torch.randperm(len(self.batches), generator=self.generator))


def first_tensor(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@pytest.mark.parametrize("taken", [3, 5, 13, 25, 26])  # 5 batches a pass: mid pass, end of pass, later passes
@pytest.mark.parametrize("kind", ["dataloader", "dataloader-drop-last", "reshuffling", "list"])
def test_a_resumed_stream_continues_exactly_after_any_number_of_passes(kind, taken):
    dataset = CountingDataset(18)
    batches = [dataset.x[i : i + 4] for i in range(0, 18, 4)]
    make = {
        "dataloader": lambda: shuffled_loader(dataset),
        "dataloader-drop-last": lambda: shuffled_loader(dataset, drop_last=True, batch_size=3),
        "reshuffling": lambda: ReshufflingBatches(batches, seed=2),
        "list": lambda: batches,
    }[kind]
    uninterrupted = CyclicBatches(make())
    expected = [first_tensor(uninterrupted.next()) for _ in range(taken + 12)]
    resumed = CyclicBatches(make())
    resumed.load_state_dict(uninterrupted_state(make, taken))
    dataset.loaded = 0
    continued = [first_tensor(resumed.next()) for _ in range(12)]
    assert all(torch.equal(a, b) for a, b in zip(continued, expected[taken:]))
    if kind.startswith("dataloader"):  # the completed passes and the skipped batches are never loaded
        assert dataset.loaded == sum(len(batch) for batch in continued)


def uninterrupted_state(make, taken):
    stream = CyclicBatches(make())
    for _ in range(taken):
        stream.next()
    return stream.state_dict()


def test_the_stream_counts_passes_and_positions():
    stream = CyclicBatches([torch.zeros(1), torch.ones(1)])
    states = []
    for _ in range(5):
        stream.next()
        states.append(stream.state_dict())
    assert states == [{"passes": p, "position": q} for p, q in [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1)]]


def test_a_saved_position_beyond_the_data_warns_that_resume_is_not_exact():
    stream = CyclicBatches([torch.zeros(1), torch.ones(1)])
    stream.load_state_dict({"passes": 1, "position": 4})
    with pytest.warns(UserWarning, match="aux_data has 2 batches per pass but the checkpoint was taken after 4"):
        batch = stream.next()
    assert torch.equal(batch, torch.zeros(1)) and stream.state_dict() == {"passes": 2, "position": 1}


def classifier(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


@pytest.mark.parametrize("forms", ["kron", "kron_sum", "ekfac", "diagonal"])
def test_resume_from_a_weights_only_checkpoint_is_bit_identical_after_several_aux_passes(forms, tmp_path):
    """aux_data: a shuffled DataLoader of (x, y) pairs rebuilt from the same seed; the checkpoint is taken
    in the third pass of it and holds only tensors (weights_only=True) at about their size."""
    dataset = CountingDataset(20)
    generator = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(8, 6, generator=generator, dtype=torch.float64), torch.randint(0, 3, (8,), generator=generator))
        for _ in range(16)
    ]
    likelihood = fl.LIKELIHOODS.build("categorical")

    def make():
        model = classifier()
        aux = DataLoader(
            TensorDataset(dataset.x, dataset.x.new_zeros(20)),
            batch_size=8,
            shuffle=True,
            generator=torch.Generator().manual_seed(3),
        )  # 3 batches a pass
        return model, fl.FishLeg(
            model,
            likelihood,
            lr=0.1,
            sgd_lr=0.05,
            aux_lr=0.01,
            aux_every=1,
            seed=7,
            forms={"Linear": forms},
            aux_data=aux,
        )

    def run(model, optimizer, batches):
        for x, y in batches:
            optimizer.zero_grad()
            likelihood.nll(model(x), y).backward()
            optimizer.step()

    model, optimizer = make()
    run(model, optimizer, data[:8])
    assert optimizer.aux_data.state_dict() == {"passes": 2, "position": 2}
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    run(model, optimizer, data[8:])
    uninterrupted = [p.detach().clone() for p in itertools.chain(model.parameters(), optimizer.q.parameters())]

    model, optimizer = make()
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    run(model, optimizer, data[8:])
    resumed = list(itertools.chain(model.parameters(), optimizer.q.parameters()))
    assert all(torch.equal(p, expected) for p, expected in zip(resumed, uninterrupted))


@pytest.mark.parametrize("forms", ["kron", "kron_sum", "ekfac", "diagonal", "dense", "diag_low_rank"])
def test_optimizer_and_model_q_checkpoints_hold_only_their_tensors(forms):
    """With the Gram caches filled (aux_every > 1), as in the middle of training."""
    model = nn.Sequential(nn.Linear(20, 24), nn.Tanh(), nn.Linear(24, 10))
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    optimizer = fl.FishLeg(
        model, "categorical", lr=0.1, aux_every=5, forms={"default": forms}, aux_data=[torch.randn(16, 20)]
    )
    for _ in range(3):
        optimizer.zero_grad()
        fl.LIKELIHOODS.build("categorical").nll(model(x), y).backward()
        optimizer.step()
    loaded = check_checkpoint(optimizer.state_dict())
    assert set(loaded["fishleg"]["q"]) == set(optimizer.q.state_dict())
    check_checkpoint(optimizer.q.state_dict())
