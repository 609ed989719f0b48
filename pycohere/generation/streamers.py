"""Streamers: transformers' ``put(ids)`` / ``end()`` protocol; text streamers over the tokenizer's
incremental detokenizer."""
from __future__ import annotations

import queue
from typing import Any

import numpy as np

from ..errors import GenerationConfigError


class BaseStreamer:
    """transformers' streamer protocol: ``put(ids)`` is called with the prompt (B, T), then with each
    step's new tokens (B,); ``end()`` once generation is over."""

    def put(self, value) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class TextStreamer(BaseStreamer):
    """Print text as it is generated (transformers ``TextStreamer``; batch size 1).

    Text comes from the tokenizer's incremental detokenizer (``tokenizer.decode_stream``), so a
    character split over several byte-level tokens is printed once complete, never as U+FFFD halves.
    Unlike transformers (which waits for a space), complete characters are printed at once.
    ``decode_kwargs``: ``skip_special_tokens``.
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, **decode_kwargs: Any):
        unknown = set(decode_kwargs) - {"skip_special_tokens"}
        if unknown:
            raise GenerationConfigError(f"unknown TextStreamer argument(s): {', '.join(sorted(unknown))}")
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.skip_special_tokens = bool(decode_kwargs.get("skip_special_tokens", False))
        self._detok = None
        self._next_is_prompt = True

    def put(self, value) -> None:
        ids = np.asarray(value)
        if ids.ndim > 1 and ids.shape[0] > 1:
            raise GenerationConfigError("TextStreamer only supports batch size 1; generate rows one at a time")
        ids = ids.reshape(-1).tolist()
        if self._next_is_prompt:
            self._next_is_prompt = False
            if self.skip_prompt:  # the prompt still gives the detokenizer its context
                self._detok = self.tokenizer.decode_stream(self.skip_special_tokens, prompt_ids=ids)
                return
        if self._detok is None:
            self._detok = self.tokenizer.decode_stream(self.skip_special_tokens)
        text = self._detok.put(ids)
        if text:
            self.on_finalized_text(text)

    def end(self) -> None:
        text = self._detok.flush() if self._detok is not None else ""
        self._detok = None
        self._next_is_prompt = True
        self.on_finalized_text(text, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Print ``text``; a newline after the last piece (override to send it elsewhere)."""
        print(text, flush=True, end="" if not stream_end else None)


class TextIteratorStreamer(TextStreamer):
    """Queue the text pieces for another thread: ``for piece in streamer: ...`` while ``generate`` runs
    in a thread (transformers ``TextIteratorStreamer``). ``timeout`` in seconds raises ``queue.Empty``."""

    def __init__(self, tokenizer, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: queue.Queue = queue.Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration()
        return value
