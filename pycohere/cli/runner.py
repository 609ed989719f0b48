"""Running a parsed command line: every error a user can cause becomes one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import PycohereError


def run_commands(register_fn, command: str, argv) -> int:
    """A ``pycohere``-like command line with only ``register_fn``'s commands, starting with ``command``
    (``python -m pycohere.golden make ...`` is ``pycohere golden make ...``); same error handling."""
    argv = list(argv)
    debug = ["--debug"] if "--debug" in argv[:1] else []
    parser = argparse.ArgumentParser(prog="pycohere")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    register_fn(parser.add_subparsers(dest="command"))
    return run(parser, debug + [command] + argv[len(debug):])


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse and dispatch; every pycohere-style command line (also ``python -m pycohere.golden``)
    handles errors here: one line on stderr and exit 2, a traceback only with --debug."""
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except BrokenPipeError:  # `pycohere ... | head`: the reader left; not an error (Python docs recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (PycohereError, OSError) as e:
        if args.debug:
            raise
        print(f"pycohere: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


