"""``mnistgen data``: fetch, verify and describe dataset files."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="fetch, verify and describe dataset files")
    commands = parser.add_subparsers(title="data commands", metavar="COMMAND")
    commands.required = True
