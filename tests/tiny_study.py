"""Settings of the A.6 study even smaller than --quick (a YAML config file), for tests of its machinery."""

TINY_STUDY = """
n_train: 400
n_heldout: 300
pretrain_iterations: 10
steps: 6
n_probes: 1
n_curvature: 100
cg_rtol: 1.0e-3
monitor_directions: 1
kfac_samples: 1
certificate_steps: 2
"""
