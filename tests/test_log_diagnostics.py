"""FishLeg's diagnostics as scalars: a plain dict, and TensorBoard's SummaryWriter."""

from __future__ import annotations

import torch
from thirdparty_models import import_optional
from torch import nn

import fishleg_core as fl


def trained_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(6, 3)
    optimizer = fl.FishLeg(model, "gaussian", lr=0.1, aux_every=1, aux_data=[x])
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), torch.zeros(6, 2)).backward()
        optimizer.step()
    return optimizer


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, int | None]] = []

    def add_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        self.calls.append((tag, value, step))


def test_the_scalars_are_the_diagnostics_flattened():
    optimizer = trained_optimizer()
    scalars = fl.diagnostic_scalars(optimizer)
    diagnostics = optimizer.diagnostics()
    assert scalars["fishleg/last_aux_loss"] == diagnostics["last_aux_loss"]
    assert scalars["fishleg/aux_loss_floor"] == -0.5
    assert scalars["fishleg/steps"] == 2.0 and scalars["fishleg/aux_updates"] == 2.0
    assert scalars["fishleg/q_scale/0"] == diagnostics["q_scale"]["0"]
    assert scalars["fishleg/lr/0"] == 0.1
    assert all(isinstance(value, float) for value in scalars.values())
    recorder = Recorder()
    assert fl.log_diagnostics(recorder, optimizer, step=7) == scalars
    assert recorder.calls == [(tag, value, 7) for tag, value in scalars.items()]


def test_tensorboard_summary_writer_records_them(tmp_path):
    tensorboard = import_optional("torch.utils.tensorboard")
    event_accumulator = import_optional("tensorboard.backend.event_processing.event_accumulator")
    optimizer = trained_optimizer()
    with tensorboard.SummaryWriter(log_dir=str(tmp_path)) as writer:
        written = fl.log_diagnostics(writer, optimizer, step=3)
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    loss = events.Scalars("fishleg/last_aux_loss")
    assert [(e.step, round(e.value, 5)) for e in loss] == [(3, round(written["fishleg/last_aux_loss"], 5))]
