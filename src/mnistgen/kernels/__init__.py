"""mnistgen's own CPU kernels (C, compiled on first use) for the parts of the VAE and the GAN where PyTorch's are
slow."""
