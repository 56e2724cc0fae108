"""What the experiments share: the MNIST data, the autoencoder, the training loop and atomic result files."""
