"""The KFAC reference: the damped Kronecker approximation of the Fisher, inverted exactly.

For a Linear block X = [W | b] of shape (out, in + 1), the per-example gradient is δ āᵀ, with ā the layer
input with a 1 appended and δ = ∂ℓ/∂s the gradient of the per-example NLL, at model-sampled targets, in
the layer's pre-activation output s. KFAC approximates the block of F = E[vec(δāᵀ) vec(δāᵀ)ᵀ] by
G ⊗ A (row-major vec: X ↦ G X A), G = E[δ δᵀ], A = E[ā āᵀ], and inverts the damped approximation through
the eigendecompositions G = U_G diag(λ_G) U_Gᵀ, A = U_A diag(λ_A) U_Aᵀ:

    (G ⊗ A + γ I)⁻¹ X = U_G [(U_Gᵀ X U_A) / (λ_G λ_Aᵀ + γ)] U_Aᵀ   (elementwise division).
"""

from __future__ import annotations

import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.kfac import KroneckerFactors
from fishleg_core.param_vectors import ParamDict


def non_linear(blocks: list[fl.Block]) -> list[str]:
    """The names of the blocks that are not nn.Linear layers."""
    return [block.name for block in blocks if not issubclass(block.module_type, nn.Linear)]


def linear_blocks(model: nn.Module) -> list[fl.Block]:
    """The model's parameter blocks, which must all be nn.Linear layers (the layers KFAC is defined for)."""
    blocks = fl.map_blocks(model, strict=True)
    others = non_linear(blocks)
    if others:
        raise ValueError(f"the KFAC reference handles nn.Linear layers only; not {', '.join(others)}")
    return blocks


class KFACInverse:
    """Q_KFAC = ⊕_blocks (G ⊗ A + γ I)⁻¹, applied exactly through the factors' eigendecompositions; a
    callable {name: tensor} → {name: tensor} like ``ModelQ``."""

    def __init__(self, model: nn.Module, factors: dict[str, KroneckerFactors], damping: float) -> None:
        self.blocks = linear_blocks(model)
        self.damping = damping
        self.eigen = {}
        for block in self.blocks:
            lam_g, U_g = torch.linalg.eigh(factors[block.name].G)
            lam_a, U_a = torch.linalg.eigh(factors[block.name].A)
            denominator = lam_g.clamp_min(0)[:, None] * lam_a.clamp_min(0)[None, :] + damping
            self.eigen[block.name] = (U_g, U_a, denominator)

    @property
    def n_params(self) -> int:
        """Free entries of the symmetric factors: Σ_blocks out(out+1)/2 + in(in+1)/2 (as many as ``kron``)."""
        return sum(r * (r + 1) // 2 + c * (c + 1) // 2 for r, c in (block.shape for block in self.blocks))

    def __call__(self, vector: ParamDict) -> ParamDict:
        result: ParamDict = {}
        for block in self.blocks:
            U_g, U_a, denominator = self.eigen[block.name]
            X = block.layout.pack([vector[name] for name in block.param_names])
            Y = U_g @ ((U_g.mT @ X @ U_a) / denominator) @ U_a.mT
            result.update(zip(block.param_names, block.layout.unpack(Y)))
        return {name: result[name] for name in vector}
