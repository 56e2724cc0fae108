"""Low-rank factors of minibatch gradients, captured with module hooks (paper §4.4).

For a layer whose block gradient is Δᵀ [A | 1] (a Linear layer: A the inputs (N × in, all leading dimensions
flattened), Δ the output gradients (N × out: the gradient of the loss in the layer outputs, the 1/B of a batch
mean included); a convolution: A the unfolded input patches and Δ the output gradients, one row per example
and position), a Kronecker-factored Q acts on it as M_L Δᵀ [A | 1] M_R = (M_L Δᵀ)(M_R [A | 1]ᵀ)ᵀ, far cheaper
than M_L G M_R when N < out, in. The layer adapter says how to get A and Δ (``LayerAdapter.factor_columns``,
``factor_rows``), so a new layer type can offer its own factors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import torch
from torch import Tensor, nn

from fishleg_core._warnings import warn_user
from fishleg_core.fisher.functional import in_functional_view
from fishleg_core.layers.adapters import LayerAdapter, adapter_for
from fishleg_core.layers.mapping import Block
from fishleg_core.model_q import BlockQ, ModelQ
from fishleg_core.qforms import QForm
from fishleg_core.qforms.kron import kron_low_rank_pays

RELATIVE_TOLERANCE = 1e-4


@dataclass
class _Pass:
    """One forward pass of a module with autograd on: A (None when its rank made the low-rank product not
    pay), Δ once its backward pass ran, and whether a ``zero_grad`` came between the two."""

    inputs: Tensor | None
    output_grad: Tensor | None = None
    done: bool = False
    stale: bool = False


@dataclass
class _Record:
    passes: list[_Pass] = field(default_factory=list)


class GradientFactors:
    """Captures (Δᵀ, [A | 1]ᵀ) for the blocks among ``blocks`` that are a whole module's own block and whose
    adapter offers factors (``captures_factors``), without changing the model.

    Forward passes with autograd on (outside Fisher computations) record A; a tensor hook on the output
    records Δ. ``pays`` (block name -> whether rank r pays) skips the capture of passes whose rank is too
    high for the low-rank product to pay. ``factors(gradient)`` returns the factors of every block whose
    capture reproduces its entry in ``gradient`` (checked along a fixed random probe vector r:
    ‖Gr − left(rightᵀr)‖ within 1e-4 ‖Gr‖ plus 100 ε ‖|left|(|right|ᵀ|r|)‖, the round-off of the sums, plus
    4 ε_low ‖|left|(|right|ᵀ|r|)‖ for factors captured in a lower precision ε_low under ``torch.autocast``,
    which are cast to the gradient's dtype), then
    starts a new capture. Blocks whose ``.grad`` was changed after backward (clipping, weight decay,
    accumulation across ``zero_grad``), or forward passes without a backward, fall back to the dense
    product, with one warning per block.
    """

    def __init__(
        self, model: nn.Module, blocks: Iterable[Block], pays: Mapping[str, Callable[[int], bool]] | None = None
    ) -> None:
        blocks = list(blocks)
        adapters = {block.name: adapter for block in blocks if (adapter := _capturing_adapter(model, block))}
        self.blocks = {block.name: block for block in blocks if block.name in adapters}
        self._pays = dict(pays or {})
        self._records = {name: _Record() for name in self.blocks}
        self._probes: dict[str, Tensor] = {}
        self._warned: set[str] = set()
        self._handles = [
            model.get_submodule(name).register_forward_hook(partial(self._on_forward, name, adapters[name]))
            for name in self.blocks
        ]

    @classmethod
    def for_q(cls, model: nn.Module, q: ModelQ) -> GradientFactors:
        """A capture for the blocks of ``q`` that can use low-rank factors: those of single-block groups whose
        form has a low-rank product (overrides ``multiply_low_rank``), for forward passes whose rank is below
        the Kronecker break-even rank of the block (``kron_low_rank_pays``: no built-in form's product pays
        beyond it; the form still decides, and may return None), and every block of a group spanning several
        blocks (the group decides whether the factors pay)."""
        blocks: list[Block] = []
        pays: dict[str, Callable[[int], bool]] = {}
        for group in q.groups:
            if not isinstance(group, BlockQ):
                blocks.extend(group.blocks)
            elif _has_low_rank_product(group.form):
                blocks.append(group.block)
                pays[group.block.name] = partial(kron_low_rank_pays, group.block.shape)
        return cls(model, blocks, pays)

    def factors(self, gradient: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """{block name: (left, right)} with left @ rightᵀ equal to the block of ``gradient``."""
        candidates, errors, allowed = {}, [], []
        for name, record in self._records.items():
            passes = [p for p in record.passes if p.done or not p.stale]  # stale and pending: never backward
            if not passes or any(p.inputs is None for p in passes):
                continue
            if not all(p.done for p in passes):
                self._warn(name, "a forward pass with autograd on had no backward pass")
                continue
            block = self.blocks[name]
            left = _joined([cast(Tensor, p.output_grad) for p in passes]).mT
            inputs = _joined([cast(Tensor, p.inputs) for p in passes])
            dtype = gradient[block.param_names[0]].dtype
            # under autocast the layer ran in a lower precision: its round-off bounds the agreement
            low = min((left.dtype, inputs.dtype), key=lambda t: torch.finfo(t).bits)
            mixed = 4 * torch.finfo(low).eps if torch.finfo(low).bits < torch.finfo(dtype).bits else 0.0
            left, inputs = left.to(dtype), inputs.to(dtype)
            if len(block.param_names) == 2:
                inputs = torch.cat([inputs, inputs.new_ones(len(inputs), 1)], dim=1)
            probe = self._probe(name, inputs)
            pieces = torch.split(probe, block.layout.widths)  # G r = W r_W + b r_b, without packing G
            Gr = sum(
                block.layout.piece(gradient[p], i) @ piece
                for i, (p, piece) in enumerate(zip(block.param_names, pieces))
            )
            errors.append(torch.linalg.vector_norm(Gr - left @ (inputs @ probe)))
            # allowed: a relative error of the product, plus the round-off of summing N terms of this size
            magnitude = torch.linalg.vector_norm(left.abs() @ (inputs.abs() @ probe.abs()))
            rounding = 100 * torch.finfo(dtype).eps + mixed
            allowed.append(RELATIVE_TOLERANCE * torch.linalg.vector_norm(Gr) + rounding * magnitude)
            candidates[name] = (left, inputs.mT)
        self.clear()
        if not candidates:
            return {}
        agree = (torch.stack(errors) <= torch.stack(allowed)).tolist()  # one synchronisation
        for name, ok in zip(list(candidates), agree):
            if not ok:
                self._warn(name, "its .grad differs from the captured factors (clipped, decayed or accumulated?)")
                del candidates[name]
        return candidates

    def clear(self) -> None:
        """Forget what was captured since the last ``factors`` call."""
        self._records = {name: _Record() for name in self.blocks}

    def zero_grad(self) -> None:
        """Forget the passes whose gradients were accumulated, as ``.grad`` is cleared; keep those whose
        backward pass is still to come (a closure that calls ``zero_grad`` between the forward and the
        backward pass, as Lightning's does). A kept pass that never gets its backward pass is dropped
        without a warning at the next ``factors`` call."""
        for record in self._records.values():
            record.passes = [p for p in record.passes if not p.done]
            for p in record.passes:
                p.stale = True

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_forward(self, name: str, adapter: LayerAdapter, module: nn.Module, args: tuple, output: Tensor) -> None:
        if not torch.is_grad_enabled() or in_functional_view() or not isinstance(output, Tensor):
            return
        if not output.requires_grad:
            return
        pays = self._pays.get(name)
        rank_pays = pays is None or pays(output.numel() // self.blocks[name].shape[0])
        capture = _Pass(adapter.factor_columns(module, args[0].detach()) if rank_pays else None)
        self._records[name].passes.append(capture)
        output.register_hook(partial(self._on_backward, capture, adapter, module))

    @staticmethod
    def _on_backward(capture: _Pass, adapter: LayerAdapter, module: nn.Module, grad: Tensor) -> None:
        if capture.inputs is not None:
            capture.output_grad = adapter.factor_rows(module, grad.detach())
        capture.done = True

    def _probe(self, name: str, inputs: Tensor) -> Tensor:
        """A fixed random vector with one entry per block column (seeded, so runs are reproducible)."""
        probe = self._probes.get(name)
        if probe is None or probe.dtype != inputs.dtype or probe.device != inputs.device:
            generator = torch.Generator().manual_seed(len(self._probes))
            probe = torch.randn(inputs.shape[1], generator=generator, dtype=inputs.dtype).to(inputs.device)
            self._probes[name] = probe
        return probe

    def _warn(self, name: str, reason: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            warn_user(f"layer {name!r}: using the dense Q·g product because {reason}")


def _joined(pieces: list[Tensor]) -> Tensor:
    """The pieces stacked along the first dimension (no copy for the usual single forward pass)."""
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _has_low_rank_product(form: QForm) -> bool:
    return type(form).multiply_low_rank is not QForm.multiply_low_rank


def _capturing_adapter(model: nn.Module, block: Block) -> LayerAdapter | None:
    """The adapter of the module that holds the block, when the block is exactly that module's own single
    block (as its adapter builds it, untied) and the adapter offers factors; None for blocks without factors.
    A block in bands of rows keeps its factors: ``RowBandsQ.multiply_low_rank`` splits the left one.

    Raises:
        ValueError: the adapter offers factors (``captures_factors``) for a module it splits into several
            blocks: ``factor_columns``/``factor_rows`` describe one block's gradient, so they would be ignored.
    """
    module_name = block.param_names[0].rpartition(".")[0]
    try:
        module = model.get_submodule(module_name)
    except AttributeError:  # a parameter held outside the module tree
        return None
    adapter = adapter_for(module)
    if adapter is None or not adapter.captures_factors(module):
        return None
    specs = adapter.blocks(module)
    if len(specs) != 1:
        split = f"{len(specs)} blocks ({', '.join(repr(module_name + suffix) for suffix, _ in specs)})"
        raise ValueError(
            f"layer adapter {type(adapter).__name__}: captures_factors is True for module {module_name!r} "
            f"({type(module).__name__}), which it splits into {split}; factor capture gives the gradient of a "
            "module's single block as Δᵀ[A | 1], so the factors would be ignored. Return False from "
            "captures_factors for such modules (Q·g then uses the dense gradient), or build one block per module"
        )
    ((suffix, attrs),) = specs
    prefix = f"{module_name}." if module_name else ""
    own = [prefix + attr for attr in attrs if isinstance(getattr(module, attr, None), nn.Parameter)]
    return adapter if not suffix and block.name == module_name and list(block.param_names) == own else None
