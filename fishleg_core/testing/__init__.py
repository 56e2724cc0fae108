"""Public contract checkers for the extension points, for a researcher's own package as for this one's
suite: ``check_qform`` (a registered QForm), ``check_adapter`` (a layer adapter), ``check_checkpoint`` (a state
dict), and the coupled-form
checks of ``fishleg_core.testing.coupled`` (``CoupledCase`` and its ``check_*`` functions)."""

from fishleg_core.testing import coupled
from fishleg_core.testing.adapters import check_adapter
from fishleg_core.testing.coupled import CoupledCase
from fishleg_core.testing.qforms import QFORM_CHECKS, check_checkpoint, check_qform

__all__ = ["QFORM_CHECKS", "CoupledCase", "check_adapter", "check_checkpoint", "check_qform", "coupled"]
