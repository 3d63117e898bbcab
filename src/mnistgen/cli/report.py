"""``mnistgen report``: (to be built)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add this family's commands to ``mnistgen``; nothing yet."""
