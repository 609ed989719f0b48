"""Command line: ``pycohere <command>`` (also ``python -m pycohere``), one module per command.

Errors print as one readable line and exit with code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse

from . import convert, explain, generate, golden, inspect, mask, serve
from .runner import run

#: The commands, in the order ``pycohere --help`` lists them; each module registers its own.
COMMANDS = (inspect, golden, explain, convert, generate, mask, serve)

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycohere", description="Cohere Command-R family in NumPy: inspect "
                                "checkpoints and run them on a CPU.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command")
    for module in COMMANDS:
        module.register(sub)
    return p


def main(argv=None) -> int:
    return run(build_parser(), argv)
