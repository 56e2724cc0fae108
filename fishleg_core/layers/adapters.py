"""Layer adapters: which parameters of a module form which blocks, their default QForm, and (optionally) the
low-rank factors of the module's minibatch gradient (docs/design.md §6).

An adapter is registered for a module type and found along the class hierarchy, so a subclass of
``nn.Linear`` uses the Linear adapter unless it has one of its own:

    @LAYER_ADAPTERS.register(MyLayer)
    class MyLayerAdapter(LayerAdapter):
        parameter_names = ("kernel", "offset")
        default_form = "kron"

        def layout(self, module, shapes):
            return BlockLayout(shapes, size=module.out_features, axis=1)

A module may form several blocks (``blocks``: an RNN's weight matrices), and a block's rows may fall into
``row_parts`` equal bands with a form each (q/k/v projections, convolution groups).

An adapter for a class of an optional package registers under the class's qualified name, so that the
package is never imported here: ``@LAYER_ADAPTERS.register("transformers.pytorch_utils.Conv1D")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from fishleg_core.layers.layout import BlockLayout
from fishleg_core.registry import Registry

LAYER_ADAPTERS: Registry = Registry("layer adapter")


class LayerAdapter:
    """Base adapter: the module's own ``parameter_names`` that exist, side by side with one row per
    output unit (the first parameter's leading dimension), in one block named after the module."""

    parameter_names: tuple[str, ...] = ("weight", "bias")
    default_form: str = "kron"

    def blocks(self, module: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
        """(name suffix, parameter attribute names) of each block; the first name defines the block (no
        block when it is missing or frozen), and the block is named module name + suffix."""
        return [("", self.parameter_names)]

    def layout(self, module: nn.Module, shapes: Sequence[torch.Size]) -> BlockLayout:
        """The block layout of the present parameters, whose shapes are ``shapes`` (in name order)."""
        return BlockLayout(tuple(shapes), size=shapes[0][0], axis=1)

    def row_parts(self, module: nn.Module) -> int:
        """Into how many equal bands of rows each block falls, each band with a form of its own."""
        return 1

    def captures_factors(self, module: nn.Module) -> bool:
        """Whether ``factor_columns``/``factor_rows`` give the gradient of the module's block as
        Δᵀ [A | 1] (the 1 when the block has a bias), for the low-rank Q·g."""
        return False

    def factor_columns(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """A of shape (N, cols without the bias column) from the module's first input."""
        raise NotImplementedError(f"{type(self).__name__} captures no gradient factors")

    def factor_rows(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        """Δ of shape (N, rows) from the gradient of the loss in the module's output."""
        raise NotImplementedError(f"{type(self).__name__} captures no gradient factors")


def adapter_for(module: nn.Module) -> LayerAdapter | None:
    """The adapter registered for the closest class in the module's MRO, or None. A class matches its
    registration by type, or by its qualified name ``"package.module.Class"`` (how adapters for optional
    packages register without importing them)."""
    for cls in type(module).__mro__:
        if cls in LAYER_ADAPTERS:
            return LAYER_ADAPTERS.build(cls)
        qualified = f"{cls.__module__}.{cls.__qualname__}"
        if qualified in LAYER_ADAPTERS:
            return LAYER_ADAPTERS.build(qualified)
    return None


@LAYER_ADAPTERS.register(nn.Bilinear)
class OutputRowsAdapter(LayerAdapter):
    """Bilinear layers: [W.reshape(out, −1) | b] of shape (out, in1·in2 (+1))."""


@LAYER_ADAPTERS.register(nn.Linear)
class LinearAdapter(LayerAdapter):
    """Linear layers: [W | b] of shape (out, in (+1)); gradient Δᵀ[A | 1] with A the inputs (all leading
    dimensions flattened) and Δ the output gradients."""

    def captures_factors(self, module: nn.Module) -> bool:
        return True

    def factor_columns(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return rearrange(inputs, "... inputs -> (...) inputs", inputs=cast(nn.Linear, module).in_features)

    def factor_rows(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        return rearrange(output_grad, "... outputs -> (...) outputs", outputs=cast(nn.Linear, module).out_features)


@LAYER_ADAPTERS.register(_ConvNd)
class ConvAdapter(LayerAdapter):
    """Convolutions: [W.reshape(out, −1) | b] of shape (out, in/groups·kernel (+1)), one band of out/groups
    rows per group. The gradient is Σ over examples and positions of δ aᵀ, a the unfolded input patch:
    Δᵀ[A | 1] with N·positions rows (captured for 1-d and 2-d, ungrouped, zero-padded convolutions)."""

    def row_parts(self, module: nn.Module) -> int:
        return cast(_ConvNd, module).groups

    def captures_factors(self, module: nn.Module) -> bool:
        conv = cast(_ConvNd, module)
        return (
            conv.groups == 1
            and len(conv.kernel_size) <= 2
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
        )

    def factor_columns(self, module: nn.Module, inputs: Tensor) -> Tensor:
        conv = cast(_ConvNd, module)
        spatial = len(conv.kernel_size)
        x = inputs if inputs.dim() == spatial + 2 else inputs.unsqueeze(0)
        pad = (1,) * (2 - spatial)  # a 1-d convolution as a 2-d one of height 1
        if spatial == 1:
            x = rearrange(x, "batch channels length -> batch channels 1 length")
        padding = cast(tuple[int, ...], conv.padding)  # not a string: see captures_factors
        patches = F.unfold(
            x,
            pad + conv.kernel_size,
            dilation=pad + conv.dilation,
            padding=(0,) * len(pad) + padding,
            stride=pad + conv.stride,
        )
        return rearrange(patches, "batch patch positions -> (batch positions) patch")

    def factor_rows(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        conv = cast(_ConvNd, module)
        grad = output_grad if output_grad.dim() == len(conv.kernel_size) + 2 else output_grad.unsqueeze(0)
        return rearrange(grad, "batch channels ... -> (batch ...) channels", channels=conv.out_channels)


@LAYER_ADAPTERS.register(_ConvTransposeNd)
class ConvTransposeAdapter(LayerAdapter):
    """Transposed convolutions, W of shape (in, out/groups, *kernel): rows = output channels,
    [W viewed (out, in/groups·kernel) | b], one band of out/groups rows per group."""

    def layout(self, module: nn.Module, shapes: Sequence[torch.Size]) -> BlockLayout:
        conv = cast(_ConvTransposeNd, module)
        transposed = (conv.groups,) + (0,) * (len(shapes) - 1)
        return BlockLayout(tuple(shapes), size=conv.out_channels, axis=1, transposed=transposed)

    def row_parts(self, module: nn.Module) -> int:
        return cast(_ConvTransposeNd, module).groups


@LAYER_ADAPTERS.register(nn.MultiheadAttention)
class AttentionAdapter(LayerAdapter):
    """Attention input projections: [in_proj_weight | in_proj_bias] of shape (3E, E (+1)) with one band per
    projection (q, k, v); with kdim or vdim ≠ E, one block per projection weight (``:q``, ``:k``, ``:v``),
    and the bias left to its own diagonal block. ``out_proj`` is a Linear layer with its own block."""

    def blocks(self, module: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
        if module._qkv_same_embed_dim:
            return [("", ("in_proj_weight", "in_proj_bias"))]
        return [(f":{p}", (f"{p}_proj_weight",)) for p in "qkv"]

    def row_parts(self, module: nn.Module) -> int:
        return 3 if module._qkv_same_embed_dim else 1


@LAYER_ADAPTERS.register(nn.RNNBase)
class RecurrentAdapter(LayerAdapter):
    """RNN, GRU and LSTM layers: one block per weight matrix with its bias, e.g. ``rnn:ih_l0`` =
    [weight_ih_l0 | bias_ih_l0] of shape (gates·hidden, input (+1)), ``rnn:hh_l0_reverse``, ``rnn:hr_l0``."""

    def blocks(self, module: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
        names = cast(nn.RNNBase, module)._flat_weights_names
        tails = [name.removeprefix("weight_") for name in names if name.startswith("weight_")]
        return [(f":{tail}", (f"weight_{tail}", f"bias_{tail}")) for tail in tails]


@LAYER_ADAPTERS.register(nn.Embedding)
class EmbeddingAdapter(LayerAdapter):
    """Embedding tables: W of shape (num_embeddings, dim)."""

    parameter_names = ("weight",)
    default_form = "diagonal"


@LAYER_ADAPTERS.register(nn.LayerNorm)
@LAYER_ADAPTERS.register(nn.RMSNorm)
@LAYER_ADAPTERS.register(nn.GroupNorm)
@LAYER_ADAPTERS.register(_NormBase)  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm (affine)
class AffineNormAdapter(LayerAdapter):
    """Affine normalisation layers: [weight; bias] stacked, of shape (2, C) (or (1, C) without bias)."""

    default_form = "diagonal"

    def layout(self, module: nn.Module, shapes: Sequence[torch.Size]) -> BlockLayout:
        return BlockLayout(tuple(shapes), size=shapes[0].numel(), axis=0)


@LAYER_ADAPTERS.register("transformers.pytorch_utils.Conv1D")
class TransposedLinearAdapter(LayerAdapter):
    """Hugging Face's ``Conv1D`` (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``): y = x W + b with W of shape
    (in, out), a linear layer with a transposed weight. Block [Wᵀ | b] of shape (out, in (+1)), gradient
    Δᵀ[A | 1] as for ``nn.Linear``. A layer with three times as many outputs as inputs is GPT-2's fused
    q, k, v projection ``c_attn`` and gets one band per projection (``bands=`` of ``map_blocks`` overrides)."""

    def layout(self, module: nn.Module, shapes: Sequence[torch.Size]) -> BlockLayout:
        transposed = (1,) + (0,) * (len(shapes) - 1)
        return BlockLayout(tuple(shapes), size=shapes[0][1], axis=1, transposed=transposed)

    def row_parts(self, module: nn.Module) -> int:
        inputs, outputs = _weight_shape(module)
        return 3 if outputs == 3 * inputs else 1

    def captures_factors(self, module: nn.Module) -> bool:
        return True

    def factor_columns(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return inputs.reshape(-1, _weight_shape(module)[0])

    def factor_rows(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        return output_grad.reshape(-1, _weight_shape(module)[1])


def _weight_shape(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a transposed linear layer's weight."""
    rows, cols = cast(Tensor, module.weight).shape
    return rows, cols


class ParameterAdapter(LayerAdapter):
    """Fallback for any other trainable parameter: its own (numel, 1) block with a diagonal form."""

    default_form = "diagonal"

    def layout(self, module: nn.Module, shapes: Sequence[torch.Size]) -> BlockLayout:
        return BlockLayout(tuple(shapes), size=shapes[0].numel(), axis=1)
