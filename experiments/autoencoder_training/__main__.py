"""``python -m experiments.autoencoder_training``: Figures 2-3 (see ``experiments.autoencoder_training.experiment``)."""

from experiments.autoencoder_training.experiment import main

main()
