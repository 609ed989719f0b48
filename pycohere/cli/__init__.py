"""The command line, one module per command (``inspect``, ``generate`` and ``chat``, ``mask``, ``explain``,
``golden``, ``quantize`` and ``convert``); ``main`` builds the parser, ``runner`` turns errors into one line.

May import: anything. Nothing imports it (but ``__main__`` modules).
"""
from .main import build_parser, main
from .runner import run

__all__ = ["build_parser", "main", "run"]
