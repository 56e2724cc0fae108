"""Layer adapters: which parameters of a module form one block, and its default QForm (docs/design.md §6).

An adapter is registered for a module type and found along the class hierarchy, so a subclass of
``nn.Linear`` uses the Linear adapter unless it has one of its own:

    @LAYER_ADAPTERS.register(MyLayer)
    class MyLayerAdapter(LayerAdapter):
        parameter_names = ("kernel", "offset")
        default_form = "kron"

        def layout(self, module, shapes):
            return BlockLayout(shapes, size=module.out_features, axis=1)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from fishleg_core.layers.layout import BlockLayout
from fishleg_core.registry import Registry

LAYER_ADAPTERS: Registry = Registry("layer adapter")


class LayerAdapter:
    """Base adapter: the module's own ``parameter_names`` that exist, side by side with one row per
    output unit (the first parameter's leading dimension)."""

    parameter_names: tuple[str, ...] = ("weight", "bias")
    default_form: str = "kron"

    def layout(self, module: nn.Module, shapes: Sequence[torch.Size]) -> BlockLayout:
        """The block layout of the present parameters, whose shapes are ``shapes`` (in name order)."""
        return BlockLayout(tuple(shapes), size=shapes[0][0], axis=1)


def adapter_for(module: nn.Module) -> LayerAdapter | None:
    """The adapter registered for the closest class in the module's MRO, or None."""
    for cls in type(module).__mro__:
        if cls in LAYER_ADAPTERS:
            return LAYER_ADAPTERS.build(cls)
    return None


@LAYER_ADAPTERS.register(nn.Linear)
@LAYER_ADAPTERS.register(nn.Bilinear)
@LAYER_ADAPTERS.register(nn.Conv1d)
@LAYER_ADAPTERS.register(nn.Conv2d)
@LAYER_ADAPTERS.register(nn.Conv3d)
class OutputRowsAdapter(LayerAdapter):
    """Linear, bilinear and convolution layers: [W.reshape(out, −1) | b] of shape (out, fan_in (+1))."""


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


class ParameterAdapter(LayerAdapter):
    """Fallback for any other trainable parameter: its own (numel, 1) block with a diagonal form."""

    default_form = "diagonal"

    def layout(self, module: nn.Module, shapes: Sequence[torch.Size]) -> BlockLayout:
        return BlockLayout(tuple(shapes), size=shapes[0].numel(), axis=1)
