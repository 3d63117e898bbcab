"""Data: IDX files, the dataset registry, finding/downloading files, and the training protocols."""
