"""The registry entries a row of the A.6 study runs, for its cache key.

A plugin can register or replace any entry of a ``fishleg_core.Registry`` at run time (a QForm, a likelihood, a
Fisher method, a layer adapter, an auxiliary optimizer), so the library's source hash
(``experiments.a6.provenance.library_hash``) does not describe the code a row ran. Each function here lists,
under a label, the entries a row looks up, as they are registered now (None for a lookup that finds nothing,
such as a module type without a layer adapter); ``code_hash`` of that list then changes with any registration,
replacement or edit of one of them:

- ``model_code``: what every row of a model runs, the pre-training included: the likelihood, the exact Fisher
  method and the layer adapter of each module type of the model;
- ``form_code``: what a form's fit runs besides: its QForm (or coupled form) class, the ``BlockQ`` holding a
  QForm, their Kronecker starts (the ``set_kronecker`` each finds along its class hierarchy: a start
  inherited from a base class is listed too), and ``kron``'s for the blocks outside a coupled form's chains.
"""

from __future__ import annotations

import functools
from typing import Any

import fishleg_core as fl
from experiments.a6.coupling import MULTI_BLOCK_FORMS
from experiments.a6.form_specs import parse_spec
from experiments.a6.study_models import MODELS
from fishleg_core.coupled import BlockQ
from fishleg_core.registry import Registry

STUDY_FISHER_METHOD = "exact"
"""The Fisher method of every fit, evaluation and reference of the study."""


def registered_along_mro(registry: Registry[Any], cls: type) -> Any | None:
    """The entry registered for ``cls`` or its nearest registered base class (how starts and layer adapters
    are found), or None."""
    return next((registry.get(base) for base in cls.__mro__ if base in registry), None)


@functools.cache
def _module_types(model_name: str) -> tuple[type, ...]:
    """The module types of the study's model ``model_name`` (its code is the library's)."""
    types = {type(module) for module in MODELS[model_name].build(0).modules()}
    return tuple(sorted(types, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}"))


def model_code(model_name: str) -> list[Any]:
    """Labels and entries: the likelihood, the Fisher method and each module type's layer adapter."""
    code: list[Any] = [
        "likelihood",
        fl.LIKELIHOODS.get(MODELS[model_name].likelihood),
        "fisher method",
        fl.FISHER_METHODS.get(STUDY_FISHER_METHOD),
    ]
    for cls in _module_types(model_name):
        code += [f"layer adapter of {cls.__module__}.{cls.__qualname__}", registered_along_mro(fl.LAYER_ADAPTERS, cls)]
    return code


def form_code(form: str) -> list[Any]:
    """Labels and entries: the form's class and its Kronecker start, with the group that holds it."""
    name = parse_spec(form).name
    if name in MULTI_BLOCK_FORMS:
        coupled = fl.COUPLED_FORMS.get(name)
        return [
            "coupled form",
            coupled,
            "coupled start",
            getattr(coupled, "set_kronecker", None),
            *form_code("kron"),
        ]
    form_class = fl.QFORMS.get(name)
    return [
        "form",
        form_class,
        "kronecker start",
        getattr(form_class, "set_kronecker", None),
        "block group",
        BlockQ,
        "block start",
        BlockQ.set_kronecker,
    ]
