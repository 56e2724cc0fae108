"""The registry of coupled forms (Q over one or several blocks):
``COUPLED_FORMS.build(name, blocks=[...], init_scale=s, device=..., dtype=..., **options)``."""

from fishleg_core.registry import Registry

COUPLED_FORMS: Registry = Registry("coupled form")
