"""Figures 2-3: training the MNIST autoencoder (``python -m experiments.autoencoder_training``)."""
