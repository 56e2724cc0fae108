"""The registry of Fisher-vector product methods.

A method is a function ``(model, likelihood, inputs, vector, generator) -> dict[str, Tensor]`` returning the
undamped F·v on the batch ``inputs``, keyed like ``vector``; ``fisher_vp`` checks the arguments and adds the
damping. Register one with ``@FISHER_METHODS.register("name")``.
"""

from fishleg_core.registry import Registry

FISHER_METHODS: Registry = Registry("Fisher method")
