"""Public contract checkers for the extension points, for a researcher's own package as for this one's
suite; each raises ``AssertionError`` naming the check that failed:

- ``check_qform`` (a registered QForm) and ``check_checkpoint`` (a state dict);
- the coupled-form checks of ``fishleg_core.testing.coupled`` (``CoupledCase`` and its ``check_*`` functions);
- ``check_adapter`` (a layer adapter);
- ``check_likelihood`` (a likelihood);
- ``check_fisher_method`` (a Fisher-vector product method in ``FISHER_METHODS``);
- ``check_auxiliary_optimizer`` (an optimizer of λ in ``AUX_OPTIMIZERS``).
"""

from fishleg_core.testing import coupled
from fishleg_core.testing.adapters import check_adapter
from fishleg_core.testing.aux_optimizers import AUX_OPTIMIZER_CHECKS, check_auxiliary_optimizer
from fishleg_core.testing.coupled import CoupledCase
from fishleg_core.testing.fisher import check_fisher_method
from fishleg_core.testing.likelihoods import LIKELIHOOD_CHECKS, check_likelihood
from fishleg_core.testing.qforms import QFORM_CHECKS, check_checkpoint, check_qform

__all__ = [
    "AUX_OPTIMIZER_CHECKS",
    "LIKELIHOOD_CHECKS",
    "QFORM_CHECKS",
    "CoupledCase",
    "check_adapter",
    "check_auxiliary_optimizer",
    "check_checkpoint",
    "check_fisher_method",
    "check_likelihood",
    "check_qform",
    "coupled",
]
