"""A functional view θ ↦ f(θ; x) of a model that leaves the model and the global RNG untouched."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fishleg_core._vectors import detach, trainable_parameters

ModelFunction = Callable[[dict[str, Tensor]], Tensor]


@dataclass(frozen=True)
class ModelCall:
    """The arguments of one model call, ``model(*args, **kwargs)``: how a batch with several inputs or
    keyword inputs (``input_ids``, ``attention_mask``) reaches the model in Fisher-vector products."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """The tensors' shapes and dtypes, e.g. ``"input_ids (2, 5) int64, attention_mask (2, 5) int64"``."""
        items = [(f"arg {i}", a) for i, a in enumerate(self.args)] + list(self.kwargs.items())
        return ", ".join(f"{name} {describe_tensor(value)}" for name, value in items)


Inputs = Tensor | ModelCall
"""The model's input: one tensor (``model(inputs)``) or a ``ModelCall``."""


def describe_tensor(value: Any) -> str:
    """``"(2, 5) int64"`` for a tensor, else the type's name."""
    if isinstance(value, Tensor):
        return f"{tuple(value.shape)} {value.dtype}".replace("torch.", "")
    return type(value).__name__


OutputFn = Callable[[Any], Tensor]
_IN_FUNCTIONAL_VIEW: ContextVar[bool] = ContextVar("fishleg_in_functional_view", default=False)
_OUTPUT_FN: ContextVar[OutputFn | None] = ContextVar("fishleg_output_fn", default=None)


def detached_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name, detached: the point θ at which f is linearised."""
    return detach(trainable_parameters(model))


@contextmanager
def model_function(model: nn.Module, inputs: Inputs) -> Iterator[ModelFunction]:
    """Yield f(θ) = model(inputs) (``model(*inputs.args, **inputs.kwargs)`` for a ``ModelCall``) at trainable
    parameters θ (a dict by name), in the model's current mode;
    f(θ) = output_fn(model(inputs)) inside ``selected_output(output_fn)`` (models returning tuples or dicts).

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
    output_fn = _OUTPUT_FN.get()
    args, kwargs = (inputs.args, inputs.kwargs) if isinstance(inputs, ModelCall) else ((inputs,), {})

    def f(params: dict[str, Tensor]) -> Tensor:
        reset_rng()
        clones = {name: b.clone() for name, b in buffers.items()}
        output = functional_call(model, {**params, **clones}, args, kwargs)
        return select_output(output, output_fn)

    token = _IN_FUNCTIONAL_VIEW.set(True)
    try:
        yield f
    finally:
        _IN_FUNCTIONAL_VIEW.reset(token)
        reset_rng()


def in_functional_view() -> bool:
    """True while a Fisher method runs the model functionally (module hooks can ignore those passes)."""
    return _IN_FUNCTIONAL_VIEW.get()


def select_output(output: Any, output_fn: OutputFn | None) -> Tensor:
    """The tensor the likelihood sees: ``output_fn(output)``, or ``output`` itself, which must then be a tensor."""
    selected = output if output_fn is None else output_fn(output)
    if not isinstance(selected, Tensor):
        raise TypeError(
            f"the model's output{' after output_fn' if output_fn else ''} is a "
            f"{type(selected).__name__}, not a tensor: pass output_fn= to select the tensor the "
            "likelihood models (e.g. output_fn=lambda out: out[0] or out['logits'])"
        )
    return selected


@contextmanager
def selected_output(output_fn: OutputFn | None) -> Iterator[None]:
    """Within this context, ``model_function`` applies ``output_fn`` to the model's output (None: none)."""
    token = _OUTPUT_FN.set(output_fn)
    try:
        yield
    finally:
        _OUTPUT_FN.reset(token)
