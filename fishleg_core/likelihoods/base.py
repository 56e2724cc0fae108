"""The Likelihood contract: p(y | network outputs) with its NLL, sampler and output-space Hessian."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from fishleg_core._validation import check_generator


class Likelihood(ABC):
    """A likelihood p(y | f) of targets y given network outputs f of shape ``(B, ...)``.

    The per-example negative log-likelihood ℓ = −log p(y_b | f_b) is summed over all output dimensions;
    batches are reduced by the mean over dim 0. Subclasses implement three hooks on checked arguments:

    - ``_nll_terms(outputs, targets)``: NLL terms whose sum over everything is Σ_b ℓ_b;
    - ``_sample(outputs, generator)``: y ~ p(y | f);
    - ``_hessian_vp(outputs, vector)``: H_b v_b, H_b = ∂²ℓ_b / ∂f_b² (independent of y here).

    Optional: ``target_shape(outputs)`` and ``_check_target_values(outputs, targets)`` restrict the targets;
    the class attributes ``min_output_dims`` and ``output_layout`` describe the outputs accepted.
    """

    min_output_dims: int = 1
    output_layout: str = "(B, ...)"

    def nll(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """L = (1/B) Σ_b ℓ_b(outputs_b, targets_b): the batch mean of the per-example NLL."""
        self._check_outputs(outputs)
        self._check_targets(outputs, targets)
        return self._nll_terms(outputs, targets).sum() / outputs.shape[0]

    @torch.no_grad()
    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Targets y ~ p(y | outputs), drawn from ``generator`` (the global RNG if None); no graph."""
        self._check_outputs(outputs)
        check_generator(generator)
        return self._sample(outputs.detach(), generator)

    def hessian_vp(self, outputs: Tensor, vector: Tensor) -> Tensor:
        """Per-example H_b v_b with H_b the Hessian of ℓ_b in the outputs; ``vector`` shaped like ``outputs``."""
        self._check_outputs(outputs)
        if not isinstance(vector, Tensor) or vector.shape != outputs.shape:
            got = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
            raise ValueError(
                f"{self!r}.hessian_vp: vector must have the outputs' shape {tuple(outputs.shape)}; got {got}"
            )
        return self._hessian_vp(outputs, vector)

    def target_shape(self, outputs: Tensor) -> torch.Size:
        """The shape targets must have for these outputs (the outputs' shape unless overridden)."""
        return outputs.shape

    def _check_target_values(self, outputs: Tensor, targets: Tensor) -> None:  # noqa: B027 - optional hook
        """Raise for targets of a dtype or with values outside the support (no restriction by default)."""

    @abstractmethod
    def _nll_terms(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """NLL terms summing to Σ_b ℓ_b, with arguments already checked."""

    @abstractmethod
    def _sample(self, outputs: Tensor, generator: torch.Generator | None) -> Tensor:
        """y ~ p(y | outputs) for checked, detached outputs."""

    @abstractmethod
    def _hessian_vp(self, outputs: Tensor, vector: Tensor) -> Tensor:
        """H_b v_b for checked arguments."""

    def _check_outputs(self, outputs: Tensor) -> None:
        if not isinstance(outputs, Tensor) or not outputs.is_floating_point():
            got = f"dtype {outputs.dtype}" if isinstance(outputs, Tensor) else type(outputs).__name__
            raise TypeError(f"{self!r}: outputs must be a floating-point tensor; got {got}")
        if outputs.dim() < self.min_output_dims:
            raise ValueError(
                f"{self!r} needs outputs of shape {self.output_layout} (at least {self.min_output_dims} dims); "
                f"got shape {tuple(outputs.shape)}"
            )
        if outputs.shape[0] == 0:
            raise ValueError(f"{self!r}: outputs must hold at least one example; got shape {tuple(outputs.shape)}")

    def _check_targets(self, outputs: Tensor, targets: Tensor) -> None:
        if not isinstance(targets, Tensor):
            raise TypeError(f"{self!r}: targets must be a tensor; got {type(targets).__name__}")
        expected = self.target_shape(outputs)
        if targets.shape != expected:
            raise ValueError(
                f"{self!r}: targets of shape {tuple(targets.shape)} do not match outputs of shape "
                f"{tuple(outputs.shape)}; expected targets of shape {tuple(expected)}"
            )
        self._check_target_values(outputs, targets)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
