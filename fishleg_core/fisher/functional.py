"""A functional view θ ↦ f(θ; x) of a model that leaves the model and the global RNG untouched."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fishleg_core.vectors import detach, trainable_parameters

ModelFunction = Callable[[dict[str, Tensor]], Tensor]
_IN_FUNCTIONAL_VIEW: ContextVar[bool] = ContextVar("fishleg_in_functional_view", default=False)


def detached_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name, detached: the point θ at which f is linearised."""
    return detach(trainable_parameters(model))


@contextmanager
def model_function(model: nn.Module, inputs: Tensor) -> Iterator[ModelFunction]:
    """Yield f(θ) = model(inputs) at trainable parameters θ (a dict by name), in the model's current mode.

    Every call restarts the global RNG (CPU, and CUDA if initialised) from its state at entry, so RNG-driven
    layers such as Dropout draw the same masks in every forward pass, and runs on fresh clones of the buffers,
    so BatchNorm running statistics are not updated. The RNG state at entry is restored at exit. The clones
    are made inside f because torch.func transforms refuse in-place updates of captured tensors.
    """
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def reset_rng() -> None:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)

    buffers = dict(model.named_buffers())

    def f(params: dict[str, Tensor]) -> Tensor:
        reset_rng()
        clones = {name: b.clone() for name, b in buffers.items()}
        return functional_call(model, {**params, **clones}, (inputs,))

    token = _IN_FUNCTIONAL_VIEW.set(True)
    try:
        yield f
    finally:
        _IN_FUNCTIONAL_VIEW.reset(token)
        reset_rng()


def in_functional_view() -> bool:
    """True while a Fisher method runs the model functionally (module hooks can ignore those passes)."""
    return _IN_FUNCTIONAL_VIEW.get()
