"""A forward pass under torch.autocast("cpu", dtype=torch.bfloat16): FishLeg steps the model, Q and λ stay
float32, and the low-rank product uses the bfloat16 factors (cast to float32)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fishleg_core as fl


def test_fishleg_steps_a_bfloat16_autocast_forward_with_q_in_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 4))
    x = torch.randn(6, 12)
    y = torch.randint(0, 4, (6,))
    optimizer = fl.FishLeg(model, "categorical", lr=0.05, aux_every=1, aux_data=[x])
    used = []
    factors = optimizer._capture.factors
    optimizer._capture.factors = lambda gradient: used.append(sorted(found := factors(gradient))) or found
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for _ in range(5):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            assert logits.dtype == torch.bfloat16
            loss = nn.functional.cross_entropy(logits.float(), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in optimizer.q.parameters())
    assert optimizer.last_aux_loss.dtype == torch.float32 and torch.isfinite(optimizer.last_aux_loss)
    assert used == [["0"]] * 5  # the first layer's factors (rank 6 pays there), in bfloat16 cast to float32
    assert losses[-1] < losses[0]


def test_a_clipped_gradient_under_autocast_is_still_told_from_its_bfloat16_factors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 4))
    x, y = torch.randn(6, 12), torch.randint(0, 4, (6,))
    optimizer = fl.FishLeg(model, "categorical", lr=0.05, aux_every=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    nn.functional.cross_entropy(logits.float(), y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1 * sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5)
    with pytest.warns(UserWarning, match="layer '0': using the dense Q·g product because its .grad differs"):
        optimizer.step()
