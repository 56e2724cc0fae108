"""FishLeg's diagnostics catch the blow-ups of a small CNN at the step they happen (the newcomer's settings:
aux_lr=1 with aux_every=1, or lr=100), each provoked here on a tiny CNN and tiny images."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from models import tiny_mlp
from torch import nn

import fishleg_core as fl
from fishleg_core.optim.diagnostics import QMonitor

LIKELIHOOD = fl.LIKELIHOODS.build("categorical")


def tiny_cnn() -> nn.Sequential:
    """Conv → ReLU → Conv → ReLU → Linear → ReLU → Linear on 1 × 12 × 12 images (the study's CNN, shrunk)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """256 non-negative images (like pixels) with labels of a random linear teacher."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(256, 1, 12, 12, generator=generator)
    return x, (x.flatten(1) @ torch.randn(144, 10, generator=generator)).argmax(1)


def train(steps: int, **settings) -> tuple[fl.FishLeg, list[float], list[str]]:
    """FishLeg on the tiny CNN for ``steps`` steps of batch 32: the optimizer, the losses and the messages of
    the RuntimeWarnings given."""
    x, y = images()
    model = tiny_cnn()
    optimizer = fl.FishLeg(model, LIKELIHOOD, aux_data=[x[i : i + 32] for i in range(128, 256, 32)], **settings)
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        for step in range(steps):
            batch = slice(32 * (step % 4), 32 * (step % 4 + 1))
            optimizer.zero_grad()
            loss = LIKELIHOOD.nll(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return optimizer, losses, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_an_exploding_q_is_named_at_its_first_auxiliary_update_and_blamed_for_the_non_finite_loss():
    optimizer, losses, messages = train(40, lr=0.1, aux_lr=1.0, aux_every=1)
    explosion = [i for i, m in enumerate(messages) if "grew to" in m and "above 10/γ" in m]
    # at step 0, right after the first update and before θ moves with the exploded Q: no history needed
    assert explosion and "(after 1 auxiliary update;" in messages[explosion[0]]
    first_bad = next(step for step, loss in enumerate(losses) if not math.isfinite(loss))
    assert first_bad > 2  # named before the loss is lost
    gradient = [m for m in messages if "non-finite values in the gradient" in m]
    assert len(gradient) == 1 and explosion[0] < messages.index(gradient[0])
    assert "because λ blew up: at auxiliary update" in gradient[0] and "Q of block" in gradient[0]
    assert "above 10/γ = 10" in gradient[0] and "lower aux_lr" in gradient[0]
    _, _, first_step = train(1, lr=0.1, aux_lr=1.0, aux_every=1)
    assert any("grew to" in m for m in first_step)  # named within the step whose λ update blew Q up


def test_persistent_skipping_says_that_training_has_stopped_and_not_that_it_recovers():
    optimizer, _, messages = train(40, lr=0.1, aux_lr=1.0, aux_every=1)
    stopped = [m for m in messages if "training has stopped" in m]
    assert len(stopped) == 1 and "of the last 20 steps were skipped" in stopped[0]
    assert "will not recover" in stopped[0]
    report = optimizer.diagnostics()
    assert report["training_stopped"] and "training stopped" in report["warnings"]
    assert report["skipped"]["gradient"] > 20


def test_a_healthy_cnn_run_stays_quiet():
    optimizer, losses, messages = train(30, lr=0.1, aux_lr=1e-3, aux_every=1)
    assert messages == [] and all(math.isfinite(loss) for loss in losses)
    report = optimizer.diagnostics()
    assert not report["training_stopped"] and report["dead_blocks"] == [] and report["warnings"] == []
    assert all(scale is not None and 0.1 < scale < 10 for scale in report["q_scale"].values())


def test_dead_units_warn_and_q_scale_says_why_a_block_has_none():
    optimizer, losses, messages = train(30, lr=100.0)
    dead = [m for m in messages if "has been exactly 0 for 5 steps or more" in m]
    assert len(dead) == 1 and "'0', '2'" in dead[0] and "lower lr" in dead[0]
    report = optimizer.diagnostics()
    assert {"0", "2"} <= set(report["dead_blocks"]) and "7" not in report["dead_blocks"]
    assert "dead units" in report["warnings"]
    assert all(scale is None or math.isfinite(scale) for scale in report["q_scale"].values())
    assert report["q_scale"]["0"] is None and "gradient was exactly 0" in report["q_scale_missing"]["0"]


def test_a_positive_auxiliary_loss_after_many_updates_warns_with_the_advice():
    """Q₀ = 4·I is too large along the gradients (A > 0 wherever uᵀF_γu > 2/q₀ = 0.5) and aux_lr 1e-6 too small
    to bring it down."""
    optimizer, _, messages = train(105, lr=1e-3, init_scale=4.0, aux_lr=1e-6, aux_every=1)
    positive = [m for m in messages if "auxiliary loss A is still positive" in m]
    assert len(positive) == 1 and "(after 100 auxiliary updates;" in positive[0]
    assert "healthy A is negative" in positive[0] and "aux_lr" in positive[0] and "init_scale" in positive[0]
    assert optimizer.diagnostics()["last_aux_loss"] > 0


def test_a_block_with_a_zero_gradient_has_no_scale_rather_than_nan():
    monitor = QMonitor(fl.build_model_q(tiny_mlp(2)), init_scale=1.0, damping=1.0)
    u = {name: torch.ones_like(p) for name, p in tiny_mlp(2).named_parameters()}
    u["0.weight"].zero_()
    u["0.bias"].zero_()
    monitor.record(u, u, u)
    state = monitor.state()
    assert state["q_scale"]["0"] is None and state["q_scale"]["2"] == pytest.approx(1.0)
    assert "exactly 0" in state["q_scale_missing"]["0"] and "2" not in state["q_scale_missing"]
