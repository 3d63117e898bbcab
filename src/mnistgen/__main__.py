"""``python -m mnistgen`` is the ``mnistgen`` command."""

from .cli import run

run()
