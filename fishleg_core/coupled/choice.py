"""Which blocks form one group, and with which coupled form: ``coupled=[...]`` and ``couple="adjacent"``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fishleg_core.coupled.registry import COUPLED_FORMS
from fishleg_core.layers.mapping import Block

CoupledSpec = Mapping[str, Any]
"""``{"blocks": ["0", "2"], "form": "tridiag_kron", **options}``."""

COUPLINGS = ("adjacent",)


@dataclass(frozen=True)
class CoupledChoice:
    """The blocks of one multi-block group, its coupled form and that form's options."""

    blocks: tuple[Block, ...]
    form: str
    options: dict[str, Any] = field(default_factory=dict)


def choose_coupled(
    blocks: Sequence[Block], coupled: Sequence[CoupledSpec] | None = None, couple: str | None = None
) -> list[CoupledChoice]:
    """The groups asked for by ``groups`` (explicit) and ``couple`` (a shortcut: ``"adjacent"`` makes a
    ``tridiag_kron`` group of every chain of two or more consecutive ``nn.Linear`` blocks, each one's
    outputs the next one's inputs). Blocks in no group keep a single-block group (chosen by ``forms``).
    Raises for an unknown block or form, a block in two groups, or a coupling that finds nothing."""
    by_name = {block.name: block for block in blocks}
    chosen = [_parse(i, spec, by_name) for i, spec in enumerate(_check_list(coupled))]
    if couple is not None:
        if couple not in COUPLINGS:
            raise ValueError(f"couple must be one of {', '.join(map(repr, COUPLINGS))} or None, got {couple!r}")
        chains = adjacent_linear_chains(blocks)
        if not chains:
            raise ValueError(
                "couple='adjacent': the model has no chain of two or more consecutive nn.Linear "
                f"layers feeding each other (blocks: {', '.join(by_name)})"
            )
        chosen += [CoupledChoice(tuple(chain), "tridiag_kron") for chain in chains]
    owner: dict[str, int] = {}
    for index, choice in enumerate(chosen):
        for block in choice.blocks:
            if block.name in owner:
                raise ValueError(
                    f"coupled: block {block.name!r} is in two groups ({_label(chosen[owner[block.name]])} "
                    f"and {_label(choice)}); a block belongs to one group at most"
                )
            owner[block.name] = index
    return chosen


def adjacent_linear_chains(blocks: Sequence[Block]) -> list[list[Block]]:
    """Maximal runs (length ≥ 2) of consecutive ``nn.Linear`` blocks where each weight's rows (outputs)
    equal the next weight's columns (inputs)."""
    chains: list[list[Block]] = []
    run: list[Block] = []
    for block in blocks:
        linear = issubclass(block.module_type, nn.Linear)
        if linear and run and run[-1].layout.param_shapes[0][0] == block.layout.param_shapes[0][1]:
            run.append(block)
            continue
        if len(run) >= 2:
            chains.append(run)
        run = [block] if linear else []
    if len(run) >= 2:
        chains.append(run)
    return chains


def _check_list(coupled: object) -> list[CoupledSpec]:
    if coupled is None:
        return []
    if isinstance(coupled, (str, Mapping)) or not isinstance(coupled, Sequence):
        raise TypeError(
            "coupled must be a list of {'blocks': [block names], 'form': coupled form, **options}, "
            f"got {type(coupled).__name__}"
        )
    return list(coupled)


def _parse(index: int, spec: object, by_name: Mapping[str, Block]) -> CoupledChoice:
    where = f"coupled[{index}]"
    if not isinstance(spec, Mapping) or "blocks" not in spec or "form" not in spec:
        raise ValueError(
            f"{where} must be a mapping with 'blocks' (a list of block names) and 'form' "
            f"(one of {', '.join(COUPLED_FORMS.names())}), got {spec!r}"
        )
    names, form = spec["blocks"], spec["form"]
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"{where}['blocks'] must be a non-empty list of block names, got {names!r}")
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(
            f"{where}: unknown blocks {', '.join(map(repr, unknown))}; the model's blocks are "
            f"{', '.join(map(repr, by_name))}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{where}['blocks'] names a block twice: {list(names)}")
    COUPLED_FORMS.get(form)  # an unknown form raises, listing the known ones
    options = {key: value for key, value in spec.items() if key not in ("blocks", "form")}
    return CoupledChoice(tuple(by_name[name] for name in names), form, options)


def _label(choice: CoupledChoice) -> str:
    return f"{choice.form} over {'+'.join(block.name for block in choice.blocks)}"
