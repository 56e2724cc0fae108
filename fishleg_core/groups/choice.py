"""Which blocks form one group, and with which group form: ``groups=[...]`` and ``couple="adjacent"``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fishleg_core.groups.registry import QGROUPS
from fishleg_core.layers.mapping import Block

GroupSpec = Mapping[str, Any]
"""``{"blocks": ["0", "2"], "form": "tridiag_kron", **options}``."""

COUPLINGS = ("adjacent",)


@dataclass(frozen=True)
class GroupChoice:
    """The blocks of one multi-block group, its group form and that form's options."""

    blocks: tuple[Block, ...]
    form: str
    options: dict[str, Any] = field(default_factory=dict)


def choose_groups(
    blocks: Sequence[Block], groups: Sequence[GroupSpec] | None = None, couple: str | None = None
) -> list[GroupChoice]:
    """The groups asked for by ``groups`` (explicit) and ``couple`` (a shortcut: ``"adjacent"`` makes a
    ``tridiag_kron`` group of every chain of two or more consecutive ``nn.Linear`` blocks, each one's
    outputs the next one's inputs). Blocks in no group keep a single-block group (chosen by ``forms``).
    Raises for an unknown block or form, a block in two groups, or a coupling that finds nothing."""
    by_name = {block.name: block for block in blocks}
    chosen = [_parse(i, spec, by_name) for i, spec in enumerate(_check_list(groups))]
    if couple is not None:
        if couple not in COUPLINGS:
            raise ValueError(f"couple must be one of {', '.join(map(repr, COUPLINGS))} or None, got {couple!r}")
        chains = adjacent_linear_chains(blocks)
        if not chains:
            raise ValueError(
                "couple='adjacent': the model has no chain of two or more consecutive nn.Linear "
                f"layers feeding each other (blocks: {', '.join(by_name)})"
            )
        chosen += [GroupChoice(tuple(chain), "tridiag_kron") for chain in chains]
    owner: dict[str, int] = {}
    for index, choice in enumerate(chosen):
        for block in choice.blocks:
            if block.name in owner:
                raise ValueError(
                    f"groups: block {block.name!r} is in two groups ({_label(chosen[owner[block.name]])} "
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


def _check_list(groups: object) -> list[GroupSpec]:
    if groups is None:
        return []
    if isinstance(groups, (str, Mapping)) or not isinstance(groups, Sequence):
        raise TypeError(
            "groups must be a list of {'blocks': [block names], 'form': group form, **options}, "
            f"got {type(groups).__name__}"
        )
    return list(groups)


def _parse(index: int, spec: object, by_name: Mapping[str, Block]) -> GroupChoice:
    where = f"groups[{index}]"
    if not isinstance(spec, Mapping) or "blocks" not in spec or "form" not in spec:
        raise ValueError(
            f"{where} must be a mapping with 'blocks' (a list of block names) and 'form' "
            f"(one of {', '.join(QGROUPS.names())}), got {spec!r}"
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
    QGROUPS.get(form)  # an unknown form raises, listing the known ones
    options = {key: value for key, value in spec.items() if key not in ("blocks", "form")}
    return GroupChoice(tuple(by_name[name] for name in names), form, options)


def _label(choice: GroupChoice) -> str:
    return f"{choice.form} over {'+'.join(block.name for block in choice.blocks)}"
