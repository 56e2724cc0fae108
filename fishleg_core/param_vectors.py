"""Vectors in parameter space, ``ParamDict = {parameter name: tensor}``: what ``ModelQ``, ``fisher_vp``,
``auxiliary_loss`` and ``fit_q`` take and return, and the few operations on them that code using the library
needs: ⟨a, b⟩ (``dot``), ‖a‖ (``norm``), c·a (``scale``), α·x + y (``axpy``), the flat vector for a dense
check (``flatten``, ``unflatten``), the model's trainable parameters by name (``trainable_parameters``) and a
finiteness check (``all_finite``)."""

from fishleg_core._vectors import (
    ParamDict,
    all_finite,
    axpy,
    dot,
    flatten,
    norm,
    scale,
    trainable_parameters,
    unflatten,
)

__all__ = ["ParamDict", "all_finite", "axpy", "dot", "flatten", "norm", "scale", "trainable_parameters", "unflatten"]
