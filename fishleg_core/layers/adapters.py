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

An adapter may also say how KFAC sees a forward pass of its module (``takes_kfac``, ``kfac_capture``): per band,
Σ ā āᵀ over the rows of the input side (examples × positions) and the tensors whose gradients give δ, so that
``fishleg_core.kfac.kronecker_factors`` builds the damped-KFAC start of any such layer.

An adapter for a class of an optional package registers under the class's qualified name, so that the
package is never imported here: ``@LAYER_ADAPTERS.register("transformers.pytorch_utils.Conv1D")``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from fishleg_core.layers.layout import BlockLayout
from fishleg_core.registry import Registry

LAYER_ADAPTERS: Registry = Registry("layer adapter")


@dataclass
class KFACCapture:
    """One forward pass of a module as KFAC sees one of its blocks, whose per-row gradient is δ āᵀ (rows
    being examples × positions: Grosse & Martens 2016 for convolutions, patches as inputs).

    Attributes:
        suffix: the block's name after the module's ("" for its own block, ".out_proj" for a submodule's).
        input_grams: per band of the block's rows, Σ_rows ā āᵀ, ā the input vector (a 1 appended for a bias).
        rows: how many rows (examples × positions) the sums run over.
        outputs: tensors on the autograd tape whose gradients give δ.
        deltas: the gradients of ``outputs`` -> per band, δ as a (rows, band width) matrix.
        input_on_rows: the input factor acts on the block's rows (a lookup table, whose rows are indexed by
            the input), else on its columns (a layer whose rows are its outputs).
    """

    suffix: str
    input_grams: list[Tensor]
    rows: int
    outputs: tuple[Tensor, ...]
    deltas: Callable[[Sequence[Tensor]], list[Tensor]]
    input_on_rows: bool = False


