"""The auxiliary side of FishLeg, λ's side: the auxiliary loss A(λ; u), λ's optimizers (``AUX_OPTIMIZERS``,
including ``"multiplicative"``), the auxiliary update of the optimizer, the auxiliary data stream, and the
low-rank factors of the directions u that make Q·u cheap."""

from fishleg_core.auxiliary.data import CyclicBatches, split_batch
from fishleg_core.auxiliary.gradient_factors import GradientFactors
from fishleg_core.auxiliary.loss import AuxiliaryLoss, DampedFisher, auxiliary_loss
from fishleg_core.auxiliary.multiplicative import MultiplicativeFactorSteps, triangular_factor_groups
from fishleg_core.auxiliary.optimizers import AUX_OPTIMIZERS, AuxiliaryAdam, build_aux_optimizer, split_spec
from fishleg_core.auxiliary.update import AuxiliaryUpdate

__all__ = [
    "AUX_OPTIMIZERS",
    "AuxiliaryAdam",
    "AuxiliaryLoss",
    "AuxiliaryUpdate",
    "CyclicBatches",
    "DampedFisher",
    "GradientFactors",
    "MultiplicativeFactorSteps",
    "auxiliary_loss",
    "build_aux_optimizer",
    "split_batch",
    "split_spec",
    "triangular_factor_groups",
]
