"""``pycohere serve``: the OpenAI-compatible server (needs the ``serve`` extra; imported only when run)."""
from __future__ import annotations

import os
import sys

from ..errors import InputError
from .common import add_compute_options, add_model_option

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args) -> int:
    from ..serve import EXTRA_HINT
    try:
        from ..serve.server import Server, load_engine
    except ImportError as exc:   # starlette or uvicorn missing
        raise InputError(f"{EXTRA_HINT} ({exc})") from None
    key = args.api_key or os.environ.get("PYCOHERE_API_KEY") or None
    if args.host not in LOOPBACK and key is None:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    if args.max_queue < 1 or args.prompt_cache < 0 or args.max_body_mb <= 0:
        raise InputError("--max-queue must be >= 1, --prompt-cache >= 0 and --max-body-mb > 0")
    engine = load_engine(args.model, dtype=args.dtype, backend=args.backend, served_model_name=args.served_model_name,
                         max_queue=args.max_queue, prompt_cache_size=args.prompt_cache)
    Server(engine, host=args.host, port=args.port, api_key=key, max_body_bytes=int(args.max_body_mb * 2**20),
           log_level=args.log_level).run()
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (tool calls, citations)",
                       description="Serve the model over OpenAI's HTTP API (/v1/chat/completions, /v1/completions, "
                                   "/v1/models) plus /tokenize, /detokenize, /apply-template, /health, /metrics. "
                                   "Needs: pip install 'pycohere[serve]'.")
    add_model_option(p)
    add_compute_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set PYCOHERE_API_KEY)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: the folder name; "
                                                             "'pycohere-demo' for the demo model)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 503")
    p.add_argument("--prompt-cache", type=int, default=4, help="KV caches of recent conversations kept for reuse "
                                                              "(0: off)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body accepted, MiB")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
