"""fishleg_core: FishLeg natural-gradient optimisation with learned inverse-Fisher models (QForms)."""

from fishleg_core.qforms import QFORMS, QForm
from fishleg_core.registry import Registry, UnknownNameError

__all__ = ["QFORMS", "QForm", "Registry", "UnknownNameError"]
