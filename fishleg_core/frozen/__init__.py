"""Q on a frozen model: fitting it by minimising the auxiliary loss over directions u (``fit_q``) and
measuring it exactly on fixed probe directions (``ProbeEvaluator``)."""

from fishleg_core.frozen.evaluation import ProbeEvaluator, QEvaluation
from fishleg_core.frozen.fitting import Direction, FitResult, fit_q, normalized_gradients

__all__ = ["Direction", "FitResult", "ProbeEvaluator", "QEvaluation", "fit_q", "normalized_gradients"]
