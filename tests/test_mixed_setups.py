"""Mixed setups: a fallback torch optimizer for parameters FishLeg does not precondition, decoupled weight decay,
parameter groups with their own rates, LR schedulers, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fishleg_core as fl


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 6)
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(tokens)))).transpose(1, 2)


def batches(count: int = 5):
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 7, (4, 5), generator=generator), torch.randint(0, 3, (4, 5), generator=generator))
        for _ in range(count)
    ]


FALLBACK = {"optimizer": "adam", "params": ["embed", "norm"], "lr": 0.01}


def make(**options):
    torch.manual_seed(0)
    model = Tagger()
    aux = [tokens for tokens, _ in batches()]
    return model, fl.FishLeg(model, "categorical", lr=0.05, aux_every=1, aux_data=aux, **options)


def run(model, optimizer, data, scheduler=None):
    for tokens, labels in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens), labels).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def test_fallback_parameters_are_stepped_by_adam_exactly_and_left_out_of_q():
    model, optimizer = make(fallback=FALLBACK)
    assert set(optimizer.q.param_names) == {"encoder.0.weight", "encoder.0.bias", "head.weight", "head.bias"}
    reference = {
        name: p.detach().clone().requires_grad_()
        for name, p in model.named_parameters()
        if name.startswith(("embed", "norm"))
    }
    adam = torch.optim.Adam(list(reference.values()), lr=0.01)
    for tokens, labels in batches():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens), labels).backward()
        for name, p in reference.items():
            p.grad = model.get_parameter(name).grad.clone()
        adam.step()
        optimizer.step()
        assert torch.isfinite(optimizer.last_aux_loss)
    for name, p in reference.items():
        assert torch.equal(model.get_parameter(name), p), name


def test_a_checkpoint_with_a_fallback_resumes_bit_identically_and_a_scheduler_scales_both():
    data = batches(6)
    model, optimizer = make(fallback=FALLBACK)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    run(model, optimizer, data, scheduler)
    assert [group["lr"] for group in optimizer.param_groups] == [0.05 / 8, 0.01 / 8]
    assert optimizer._fallback.param_groups[0] is optimizer.param_groups[-1]

    model, optimizer = make(fallback=FALLBACK)
    run(model, optimizer, data[:3])
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    run(model, optimizer, data[3:])
    expected = copy.deepcopy(model.state_dict())
    model, optimizer = make(fallback=FALLBACK)
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    assert "exp_avg" in optimizer._fallback.state[model.embed.weight]
    run(model, optimizer, data[3:])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


@pytest.mark.usefixtures("float64")
def test_groups_take_their_own_rate_and_decoupled_weight_decay_acts_outside_q():
    """With Q = I fixed and no momentum: θ ← (1 − η w) θ − η g, with η per group."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = fl.FishLeg(
        model,
        "gaussian",
        lr=0.1,
        momentum=0.0,
        aux_every=0,
        decoupled_weight_decay=0.5,
        group_options=[{"params": ["2"], "lr": 0.02}],
    )
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    nn.functional.mse_loss(model(x), y).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        lr = 0.02 if name.startswith("2.") else 0.1
        torch.testing.assert_close(p, (1 - lr * 0.5) * before[name] - lr * grads[name])
    assert optimizer._capture is not None  # decoupled decay keeps the low-rank product


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"fallback": {"optimizer": "lamb", "params": ["embed"]}}, "unknown optimizer 'lamb'"),
        ({"fallback": {"params": ["nothing*"]}}, "the pattern 'nothing\\*' matches no trainable parameter"),
        ({"group_options": [{"params": ["head"], "betas": 1}]}, "unknown options \\['betas'\\]"),
        ({"group_options": [{"params": ["head"]}, {"params": ["head.*"]}]}, "already in an earlier group"),
    ],
)
def test_bad_mixed_options_are_named(options, error):
    with pytest.raises((TypeError, ValueError), match=error):
        make(**options)
