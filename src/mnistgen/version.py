"""The version of mnistgen: one place, read by the package, its run folders and its packaging."""

__version__ = "0.1.0"
