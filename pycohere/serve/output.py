"""From a request's settings to ``generate`` keywords, and from generated tokens to OpenAI's text deltas
and logprobs (no HTTP here).

Text deltas come from the tokenizer's incremental detokenizer, so a delta never holds half a UTF-8
character; text that may be the start of a stop string is held back until it is known not to be one,
and the stop string itself is never sent (OpenAI's rule).
"""
from __future__ import annotations

from ..errors import GenerationConfigError, RequestError
from ..generation.sampling import normalize_token_ids
from .engine import Token
from .protocol import MAX_STOP_LENGTH, Sampling


def generation_kwargs(model, sampling: Sampling, prompt_length: int, context_length: int,
                      param: str = "messages") -> dict:
    """``generate`` keywords for a request; settings it leaves out come from the checkpoint's
    generation_config. ``temperature: 0`` is greedy decoding (as llama.cpp and vLLM). Checked here,
    before the request is queued: a bad combination is a 400, not a failed generation."""
    gc = model.generation_config
    room = context_length - prompt_length
    if room < 1:
        raise RequestError(f"the prompt is {prompt_length} tokens; this model's context is {context_length} tokens: "
                           "shorten the conversation", param=param, code="context_length_exceeded")
    if sampling.max_tokens is not None and sampling.max_tokens > room:
        raise RequestError(f"this model's context is {context_length} tokens; the prompt is {prompt_length} and "
                           f"max_tokens asks for {sampling.max_tokens}: ask for at most {room}",
                           param="max_tokens", code="context_length_exceeded")
    kw = {"max_new_tokens": sampling.max_tokens or min(gc.resolved_max_new_tokens(prompt_length), room),
          "eos_token_id": [] if sampling.ignore_eos else normalize_token_ids(gc.eos_token_id, "eos_token_id")}
    if sampling.temperature == 0:
        kw["do_sample"] = False
    elif sampling.temperature is not None:
        kw.update(do_sample=True, temperature=sampling.temperature)
    for name in ("top_p", "top_k", "min_p", "seed"):
        if getattr(sampling, name) is not None:
            kw[name] = getattr(sampling, name)
    if sampling.stop:
        kw["stop_strings"] = list(sampling.stop)
    try:
        gc.update(**{k: v for k, v in kw.items() if k != "seed"}).validate(model.config.vocab_size, prompt_length)
    except GenerationConfigError as exc:
        raise RequestError(str(exc)) from None
    return kw


class TextOutput:
    """Generated tokens -> (text delta, logprob entries) pairs for one answer.

    ``raw=True`` keeps special tokens in the text (tool-call and citation markup is read from it);
    eos tokens never reach the text nor the logprobs (OpenAI shows no end-of-turn token).
    """

    def __init__(self, engine, prompt_ids: list[int], stop: list[str], eos: list[int], raw: bool = False):
        self.engine, self.stop, self.eos = engine, stop, set(eos)
        self.detok = engine.tokenizer.decode_stream(skip_special_tokens=not raw, prompt_ids=prompt_ids)
        self.text, self.sent, self.stopped, self.pending = "", 0, False, []

    def entry(self, token_id: int, logprob: float) -> dict:
        b = self.engine.token_bytes(token_id)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(b)}

    def _logprob(self, t: Token) -> dict:
        return {**self.entry(t.id, t.logprob), "top_logprobs": [self.entry(i, lp) for i, lp in t.top]}

    def add(self, t: Token) -> tuple[str, list[dict]]:
        if self.stopped or t.id in self.eos:
            return "", []
        if t.logprob is not None:
            self.pending.append(self._logprob(t))
        self.text += self.detok.step(t.id)
        return self._emit(final=False)

    def finish(self) -> tuple[str, list[dict]]:
        if not self.stopped:
            self.text += self.detok.flush()
        return self._emit(final=True)

    def _emit(self, final: bool) -> tuple[str, list[dict]]:
        if self.stop and not self.stopped:
            hits = [i for i in (self.text.find(s, max(0, self.sent - MAX_STOP_LENGTH)) for s in self.stop) if i >= 0]
            if hits:
                self.text, self.stopped = self.text[:min(hits)], True
        end = len(self.text)
        if not final and not self.stopped:  # hold back what may be the start of a stop string
            end -= max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        end = max(end, self.sent)
        delta, self.sent = self.text[self.sent:end], end
        if not delta and not final:
            return "", []
        entries, self.pending = self.pending, []
        return delta, entries


def finish_reason(output: TextOutput, hit_eos: bool, completion_tokens: int, max_new_tokens: int) -> str:
    if output.stopped or hit_eos or completion_tokens < max_new_tokens:
        return "stop"
    return "length"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}
