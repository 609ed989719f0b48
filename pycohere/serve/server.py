"""Loading a checkpoint into an :class:`Engine` and running the app under uvicorn, in the foreground
(the CLI) or on a background thread (tests, benchmarks: port 0 picks a free port, as mlx-lm's tests do)."""
from __future__ import annotations

import threading
from pathlib import Path

import uvicorn

from ..errors import InputError
from .app import MAX_BODY_BYTES, create_app
from .engine import Engine


def load_engine(model=None, dtype: str = "float32", backend: str = "auto", served_model_name: str | None = None,
                max_queue: int = 64, prompt_cache_size: int = 4) -> Engine:
    """An Engine for a checkpoint folder, .gguf file or hub repo id (default: the bundled demo model),
    model and tokenizer from one probe."""
    from ..checkpoints.probe import probe
    from ..demo import DEMO_MODEL
    from ..model import AutoModelForCausalLM
    from ..text.tokenizer import CohereTokenizer
    found = probe(model if model else DEMO_MODEL)
    name = served_model_name or ("pycohere-demo" if not model else Path(str(model)).name or str(model))
    return Engine(AutoModelForCausalLM.from_pretrained(found, dtype=dtype, backend=backend),
                  CohereTokenizer.from_pretrained(found), name, max_queue=max_queue,
                  prompt_cache_size=prompt_cache_size)


class Server:
    """uvicorn serving ``create_app(engine, ...)``; ``start()`` runs it on a thread and returns once it
    listens (``port`` then holds the real port), ``stop()`` shuts it down."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, log_level: str = "info"):
        if not 0 <= port <= 65535:
            raise InputError(f"port must be in [0, 65535], got {port}")
        self.engine = engine
        self.config = uvicorn.Config(create_app(engine, api_key=api_key, max_body_bytes=max_body_bytes), host=host,
                                     port=port, log_level=log_level, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def run(self) -> None:
        """Serve in the foreground until interrupted."""
        self.server.run()

    def start(self, timeout: float = 60.0) -> "Server":
        self.thread = threading.Thread(target=self.server.run, name="pycohere-serve-http", daemon=True)
        self.thread.start()
        for _ in range(int(timeout / 0.02)):
            if self.server.started or not self.thread.is_alive():
                break
            self.thread.join(0.02)
        if not self.server.started:
            raise RuntimeError(f"the server did not start on {self.config.host}:{self.config.port}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
