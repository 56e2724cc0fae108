"""Figure 1: FishLeg on a deep linear network (``python -m experiments.deep_linear``)."""
