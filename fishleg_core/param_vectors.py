"""Vectors in parameter space, ``ParamDict = {parameter name: tensor}``: what ``ModelQ``, ``fisher_vp``,
``auxiliary_loss`` and ``fit_q`` take and return, and the few operations on them that code using the library
needs: ⟨a, b⟩ (``dot``), ‖a‖ (``norm``), c·a (``scale``) and α·x + y (``axpy``)."""

from fishleg_core._vectors import ParamDict, axpy, dot, norm, scale

__all__ = ["ParamDict", "axpy", "dot", "norm", "scale"]
