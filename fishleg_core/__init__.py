"""fishleg_core: FishLeg natural-gradient optimisation with learned inverse-Fisher models (QForms)."""

from fishleg_core.aux_optimizers import AUX_OPTIMIZERS, build_aux_optimizer
from fishleg_core.auxiliary import AuxiliaryLoss, auxiliary_loss
from fishleg_core.checks import InvalidConfigError
from fishleg_core.evaluation import ProbeEvaluator, QEvaluation
from fishleg_core.fisher import FISHER_METHODS, ModelCall, fisher_vp
from fishleg_core.fitting import FitResult, fit_q, normalized_gradients
from fishleg_core.groups import QGROUPS, BlockQ, QGroup, TridiagKronQ
from fishleg_core.kfac_start import KroneckerFactors, kfac_start, kfac_warm_start, kronecker_factors
from fishleg_core.layers import (
    LAYER_ADAPTERS,
    Block,
    BlockLayout,
    LayerAdapter,
    UnsupportedLayerError,
    choose_forms,
    joint_block,
    map_blocks,
)
from fishleg_core.likelihoods import LIKELIHOODS, Likelihood
from fishleg_core.model_q import ModelQ, build_model_q
from fishleg_core.multiplicative import MultiplicativeFactorSteps, triangular_factor_groups
from fishleg_core.optim.config import FishLegConfig, sgd_lr_from_torch
from fishleg_core.optim.fishleg import FishLeg
from fishleg_core.optim.log import diagnostic_scalars, log_diagnostics
from fishleg_core.qforms import QFORMS, QForm
from fishleg_core.registry import Registry, UnknownNameError

__all__ = [
    "AUX_OPTIMIZERS",
    "AuxiliaryLoss",
    "Block",
    "BlockLayout",
    "BlockQ",
    "FISHER_METHODS",
    "FishLeg",
    "FishLegConfig",
    "FitResult",
    "InvalidConfigError",
    "KroneckerFactors",
    "LAYER_ADAPTERS",
    "LIKELIHOODS",
    "LayerAdapter",
    "Likelihood",
    "ModelCall",
    "ModelQ",
    "MultiplicativeFactorSteps",
    "ProbeEvaluator",
    "QEvaluation",
    "QFORMS",
    "QForm",
    "QGROUPS",
    "QGroup",
    "TridiagKronQ",
    "Registry",
    "UnknownNameError",
    "UnsupportedLayerError",
    "auxiliary_loss",
    "build_aux_optimizer",
    "build_model_q",
    "choose_forms",
    "diagnostic_scalars",
    "fisher_vp",
    "fit_q",
    "joint_block",
    "kfac_start",
    "kfac_warm_start",
    "kronecker_factors",
    "log_diagnostics",
    "map_blocks",
    "normalized_gradients",
    "sgd_lr_from_torch",
    "triangular_factor_groups",
]
