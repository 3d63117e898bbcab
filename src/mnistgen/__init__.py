"""mnistgen: a 2-D-latent VAE and a small convolutional GAN of handwritten digits, built to SPEC.md."""

__version__ = "0.1.0"
