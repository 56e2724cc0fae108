"""The KFAC reference: the damped Kronecker approximation of the Fisher, inverted exactly.

For a Linear block X = [W | b] of shape (out, in + 1), the per-example gradient is δ āᵀ, with ā the layer
input with a 1 appended and δ = ∂ℓ/∂s the gradient of the per-example NLL, at model-sampled targets, in
the layer's pre-activation output s. KFAC approximates the block of F = E[vec(δāᵀ) vec(δāᵀ)ᵀ] by
G ⊗ A (row-major vec: X ↦ G X A), G = E[δ δᵀ], A = E[ā āᵀ], and inverts the damped approximation through
the eigendecompositions G = U_G diag(λ_G) U_Gᵀ, A = U_A diag(λ_A) U_Aᵀ:

    (G ⊗ A + γ I)⁻¹ X = U_G [(U_Gᵀ X U_A) / (λ_G λ_Aᵀ + γ)] U_Aᵀ   (elementwise division).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import fishleg_core as fl
from fishleg_core.vectors import ParamDict


@dataclass(frozen=True)
class KroneckerFactors:
    """G (out × out) and A (in(+1) × in(+1)) of one Linear block."""

    G: Tensor
    A: Tensor


def linear_blocks(model: nn.Module) -> list[fl.Block]:
    """The model's parameter blocks, which must all be nn.Linear layers (the layers KFAC is defined for)."""
    blocks = fl.map_blocks(model, strict=True)
    others = [block.name for block in blocks if not issubclass(block.module_type, nn.Linear)]
    if others:
        raise ValueError(f"the KFAC reference handles nn.Linear layers only; not {', '.join(others)}")
    return blocks


def kronecker_factors(
    model: nn.Module,
    likelihood: fl.Likelihood,
    inputs: Tensor,
    samples: int,
    generator: torch.Generator,
    chunk_size: int = 1000,
) -> dict[str, KroneckerFactors]:
    """A = mean_x ā āᵀ and G = mean_{x, ŷ} δ δᵀ per Linear block (keyed by block name), over ``inputs`` (a
    batch of examples, layers seeing 2-D inputs) in chunks, with ``samples`` targets ŷ ~ p(y | x, θ) per
    input drawn from ``generator`` (chunk by chunk, then sample by sample)."""
    modules = {block.name: model.get_submodule(block.name) for block in linear_blocks(model)}
    G_sum: dict[str, Tensor] = {}
    A_sum: dict[str, Tensor] = {}
    for chunk in torch.split(inputs, chunk_size):
        layer_inputs, layer_outputs, outputs = _record(model, modules, chunk)
        for name, a in layer_inputs.items():
            a_bar = torch.cat([a, torch.ones_like(a[:, :1])], 1) if modules[name].bias is not None else a
            A_sum[name] = A_sum.get(name, 0) + a_bar.mT @ a_bar
        for _ in range(samples):
            targets = likelihood.sample(outputs, generator)
            total_nll = likelihood.nll(outputs, targets) * len(chunk)  # Σ_b ℓ_b: its gradient in s_b is δ_b
            deltas = torch.autograd.grad(total_nll, list(layer_outputs.values()), retain_graph=True)
            for name, delta in zip(layer_outputs, deltas):
                G_sum[name] = G_sum.get(name, 0) + delta.mT @ delta
    n = len(inputs)
    return {name: KroneckerFactors(G=G_sum[name] / (n * samples), A=A_sum[name] / n) for name in modules}


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


def _record(
    model: nn.Module, modules: dict[str, nn.Module], inputs: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """One forward pass: each Linear module's input (detached) and output (on the tape), and the model's output."""
    layer_inputs: dict[str, Tensor] = {}
    layer_outputs: dict[str, Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            layer_inputs[name] = args[0].detach()
            layer_outputs[name] = output

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.enable_grad():
            outputs = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return layer_inputs, layer_outputs, outputs
