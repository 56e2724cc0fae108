"""fishleg_core: FishLeg natural-gradient optimisation with learned inverse-Fisher models (QForms)."""

from fishleg_core._validation import InvalidConfigError
from fishleg_core._validation import validate as validate_config
from fishleg_core.auxiliary import (
    AUX_OPTIMIZERS,
    AuxiliaryLoss,
    MultiplicativeFactorSteps,
    add_weight_decay,
    auxiliary_loss,
    build_aux_optimizer,
    triangular_factor_groups,
)
from fishleg_core.coupled import COUPLED_FORMS, BlockQ, CoupledQ, TridiagKronQ
from fishleg_core.fisher import FISHER_METHODS, ModelCall, fisher_vp
from fishleg_core.frozen import FitResult, ProbeEvaluator, QEvaluation, fit_q, normalized_gradients
from fishleg_core.kfac import KroneckerFactors, kfac_not_started, kfac_start, kfac_warm_start, kronecker_factors
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
from fishleg_core.likelihoods import LIKELIHOODS, GaussianLearnedSigma, Likelihood, ParametricLikelihood
from fishleg_core.model_q import ModelQ, build_model_q
from fishleg_core.optim.config import sgd_lr_from_torch
from fishleg_core.optim.fishleg import FishLeg, FishLegConfig
from fishleg_core.optim.log import diagnostic_scalars, log_diagnostics
from fishleg_core.param_vectors import ParamDict
from fishleg_core.plugins import PluginError, load_plugins
from fishleg_core.qforms import QFORMS, QForm
from fishleg_core.registry import Registry, UnknownNameError

__all__ = [
    # The optimizer
    "FishLeg",
    "FishLegConfig",
    "sgd_lr_from_torch",
    "log_diagnostics",
    "diagnostic_scalars",
    # Q over one block: QForms and their registry
    "QForm",
    "QFORMS",
    # Q over the whole model, and coupled forms (Q over several blocks together)
    "ModelQ",
    "build_model_q",
    "ParamDict",
    "CoupledQ",
    "COUPLED_FORMS",
    "BlockQ",
    "TridiagKronQ",
    # Likelihoods
    "Likelihood",
    "LIKELIHOODS",
    "ParametricLikelihood",
    "GaussianLearnedSigma",
    # Fisher-vector products
    "fisher_vp",
    "ModelCall",
    "FISHER_METHODS",
    # Layers and parameter blocks
    "Block",
    "BlockLayout",
    "LayerAdapter",
    "LAYER_ADAPTERS",
    "UnsupportedLayerError",
    "choose_forms",
    "joint_block",
    "map_blocks",
    # KFAC: Kronecker factors and the damped-KFAC start of Q
    "KroneckerFactors",
    "kronecker_factors",
    "kfac_start",
    "kfac_not_started",
    "kfac_warm_start",
    # The auxiliary side: the auxiliary loss and λ's optimizers
    "AuxiliaryLoss",
    "auxiliary_loss",
    "AUX_OPTIMIZERS",
    "build_aux_optimizer",
    "add_weight_decay",
    "MultiplicativeFactorSteps",
    "triangular_factor_groups",
    # Fitting and evaluating Q on a frozen model
    "fit_q",
    "FitResult",
    "normalized_gradients",
    "ProbeEvaluator",
    "QEvaluation",
    # Registries, plugins and errors
    "Registry",
    "UnknownNameError",
    "load_plugins",
    "PluginError",
    "InvalidConfigError",
    "validate_config",
]
