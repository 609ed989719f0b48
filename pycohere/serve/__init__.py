"""``pycohere serve``: an OpenAI-compatible HTTP server (Starlette + uvicorn, the ``serve`` extra) that returns
Command-R's tool calls as ``tool_calls`` and its grounded answers with ``citations``.

May import: everything below the services layer (``pycohere.text``, ``pycohere.model`` and down). Only ``app``
and ``server`` import Starlette/uvicorn; ``protocol``, ``prompts``, ``output`` and ``engine`` run without them.
"""
from .engine import Engine
from .protocol import ChatRequest, CompletionRequest, parse_chat_request, parse_completion_request

EXTRA_HINT = "pycohere serve needs the serve extra: pip install 'pycohere[serve]' (starlette and uvicorn)"


def __getattr__(name):
    # The HTTP pieces load on first use, so that importing the engine needs no ASGI stack.
    if name in ("create_app", "Server", "load_engine"):
        try:
            from . import app, server
        except ImportError as exc:
            raise ImportError(f"{EXTRA_HINT} ({exc})") from None
        return getattr(app if name == "create_app" else server, name)
    raise AttributeError(f"module 'pycohere.serve' has no attribute {name!r}")


__all__ = ["ChatRequest", "CompletionRequest", "Engine", "EXTRA_HINT", "Server", "create_app", "load_engine",
           "parse_chat_request", "parse_completion_request"]
