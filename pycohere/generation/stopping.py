"""Stopping criteria: stop strings matched on the bytes of byte-level tokens (transformers
``StopStringCriteria``)."""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from ..errors import GenerationConfigError


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character map used by byte-level BPE (openai/gpt-2 encoder.py,
    transformers ``convert_slow_tokenizer.bytes_to_unicode``)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


class TokenBytes:
    """``token_bytes(token_id) -> bytes``: the bytes a token stands for (its byte-level characters mapped
    back to bytes; a fragment of a UTF-8 character stays a fragment), cached per id."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._byte_level = _uses_byte_level(tokenizer)
        self._bytes: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        b = self._bytes.get(token_id)
        if b is None:
            token = self.tokenizer.convert_ids_to_tokens(int(token_id)) if self._byte_level else None
            if token is not None and all(c in _BYTE_DECODER for c in token):
                b = bytes(_BYTE_DECODER[c] for c in token)
            else:  # not byte-level, or an added token outside the byte alphabet: its decoded text
                b = self.tokenizer.decode([int(token_id)]).encode("utf-8")
            self._bytes[token_id] = b
        return b


class StopStringCriteria:
    """Stop a row when a stop string ends inside its newest token (transformers ``StopStringCriteria``).

    transformers matches on the raw bytes of byte-level tokens; a match must overlap the final token
    (an occurrence entirely in earlier tokens does not count: it was checked when it was generated),
    and may overhang both ends (``["las", "topper"]`` matches "stop"). Here that is done with plain
    byte strings: the tail of the row's tokens, concatenated, must contain the stop string at an offset
    whose end lies inside the last token.
    """

    def __init__(self, tokenizer, stop_strings: str | Sequence[str]):
        if tokenizer is None:
            raise GenerationConfigError("stop_strings needs the tokenizer to read tokens as text: "
                                        "generate(..., stop_strings=[...], tokenizer=tokenizer)")
        self.tokenizer = tokenizer
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        self.stop_strings = tuple(strings)
        self._targets = [s.encode("utf-8") for s in strings]
        self._max_len = max(len(t) for t in self._targets)
        self.token_bytes = TokenBytes(tokenizer)

    def _row_matches(self, row: np.ndarray) -> bool:
        last = self.token_bytes(int(row[-1]))
        parts, before = [last], 0
        for t in row[-2::-1]:               # enough earlier tokens to hold the rest of the longest string
            if before >= self._max_len - 1:
                break
            b = self.token_bytes(int(t))
            parts.append(b)
            before += len(b)
        text = b"".join(reversed(parts))
        start_of_last = len(text) - len(last)
        return any(text.find(s, max(0, start_of_last - len(s) + 1)) != -1 for s in self._targets)

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        return np.array([self._row_matches(row) for row in np.asarray(input_ids)], dtype=bool)


def _uses_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return False
    if type(decoder).__name__ == "ByteLevel":
        return True
    try:
        return '"ByteLevel"' in json.dumps(json.loads(decoder.__getstate__()))
    except Exception:  # decoders without a JSON state
        return False
