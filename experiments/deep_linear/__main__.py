"""``python -m experiments.deep_linear``: Figure 1 (see ``experiments.deep_linear.experiment``)."""

from experiments.deep_linear.experiment import main

main()
