"""The validated hyperparameters of the FishLeg optimizer: ``FishLegConfig`` is generated from the keyword
signature of ``FishLeg.__init__`` (``config_from_signature``), so the signature is the one list of fields;
the constrained types below carry each field's checks (pydantic; errors name the offending field)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Collection
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from fishleg_core._validation import check_number
from fishleg_core.fisher import FISHER_METHODS

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A finite number > 0."""

NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A finite number >= 0."""

Momentum = Annotated[float, Field(ge=0, lt=1)]
"""β in [0, 1)."""

AuxSchedule = int | tuple[tuple[int, int], ...]
"""A period, or phases ((first step, period), ...) from step 0."""


def _valid_schedule(aux_every: AuxSchedule) -> AuxSchedule:
    phases = ((0, aux_every),) if isinstance(aux_every, int) else aux_every
    if not phases or phases[0][0] != 0:
        raise ValueError("a schedule needs phases (first step, period), the first one starting at step 0")
    if any(later <= earlier for (earlier, _), (later, _) in zip(phases, phases[1:])):
        raise ValueError("the phases' first steps must increase")
    if any(period < 0 for _, period in phases):
        raise ValueError("periods must be >= 0 (0: no auxiliary updates)")
    return aux_every


def _registered_method(name: str) -> str:
    if name not in FISHER_METHODS:
        raise ValueError(f"unknown Fisher method; known: {', '.join(FISHER_METHODS.names())}")
    return name


ValidSchedule = Annotated[AuxSchedule, AfterValidator(_valid_schedule)]
"""An ``aux_every`` value whose phases start at step 0, increase and have periods >= 0."""

RegisteredFisherMethod = Annotated[str, AfterValidator(_registered_method)]
"""A name in ``FISHER_METHODS``."""


class FishLegConfigBase(BaseModel):
    """What every generated config shares: unknown fields are errors, and the values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def config_from_signature(
    function: Callable[..., Any], name: str, exclude: Collection[str], base: type[BaseModel] = FishLegConfigBase
) -> type[BaseModel]:
    """A pydantic model with one field per parameter of ``function`` (its annotation, with the constraints of
    ``Annotated`` types, and its default), less ``self`` and the parameters in ``exclude``.

    Raises:
        ValueError: ``exclude`` names a parameter that ``function`` does not have.
    """
    signature = inspect.signature(function)
    unknown = set(exclude) - set(signature.parameters)
    if unknown:
        raise ValueError(f"config_from_signature: {sorted(unknown)} are not parameters of {function.__qualname__}")
    hints = typing.get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {
        parameter.name: (hints[parameter.name], ... if parameter.default is parameter.empty else parameter.default)
        for parameter in signature.parameters.values()
        if parameter.name != "self" and parameter.name not in exclude
    }
    return create_model(name, __base__=base, __module__=function.__module__, **fields)


def aux_phase(aux_every: AuxSchedule, step: int) -> tuple[int, int]:
    """(first step, period) of the auxiliary-update phase that holds ``step``."""
    if isinstance(aux_every, int):
        return 0, aux_every
    return [phase for phase in aux_every if phase[0] <= step][-1]


def aux_due(aux_every: AuxSchedule, step: int) -> bool:
    """Whether step ``step`` (counted from 0) makes an auxiliary update: its phase has a period k > 0 and k
    divides the steps since the phase began."""
    first, period = aux_phase(aux_every, step)
    return period > 0 and (step - first) % period == 0


def sgd_lr_from_torch(lr: float, momentum: float) -> float:
    """The SGD rate η_SGD with which FishLeg (``q={"init_scale": η_SGD / lr}``) starts out as
    ``torch.optim.SGD(lr=lr, momentum=momentum)``.

    torch's buffer b ← βb + g (from b = g) is FishLeg's m ← βm + (1 − β)g (from 0) divided by 1 − β, so
    θ ← θ − lr·b is FishLeg's step θ ← θ − η_SGD·m with η_SGD = lr / (1 − β).

    Args:
        lr: torch's SGD learning rate.
        momentum: torch's SGD momentum β in [0, 1).

    Returns:
        lr / (1 − β).

    Raises:
        ValueError: ``lr`` <= 0 or ``momentum`` outside [0, 1).
    """
    check_number("lr", lr, 0.0)
    check_number("momentum", momentum, 0.0, inclusive=True, below=1.0)
    return lr / (1.0 - momentum)
