"""The OpenAI request bodies ``pycohere serve`` accepts, checked field by field into plain dataclasses.

Every check raises ``RequestError`` naming the field (OpenAI's ``param``) and what to send instead; the
app turns it into a 4xx with OpenAI's error object. Names and ranges follow OpenAI's API reference
(``temperature`` in [0, 2], ``top_logprobs`` <= 20, ``n``...); ``top_k``, ``min_p``, ``ignore_eos``,
``documents`` and ``citation_mode`` are extensions (the first three as vLLM and llama.cpp name them,
the last two as Cohere's own chat API).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import RequestError

#: At most this many stop strings (OpenAI allows 4; llama.cpp any number) and bytes per string.
MAX_STOP_STRINGS, MAX_STOP_LENGTH = 16, 256
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
#: OpenAI fields that change nothing here; accepted so that clients sending them keep working.
IGNORED = frozenset({"user", "store", "metadata", "service_tier", "parallel_tool_calls", "modalities",
                     "prediction", "reasoning_effort", "safety_identifier", "prompt_cache_key", "verbosity"})


@dataclass
class Sampling:
    """The generation settings of one request (None: the checkpoint's generation_config decides)."""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class ChatRequest:
    model: str | None
    messages: list[dict]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    tools: list[dict] | None = None
    documents: list[dict] | None = None
    citation_mode: str = "accurate"


@dataclass
class CompletionRequest:
    model: str | None
    prompt: str | list[int]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    echo: bool = False


# --- field checks -------------------------------------------------------------------------------
def _bad(param: str, message: str, code: str | None = None) -> RequestError:
    return RequestError(message, param=param, code=code)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, name: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, f"'{name}' must be a number, got {json.dumps(v)}")
    if v < lo or v > hi or (lo_open and v == lo):
        raise _bad(name, f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return float(v)


def _integer(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise _bad(name, f"'{name}' must be an integer, got {json.dumps(v)}")
    if v < lo or (hi is not None and v > hi):
        raise _bad(name, f"'{name}' must be an integer in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
    return v


def _boolean(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(name, f"'{name}' must be true or false, got {json.dumps(v)}")
    return v


def _check_fields(body: dict, known: frozenset) -> None:
    unknown = sorted(set(body) - known - IGNORED)
    if unknown:  # OpenAI refuses them too ("Unrecognized request argument supplied")
        raise _bad(unknown[0], f"unrecognized request argument '{unknown[0]}'; pycohere serve accepts "
                               f"{', '.join(sorted(known))}")


def _unsupported(body: dict) -> None:
    """Fields whose non-default values would change the answer in ways not implemented: refused, not ignored."""
    for name in ("frequency_penalty", "presence_penalty"):
        v = body.get(name)
        if v is not None and v != 0:
            raise _bad(name, f"'{name}' is not supported by pycohere serve; leave it out (or 0)")
    if body.get("logit_bias"):
        raise _bad("logit_bias", "'logit_bias' is not supported by pycohere serve; leave it out")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise _bad("response_format", "only response_format {\"type\": \"text\"} is supported (no JSON mode)")


def _sampling(body: dict, max_tokens_names: tuple[str, ...], logprobs_style: str) -> Sampling:
    s = Sampling()
    for name in max_tokens_names:
        v = _integer(body, name, 1)
        if v is not None:
            s.max_tokens = v
    s.temperature = _number(body, "temperature", 0.0, 2.0)
    s.top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    s.top_k = _integer(body, "top_k", 0)
    s.min_p = _number(body, "min_p", 0.0, 1.0)
    s.seed = _integer(body, "seed", 0, 2**63 - 1)
    n = _integer(body, "n", 1)
    if n is not None and n != 1:
        raise _bad("n", f"pycohere serve returns one choice per request: 'n' must be 1, got {n}; send {n} requests")
    s.ignore_eos = _boolean(body, "ignore_eos")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if (not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop)
                or len(stop) > MAX_STOP_STRINGS or any(len(x.encode()) > MAX_STOP_LENGTH for x in stop)):
            raise _bad("stop", f"'stop' must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of "
                               f"them, each at most {MAX_STOP_LENGTH} bytes")
        s.stop = stop
    if logprobs_style == "chat":  # logprobs: bool, top_logprobs: 0..20
        s.logprobs = _boolean(body, "logprobs")
        top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if top is not None and not s.logprobs:
            raise _bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        s.top_logprobs = top or 0
    else:  # the legacy completions API: logprobs is the number of alternatives, 0..5 (llama.cpp allows 20)
        top = _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
        s.logprobs, s.top_logprobs = top is not None, top or 0
    return s


def _stream_options(body: dict, stream: bool) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict) or set(opts) - {"include_usage", "include_obfuscation"}:
        raise _bad("stream_options", "'stream_options' must be an object like {\"include_usage\": true}")
    if not stream:
        raise _bad("stream_options", "'stream_options' is only allowed with \"stream\": true")
    return _boolean(opts, "include_usage")


def _model(body: dict) -> str | None:
    m = body.get("model")
    if m is not None and not isinstance(m, str):
        raise _bad("model", f"'model' must be a string, got {json.dumps(m)}")
    return m


# --- messages, tools, documents -----------------------------------------------------------------
ROLES = ("system", "developer", "user", "assistant", "tool")


def _text_content(content, where: str, allow_none: bool) -> str | None:
    """A message's content: a string or a list of ``{"type": "text", "text": ...}`` parts (joined)."""
    if content is None and allow_none:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        parts = []
        for p in content:
            if p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise _bad(where, f"{where}: only text content parts are supported, got a {p.get('type')!r} part")
            parts.append(p["text"])
        return "".join(parts)
    raise _bad(where, f"{where} must be a string or a list of text parts, got {json.dumps(content)[:80]}")


def _tool_calls(calls, where: str) -> list[dict]:
    if not isinstance(calls, list) or not calls:
        raise _bad(where, f"{where} must be a non-empty list of tool calls")
    out = []
    for k, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(where, f"{where}[{k}] needs a 'function' with a string 'name'")
        args = fn.get("arguments", "{}")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            raise _bad(where, f"{where}[{k}].function.arguments must be a JSON object encoded as a string") from None
        if not isinstance(args, dict):
            raise _bad(where, f"{where}[{k}].function.arguments must encode a JSON object")
        out.append({"id": str(c.get("id", f"call_{k}")), "type": "function",
                    "function": {"name": fn["name"], "arguments": args}})
    return out


def parse_messages(messages) -> list[dict]:
    """OpenAI chat messages -> ``{"role", "content", ...}`` dicts with string content ("developer" is
    OpenAI's newer name for "system"); assistant ``tool_calls`` arguments decoded to objects, as chat
    templates expect them."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(where, f"{where} must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)}")
        calls = m.get("tool_calls") if role == "assistant" else None
        content = _text_content(m.get("content"), f"{where}.content", allow_none=role == "assistant" and bool(calls))
        msg = {"role": "system" if role == "developer" else role, "content": content}
        if calls:
            msg["tool_calls"] = _tool_calls(calls, f"{where}.tool_calls")
        if role == "tool":
            if not isinstance(m.get("tool_call_id"), str):
                raise _bad(f"{where}.tool_call_id", f"{where} (a tool result) needs the string 'tool_call_id' "
                                                    "of the call it answers")
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def parse_tools(body: dict) -> list[dict] | None:
    """OpenAI ``tools`` (``{"type": "function", "function": {"name", "description", "parameters"}}``);
    ``tool_choice`` "auto" (the default) keeps them, "none" drops them."""
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if choice not in ("auto", "none", None):
        raise _bad("tool_choice", "'tool_choice' must be \"auto\" or \"none\": Command-R decides itself whether "
                                  "to call a tool (forcing a call is not supported)")
    if tools is None or choice == "none":
        return None
    if not isinstance(tools, list) or not tools:
        raise _bad("tools", "'tools' must be a non-empty list of {\"type\": \"function\", \"function\": {...}}")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{i}]", f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                                      "\"description\": ..., \"parameters\": {JSON schema}}}}")
        params = fn.get("parameters", {})
        if not isinstance(params, dict) or not isinstance(params.get("properties", {}), dict):
            raise _bad(f"tools[{i}].function.parameters", f"tools[{i}].function.parameters must be a JSON schema "
                                                          "object with 'properties'")
        if not isinstance(fn.get("description", ""), str):
            raise _bad(f"tools[{i}].function.description", f"tools[{i}].function.description must be a string")
    return tools


def parse_documents(body: dict) -> list[dict] | None:
    """``documents``: a list of objects with string fields (Cohere's chat API: ``{"title", "text"}``...)."""
    docs = body.get("documents")
    if docs is None:
        return None
    if not isinstance(docs, list) or not docs:
        raise _bad("documents", "'documents' must be a non-empty list of objects with text fields, "
                                "e.g. [{\"title\": ..., \"text\": ...}]")
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not d or not all(isinstance(v, str) for v in d.values()):
            raise _bad(f"documents[{i}]", f"documents[{i}] must be an object whose values are strings, "
                                          f"e.g. {{\"title\": ..., \"text\": ...}}")
    return docs


# --- the two request kinds ----------------------------------------------------------------------
CHAT_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                         "temperature", "top_p", "top_k", "min_p", "seed", "stop", "n", "logprobs", "top_logprobs",
                         "tools", "tool_choice", "documents", "citation_mode", "ignore_eos", "frequency_penalty",
                         "presence_penalty", "logit_bias", "response_format"})
COMPLETION_FIELDS = frozenset({"model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p",
                               "top_k", "min_p", "seed", "stop", "n", "logprobs", "echo", "ignore_eos",
                               "frequency_penalty", "presence_penalty", "logit_bias", "suffix", "best_of"})


def parse_chat_request(body) -> ChatRequest:
    if not isinstance(body, dict):
        raise _bad(None, "the request body must be a JSON object")
    _check_fields(body, CHAT_FIELDS)
    _unsupported(body)
    stream = _boolean(body, "stream")
    mode = body.get("citation_mode", "accurate")
    if mode not in ("accurate", "fast"):
        raise _bad("citation_mode", f"'citation_mode' must be \"accurate\" or \"fast\", got {json.dumps(mode)}")
    return ChatRequest(model=_model(body), messages=parse_messages(body.get("messages")),
                       sampling=_sampling(body, ("max_tokens", "max_completion_tokens"), "chat"), stream=stream,
                       include_usage=_stream_options(body, stream), tools=parse_tools(body),
                       documents=parse_documents(body), citation_mode=mode)


def parse_completion_request(body) -> CompletionRequest:
    if not isinstance(body, dict):
        raise _bad(None, "the request body must be a JSON object")
    _check_fields(body, COMPLETION_FIELDS)
    _unsupported(body)
    if body.get("suffix") is not None:
        raise _bad("suffix", "'suffix' (fill-in-the-middle) is not supported by Command-R models")
    if body.get("best_of") not in (None, 1):
        raise _bad("best_of", "'best_of' must be 1")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if not (isinstance(prompt, str) and prompt) and not (isinstance(prompt, list) and prompt
                                                         and all(_is_int(t) for t in prompt)):
        raise _bad("prompt", "'prompt' must be a non-empty string or a list of token ids (one prompt per request)")
    stream = _boolean(body, "stream")
    return CompletionRequest(model=_model(body), prompt=prompt, sampling=_sampling(body, ("max_tokens",), "legacy"),
                             stream=stream, include_usage=_stream_options(body, stream), echo=_boolean(body, "echo"))


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
