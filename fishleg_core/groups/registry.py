"""The registry of group forms (Q over one or several blocks):
``QGROUPS.build(name, blocks=[...], init_scale=s, device=..., dtype=..., **options)``."""

from fishleg_core.registry import Registry

QGROUPS: Registry = Registry("group form")