def input_gram(a: Tensor, bias: bool) -> Tensor:
    """Σ_rows ā āᵀ for the rows ``a`` (N, d), ā = [a | 1] with a bias."""
    a_bar = torch.cat([a, torch.ones_like(a[:, :1])], 1) if bias else a
    return a_bar.mT @ a_bar


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

    def takes_kfac(self, module: nn.Module) -> bool:
        """Whether ``kfac_capture`` gives the KFAC factors of the module's blocks (default: no)."""
        return False

    def kfac_capture(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> tuple[Any, list[KFACCapture]]:
        """(the output for the rest of the forward pass, one ``KFACCapture`` per block) from one forward pass
        of ``module`` on ``args``/``kwargs`` that gave ``output``; called only where ``takes_kfac``."""
        raise NotImplementedError(f"{type(self).__name__} has no KFAC factors")


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

    def takes_kfac(self, module: nn.Module) -> bool:
        return True

    def kfac_capture(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> tuple[Any, list[KFACCapture]]:
        """ā the input (leading dimensions as rows) with a 1 for the bias, δ the output gradient."""
        a = self.factor_columns(module, args[0].detach())
        gram = input_gram(a, cast(nn.Linear, module).bias is not None)
        return output, [KFACCapture("", [gram], len(a), (output,), lambda grads: [self.factor_rows(module, grads[0])])]


def _banded_capture(module: nn.Module, patches: Tensor, output: Tensor, groups: int) -> KFACCapture:
    """A convolution's capture: band g (output channels g·out/g ...) has the patch columns of its input
    channel group and the output gradients of its channels, one row per example and output position."""
    conv = cast(_ConvNd, module)  # or a transposed convolution: the same attributes
    out_channels, spatial = conv.out_channels, len(conv.kernel_size)
    bias = conv.bias is not None
    width, band = patches.shape[1] // groups, out_channels // groups
    grams = [input_gram(patches[:, g * width : (g + 1) * width], bias) for g in range(groups)]

    def deltas(grads: Sequence[Tensor]) -> list[Tensor]:
        grad = grads[0] if grads[0].dim() == spatial + 2 else grads[0].unsqueeze(0)
        return list(torch.split(grad.movedim(1, -1).reshape(-1, out_channels), band, dim=1))

    return KFACCapture("", grams, len(patches), (output,), deltas)


def _unfolded(
    x: Tensor, kernel: tuple[int, ...], dilation: tuple[int, ...], padding: tuple[int, ...], stride: tuple[int, ...]
) -> Tensor:
    """The patches of a 1-d or 2-d input (N, C, *spatial) as rows (N·positions, C·kernel), by ``F.unfold``
    (a 1-d input as a 2-d one of height 1)."""
    pad = (1,) * (2 - len(kernel))
    if len(kernel) == 1:
        x = rearrange(x, "batch channels length -> batch channels 1 length")
    patches = F.unfold(x, pad + kernel, dilation=pad + dilation, padding=(0,) * len(pad) + padding, stride=pad + stride)
    return rearrange(patches, "batch patch positions -> (batch positions) patch")


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
        x = inputs if inputs.dim() == len(conv.kernel_size) + 2 else inputs.unsqueeze(0)
        padding = cast(tuple[int, ...], conv.padding)  # not a string: see captures_factors
        return _unfolded(x, conv.kernel_size, conv.dilation, padding, conv.stride)

    def factor_rows(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        conv = cast(_ConvNd, module)
        grad = output_grad if output_grad.dim() == len(conv.kernel_size) + 2 else output_grad.unsqueeze(0)
        return rearrange(grad, "batch channels ... -> (batch ...) channels", channels=conv.out_channels)

    def takes_kfac(self, module: nn.Module) -> bool:
        """1-d and 2-d, zero-padded convolutions with numeric padding, grouped or not."""
        conv = cast(_ConvNd, module)
        return len(conv.kernel_size) <= 2 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)

    def kfac_capture(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> tuple[Any, list[KFACCapture]]:
        """KFC: ā the unfolded input patch (with a 1 for the bias), δ the output gradient, per position."""
        conv = cast(_ConvNd, module)
        return output, [_banded_capture(module, self.factor_columns(module, args[0].detach()), output, conv.groups)]


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

    def takes_kfac(self, module: nn.Module) -> bool:
        """1-d and 2-d transposed convolutions with numeric padding."""
        conv = cast(_ConvTransposeNd, module)
        return len(conv.kernel_size) <= 2 and not isinstance(conv.padding, str)

    def kfac_capture(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> tuple[Any, list[KFACCapture]]:
        """A transposed convolution is a convolution of the input dilated by the stride (s − 1 zeros between
        entries), padded by d(k − 1) − p (plus ``output_padding`` at the end), with the kernel flipped: ā is
        that input's patch with its kernel axes reversed (so that its columns follow W's own kernel order)."""
        conv = cast(_ConvTransposeNd, module)
        spatial = len(conv.kernel_size)
        x = args[0].detach()
        x = x if x.dim() == spatial + 2 else x.unsqueeze(0)
        sizes = [(n - 1) * s + 1 for n, s in zip(x.shape[2:], conv.stride)]
        dilated = x.new_zeros(*x.shape[:2], *sizes)
        dilated[(..., *(slice(None, None, s) for s in conv.stride))] = x
        padding = cast(tuple[int, ...], conv.padding)
        pads: list[int] = []
        for k, d, p, extra in reversed(list(zip(conv.kernel_size, conv.dilation, padding, conv.output_padding))):
            pads += [d * (k - 1) - p, d * (k - 1) - p + extra]  # negative: F.pad crops
        dilated = F.pad(dilated, pads)
        ones = (1,) * spatial
        patches = _unfolded(dilated, conv.kernel_size, conv.dilation, (0,) * spatial, ones)
        flipped = patches.reshape(len(patches), x.shape[1], *conv.kernel_size).flip(list(range(2, 2 + spatial)))
        return output, [_banded_capture(module, flipped.reshape(len(patches), -1), output, conv.groups)]


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

    _recomputing = False

    def takes_kfac(self, module: nn.Module) -> bool:
        """Attention with one in_proj block (kdim = vdim = E)."""
        return bool(module._qkv_same_embed_dim)

    def kfac_capture(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> tuple[Any, list[KFACCapture]]:
        """The q, k, v bands of ``in_proj`` (ā: the query, key, value inputs with a 1 for the bias; δ: the
        gradient in each projection) and ``out_proj`` (ā: the heads' output; δ: the gradient in the
        attention's output). The projections are internal to the module's forward, so the forward runs again
        with them outside it: on the projected inputs with identity projections inside (the same result)."""
        if self._recomputing:  # the forward pass below calls the module, and so this hook, again
            return output, []
        attention = cast(nn.MultiheadAttention, module)
        bound = inspect.signature(attention.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        E = attention.embed_dim
        weights = torch.split(attention.in_proj_weight, E)
        biases = torch.split(attention.in_proj_bias, E) if attention.in_proj_bias is not None else (None,) * 3
        names = ("query", "key", "value")
        inputs = [bound.arguments[name] for name in names]
        projected = [F.linear(x, w, b) for x, w, b in zip(inputs, weights, biases)]
        eye = torch.eye(E, dtype=projected[0].dtype, device=projected[0].device)
        inside = {"in_proj_weight": torch.cat([eye] * 3), "out_proj.weight": eye}
        if attention.in_proj_bias is not None:
            inside["in_proj_bias"] = torch.zeros_like(attention.in_proj_bias)
        if attention.out_proj.bias is not None:
            inside["out_proj.bias"] = torch.zeros_like(attention.out_proj.bias)
        rest = {key: value for key, value in bound.arguments.items() if key not in names}
        self._recomputing = True
        try:
            heads, attention_weights = torch.func.functional_call(attention, inside, tuple(projected), rest)
        finally:
            self._recomputing = False
        result = F.linear(heads, attention.out_proj.weight, attention.out_proj.bias)
        bias = attention.in_proj_bias is not None
        rows = [x.detach().reshape(-1, x.shape[-1]) for x in inputs]
        heads_rows = heads.detach().reshape(-1, E)
        captures = [
            KFACCapture(
                "",
                [input_gram(a, bias) for a in rows],
                len(rows[0]),
                tuple(projected),
                lambda grads: [grad.reshape(-1, E) for grad in grads],
            ),
            KFACCapture(
                ".out_proj",
                [input_gram(heads_rows, attention.out_proj.bias is not None)],
                len(heads_rows),
                (result,),
                lambda grads: [grads[0].reshape(-1, E)],
            ),
        ]
        return (result, attention_weights), captures


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

    def takes_kfac(self, module: nn.Module) -> bool:
        return True

    def kfac_capture(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> tuple[Any, list[KFACCapture]]:
        """The rows of W are indexed by the input: the input factor is diagonal, diag(how often each index
        occurs; 0 for ``padding_idx``, whose row gets no gradient), on the block's rows; δ the output gradient
        on its columns."""
        embedding = cast(nn.Embedding, module)
        indices = args[0].reshape(-1)
        counts = torch.bincount(indices, minlength=embedding.num_embeddings).to(embedding.weight.dtype)
        if embedding.padding_idx is not None:
            counts[embedding.padding_idx] = 0
        dim = embedding.embedding_dim
        deltas = lambda grads: [grads[0].reshape(-1, dim)]  # noqa: E731
        return output, [KFACCapture("", [torch.diag(counts)], len(indices), (output,), deltas, input_on_rows=True)]


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
