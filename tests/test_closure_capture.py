"""Gradient factors captured in a closure that zeroes the gradients between the forward and the backward
pass (Lightning's order) give the same steps as a plain loop, with the low-rank product on every step."""

from __future__ import annotations

import warnings

import torch
from torch import nn

import fishleg_core as fl


def model_and_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
    batches = [(torch.randn(4, 10), torch.randint(0, 3, (4,))) for _ in range(6)]
    return model, batches


def counting_factors(optimizer):
    used = []
    factors = optimizer._capture.factors

    def recording(gradient):
        found = factors(gradient)
        used.append(len(found))
        return found

    optimizer._capture.factors = recording
    return used


def train(order: str):
    model, batches = model_and_batches()
    optimizer = fl.FishLeg(model, "categorical", lr=0.1, aux_every=2, aux_data=[x for x, _ in batches])
    used = counting_factors(optimizer)
    for x, y in batches:
        if order == "plain":
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        else:  # Lightning's automatic optimisation: training_step, zero_grad, backward, all in the closure

            def closure(x=x, y=y):
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                return loss

            optimizer.step(closure)
    return [p.detach().clone() for p in model.parameters()], used


def test_a_closure_zeroing_gradients_between_forward_and_backward_keeps_the_factors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        plain, plain_used = train("plain")
        closure, closure_used = train("closure")
    assert plain_used == closure_used == [1] * 6  # the first layer (the second: rank 4 does not pay)
    assert all(torch.equal(a, b) for a, b in zip(plain, closure))


def test_a_forward_pass_without_backward_before_zero_grad_is_dropped_silently():
    model, batches = model_and_batches()
    optimizer = fl.FishLeg(model, "categorical", lr=0.1, aux_every=0)
    used = counting_factors(optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for x, y in batches[:3]:
            model(x)  # e.g. an evaluation with autograd on, never backpropagated
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert used == [1] * 3
