"""The registry of Fisher-vector product methods.

A method is a function called with keyword arguments
``method(model=, likelihood=, inputs=, targets=, vector=, generator=) -> dict[str, Tensor]`` that returns
the undamped F·v on the batch, keyed like ``vector``; ``fisher_vp`` checks the arguments and adds the
damping. ``targets`` are the batch's data targets, or None when the batch has none (methods that need
them, such as ``empirical``, raise then). The contract of a method:

- it runs the model only inside ``model_function(model, inputs)`` (``fishleg_core.fisher.functional``),
  which leaves parameters, buffers (BatchNorm statistics) and the global RNG untouched, and tells
  module hooks (the low-rank gradient capture) to ignore those passes;
- it returns detached tensors, one per entry of ``vector``, shaped like the parameters;
- it draws any randomness from ``generator`` (a fresh OS-seeded one when None), never the global RNG.

A method that also handles the parameters of a ``ParametricLikelihood`` (entries ``"likelihood.<name>"``
of ``vector``) says so with the attribute ``supports_likelihood_parameters = True`` ("exact" does);
``fisher_vp`` refuses the others for such likelihoods.

Register one with ``@FISHER_METHODS.register("name")``; ``tests/test_fisher.py`` runs every registered
method through the shared checks.
"""

from fishleg_core.registry import Registry

FISHER_METHODS: Registry = Registry("Fisher method")
