"""The validated hyperparameters of the FishLeg optimizer (pydantic; errors name the offending field)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fishleg_core._validation import check_number
from fishleg_core.auxiliary.optimizers import RegisteredAuxOptimizer
from fishleg_core.fisher import FISHER_METHODS


class FishLegConfig(BaseModel):
    """Hyperparameters of the FishLeg optimizer (paper Algorithm 1 and section 4.4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(gt=0, allow_inf_nan=False, description="η: θ ← θ − η Q ḡ")
    momentum: float = Field(0.9, ge=0, lt=1, description="β of ḡ ← β ḡ + (1 − β) g")
    momentum_on: Literal["gradient", "update"] = Field(
        "update",
        description="average Q·g (the default: keeps the low-rank structure of g, paper §4.4) or g "
        "(Algorithm 1 line 16)",
    )
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False, description="adds weight_decay·θ to g")
    damping: float = Field(1.0, ge=0, allow_inf_nan=False, description="γ of F_γ = F + γ I")
    sgd_lr: float | None = Field(None, gt=0, allow_inf_nan=False, description="start Q at (sgd_lr / lr)·I")
    init_scale: float | None = Field(None, gt=0, allow_inf_nan=False, description="start Q at init_scale·I")
    aux_optimizer: RegisteredAuxOptimizer = Field(
        "adam", description="optimizer of λ: a name in AUX_OPTIMIZERS or {name: ..., options}"
    )
    aux_lr: float = Field(1e-4, gt=0, allow_inf_nan=False, description="α: learning rate of λ")
    aux_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas of λ")
    aux_eps: float = Field(1e-8, gt=0, allow_inf_nan=False, description="Adam epsilon of λ")
    aux_every: int | tuple[tuple[int, int], ...] = Field(
        10,
        description="one auxiliary update every this many steps (0: none, Q fixed), or a schedule of phases "
        "((first step, period), ...) from step 0, e.g. ((0, 1), (200, 10)): every step, then every 10th from 200",
    )
    fisher_method: str = Field("exact", description="a name in FISHER_METHODS")
    low_rank: bool = Field(
        True,
        description="multiply Q with the low-rank factors of layers' gradients "
        "(momentum_on='update', no weight decay); False: always the dense product",
    )
    strict: bool = Field(False, description="error, not warning, for parameters no layer adapter covers")
    nonfinite: Literal["skip", "raise"] = Field(
        "skip",
        description="NaN/Inf in the gradient or an auxiliary update: skip that update (counted, warned "
        "once) or raise FloatingPointError",
    )
    seed: int | None = Field(None, description="seed of the optimizer's own generator (sampled Fisher)")

    @field_validator("aux_betas")
    @classmethod
    def _betas_in_unit_interval(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in betas):
            raise ValueError("both betas must lie in [0, 1)")
        return betas

    @field_validator("aux_every")
    @classmethod
    def _valid_schedule(cls, aux_every: int | tuple[tuple[int, int], ...]) -> int | tuple[tuple[int, int], ...]:
        phases = ((0, aux_every),) if isinstance(aux_every, int) else aux_every
        if not phases or phases[0][0] != 0:
            raise ValueError("a schedule needs phases (first step, period), the first one starting at step 0")
        if any(later <= earlier for (earlier, _), (later, _) in zip(phases, phases[1:])):
            raise ValueError("the phases' first steps must increase")
        if any(period < 0 for _, period in phases):
            raise ValueError("periods must be >= 0 (0: no auxiliary updates)")
        return aux_every

    @field_validator("fisher_method")
    @classmethod
    def _registered_method(cls, name: str) -> str:
        if name not in FISHER_METHODS:
            raise ValueError(f"unknown Fisher method; known: {', '.join(FISHER_METHODS.names())}")
        return name

    @model_validator(mode="after")
    def _one_initial_scale(self) -> FishLegConfig:
        if self.sgd_lr is not None and self.init_scale is not None:
            raise ValueError("give at most one of sgd_lr and init_scale")
        return self

    def aux_phase(self, step: int) -> tuple[int, int]:
        """(first step, period) of the auxiliary-update phase that holds ``step``."""
        if isinstance(self.aux_every, int):
            return 0, self.aux_every
        return [phase for phase in self.aux_every if phase[0] <= step][-1]

    def aux_due(self, step: int) -> bool:
        """Whether step ``step`` (counted from 0) makes an auxiliary update: its phase has a period k > 0 and
        k divides the steps since the phase began."""
        first, period = self.aux_phase(step)
        return period > 0 and (step - first) % period == 0

    @property
    def q_init_scale(self) -> float:
        """Q₀ = (sgd_lr / lr)·I, or init_scale·I, or I."""
        if self.sgd_lr is not None:
            return self.sgd_lr / self.lr
        return self.init_scale if self.init_scale is not None else 1.0


def sgd_lr_from_torch(lr: float, momentum: float) -> float:
    """The ``sgd_lr`` with which FishLeg starts out as ``torch.optim.SGD(lr=lr, momentum=momentum)``.

    torch's buffer b ← βb + g (from b = g) is FishLeg's m ← βm + (1 − β)g (from 0) divided by 1 − β, so
    θ ← θ − lr·b is FishLeg's step θ ← θ − sgd_lr·m with sgd_lr = lr / (1 − β)."""
    check_number("lr", lr, 0.0)
    check_number("momentum", momentum, 0.0, inclusive=True, below=1.0)
    return lr / (1.0 - momentum)
