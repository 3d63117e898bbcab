"""Networks only: no losses, no training logic."""
