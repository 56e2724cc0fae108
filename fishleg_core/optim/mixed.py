"""Mixed training setups around FishLeg: parameters stepped by a standard torch optimizer instead of Q
(``fallback``), and parameter groups with their own rates, chosen by name pattern (``group_options``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

FALLBACK_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
GROUP_KEYS = {"lr", "momentum", "weight_decay", "decoupled_weight_decay"}


def matching(params: Mapping[str, nn.Parameter], patterns: Any, what: str) -> list[str]:
    """The names in ``params`` that match one of ``patterns`` (``fnmatch``), by the parameter's name
    (``"encoder.0.weight"``) or its module's (``"encoder.0"``); a pattern that matches nothing raises."""
    if isinstance(patterns, str) or not isinstance(patterns, Sequence) or not patterns:
        raise TypeError(f"{what}: 'params' must be a non-empty list of name patterns, got {patterns!r}")
    found: list[str] = []
    for pattern in patterns:
        names = [n for n in params if fnmatchcase(n, pattern) or fnmatchcase(n.rpartition(".")[0], pattern)]
        if not names:
            raise ValueError(f"{what}: the pattern {pattern!r} matches no trainable parameter or its module")
        found.extend(name for name in names if name not in found)
    return found


def fallback_optimizer(
    params: Mapping[str, nn.Parameter], spec: Mapping[str, Any]
) -> tuple[list[str], torch.optim.Optimizer]:
    """(names, optimizer) of the parameters ``spec["params"]`` matches, the group holding every default of
    the torch optimizer ``spec["optimizer"]`` ("adam", "adamw", "sgd" or a ``torch.optim.Optimizer`` class)
    overridden by the rest of ``spec`` (``lr`` and its other options)."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"fallback must be a dict {{'optimizer': ..., 'params': [...], 'lr': ...}}, got {spec!r}")
    options = dict(spec)
    kind = options.pop("optimizer", "adam")
    patterns = options.pop("params", None)
    if isinstance(kind, str):
        if kind not in FALLBACK_OPTIMIZERS:
            raise ValueError(f"fallback: unknown optimizer {kind!r}; known: {', '.join(FALLBACK_OPTIMIZERS)}")
        kind = FALLBACK_OPTIMIZERS[kind]
    if not (isinstance(kind, type) and issubclass(kind, torch.optim.Optimizer)):
        raise TypeError(f"fallback: optimizer must be a name or a torch.optim.Optimizer class, got {kind!r}")
    names = matching(params, patterns, "fallback")
    inner = kind([params[name] for name in names], **options)
    inner.param_groups[0]["fallback"] = kind.__name__  # marks the group among FishLeg's
    return names, inner


def option_groups(
    params: Mapping[str, nn.Parameter], specs: Sequence[Mapping[str, Any]] | None
) -> tuple[list[dict[str, Any]], set[str]]:
    """The parameter groups of ``specs`` (each ``{"params": [patterns], "lr": ..., ...}``) and the names they
    take; a parameter in two groups raises."""
    groups: list[dict[str, Any]] = []
    taken: set[str] = set()
    for index, spec in enumerate(specs or []):
        what = f"group_options[{index}]"
        if not isinstance(spec, Mapping):
            raise TypeError(f"{what} must be a dict {{'params': [patterns], 'lr': ...}}, got {spec!r}")
        unknown = set(spec) - GROUP_KEYS - {"params"}
        if unknown:
            raise ValueError(f"{what}: unknown options {sorted(unknown)}; known: {sorted(GROUP_KEYS)}")
        names = matching(params, spec.get("params"), what)
        twice = taken.intersection(names)
        if twice:
            raise ValueError(f"{what}: {sorted(twice)} are already in an earlier group or the fallback")
        taken.update(names)
        options = {key: value for key, value in spec.items() if key != "params"}
        groups.append({"params": [params[name] for name in names], **options})
    return groups, taken
