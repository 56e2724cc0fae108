"""Fisher-vector products (F + γ I) v on a batch, by pluggable methods ("exact", "sampled", "empirical").

Importing this package registers the built-in methods in ``FISHER_METHODS``.
"""

from fishleg_core.fisher.api import fisher_vp
from fishleg_core.fisher.functional import ModelCall
from fishleg_core.fisher.registry import FISHER_METHODS

# Registration order is the order of FISHER_METHODS.names().
from fishleg_core.fisher.exact import exact_fisher_vp  # isort: skip
from fishleg_core.fisher.sampled import sampled_fisher_vp  # isort: skip
from fishleg_core.fisher.empirical import empirical_fisher_vp  # isort: skip

__all__ = ["FISHER_METHODS", "ModelCall", "fisher_vp", "exact_fisher_vp", "sampled_fisher_vp", "empirical_fisher_vp"]
