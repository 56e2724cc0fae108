"""Plugins: modules of the user's that register QForms, likelihoods, layer adapters (or into any other
``fishleg_core.Registry``, such as coupled forms or auxiliary optimisers) before the study runs.

``--plugins my_forms.py,mypackage.forms``: a path to a ``.py`` file is executed as a module named after the
file; anything else is imported by its dotted module name (from the current folder or the Python path). A
plugin loaded by an earlier call in the same process is loaded again (its earlier registrations removed
first), so a notebook picks up an edited plugin file.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Hashable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from fishleg_core.registry import Registry

_LOADED: dict[str, list[tuple[Registry[Any], Hashable]]] = {}
"""Module name -> the registry entries it made when ``load_plugins`` last loaded it."""


class PluginError(ValueError):
    """A plugin that cannot be imported or registers nothing (one line)."""


def load_plugins(plugins: str | Sequence[str]) -> list[ModuleType]:
    """Import each plugin (a comma-separated string or a sequence of module names and ``.py`` paths) and
    check that it registered something; a ``PluginError`` names the plugin and the problem otherwise."""
    names = plugins.split(",") if isinstance(plugins, str) else list(plugins)
    return [load_plugin(name.strip()) for name in names if name.strip()]


def load_plugin(plugin: str) -> ModuleType:
    """Import one plugin (module name or ``.py`` path) and return it; see ``load_plugins``."""
    path = Path(plugin).expanduser()
    is_file = plugin.endswith(".py") or path.is_file()
    name = path.stem if is_file else plugin
    if is_file and not path.is_file():
        raise PluginError(f"plugin {plugin!r}: no such file")
    if name in sys.modules and name not in _LOADED:
        return _already_imported(plugin, sys.modules[name])
    unload_plugin(name)
    before = _entries()
    try:
        module = _execute_file(name, path) if is_file else importlib.import_module(name)
    except Exception as error:  # the plugin's own code failed: report it as one line, whatever it raised
        sys.modules.pop(name, None)
        raise PluginError(f"cannot import plugin {plugin!r}: {type(error).__name__}: {error}") from error
    made = [entry for entry in _entries() if entry not in before]
    if not made:
        raise PluginError(
            f"plugin {plugin!r} registered nothing (no new QForm, likelihood, layer adapter or other registry entry)"
        )
    _LOADED[name] = [(registry, key) for registry, key, _ in made]
    return module


def unload_plugin(name: str) -> None:
    """Remove the registry entries that the plugin module ``name`` made when ``load_plugins`` loaded it, and
    forget the module (nothing happens for a module it did not load)."""
    if name not in _LOADED:
        return
    for registry, key in _LOADED.pop(name):
        if key in registry:
            registry.unregister(key)
    sys.modules.pop(name, None)


def registered_by(module: ModuleType) -> list[str]:
    """'<kind> <name>' for every registry entry whose factory was defined in ``module``."""
    return [
        f"{registry.kind} {getattr(key, '__name__', key)}"
        for registry, key, factory in _entries()
        if getattr(factory, "__module__", None) == module.__name__
    ]


def _already_imported(plugin: str, module: ModuleType) -> ModuleType:
    """A module imported before (by the user's own code): accepted if its registrations are there."""
    if not registered_by(module):
        raise PluginError(f"plugin {plugin!r} was imported before and registered nothing")
    return module


def _execute_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


def _entries() -> list[tuple[Registry[Any], Hashable, Any]]:
    return [(registry, key, factory) for registry in Registry.instances() for key, factory in registry.items()]
