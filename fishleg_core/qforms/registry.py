"""The registry of QForms: ``QFORMS.build(name, shape=(rows, cols), init_scale=s, **options)``."""

from fishleg_core.registry import Registry

QFORMS: Registry = Registry("QForm")
