"""The HTTP side: a Starlette app with OpenAI's endpoints and llama.cpp's introspection endpoints.

Bad requests get a 4xx with OpenAI's error object and the server keeps serving; bodies are read up to
``max_body_bytes`` before anything is parsed; ``api_key`` enforces ``Authorization: Bearer`` on every
endpoint but ``/health``. Streams are server-sent events in OpenAI's chunk shape, ending ``data: [DONE]``.
A client that disconnects cancels its generation (Starlette cancels the stream's generator; the worker
sees the flag at its next token).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import ChatTemplateError, PycohereError, RequestError
from ..version import __version__
from .engine import Engine, Finished, Job, Token
from .output import TextOutput, finish_reason, generation_kwargs, usage
from .prompts import Answer, build_prompt, read_answer
from .protocol import error_body, parse_chat_request, parse_completion_request, parse_messages, \
    parse_documents, parse_tools

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_TOKENIZE_IDS = 1_000_000
FINGERPRINT = f"pycohere-{__version__}"


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def busy(engine: Engine) -> None:
    """A full queue is answered before a stream starts (once it has, the status is 200)."""
    if engine.queue.full():
        raise RequestError(f"the server is busy: {engine.queue.maxsize} requests are already waiting; retry later",
                           status=503, type="server_error", code="server_busy")


class _Request:
    """One generation: the job on the worker and the asyncio queue its events arrive on."""

    def __init__(self, engine: Engine, ids: list[int], kwargs: dict, top_logprobs: int | None):
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()

        def emit(event):
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:   # the event loop is gone (server shutting down)
                job.cancel()

        job = Job(ids, kwargs, emit, top_logprobs)
        self.job = job
        engine.submit(job)

    async def events_until_done(self, request: Request | None = None):
        """Token events, then the Finished; an exception from the worker is raised here. With ``request``
        (non-streaming), a client that went away cancels the job."""
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if request is not None and await request.is_disconnected():
                        self.job.cancel()
                        return
                    continue
                if isinstance(event, Exception):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            self.job.cancel()  # a no-op once finished; stops the worker when the client left mid-stream


def create_app(engine: Engine, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    metrics = engine.metrics
    tok = engine.tokenizer
    special_tokens = tuple(tok.all_special_tokens)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), api_key.encode())):
            raise RequestError("missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                               status=401, code="invalid_api_key")

    async def read_json(request: Request):
        authorize(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise RequestError(f"the request body is {declared} bytes; the limit is {max_body_bytes}", status=413,
                               code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise RequestError(f"the request body is over the limit of {max_body_bytes} bytes", status=413,
                                   code="request_too_large")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}", code="invalid_json") from None

    def check_model(name: str | None) -> None:
        if name is not None and name != engine.model_name:
            raise RequestError(f"the model '{name}' does not exist; this server serves '{engine.model_name}' "
                               "(GET /v1/models)", param="model", code="model_not_found", status=404)

    def endpoint(fn):
        """Count the request; turn a RequestError (or any pycohere input error) into OpenAI's 4xx."""
        async def wrapped(request: Request) -> Response:
            try:
                response = await fn(request)
            except RequestError as exc:
                response = _error(exc)
            except (ChatTemplateError, PycohereError) as exc:
                response = _error(RequestError(str(exc)))
            metrics.count_request(request.url.path, response.status_code)
            return response
        return wrapped

    def logprobs_obj(entries: list[dict] | None):
        return None if entries is None else {"content": entries, "refusal": None}

    # --- chat --------------------------------------------------------------------------------------
    async def chat_parts(req, prompt, request: Request | None):
        """The answer as parts: ("text", delta, logprob entries) while streaming plain chat, then
        ("answer", Answer | None, entries) and ("done", finish_reason, usage)."""
        total_prompt = total_completion = total_cached = 0
        while True:
            kw = generation_kwargs(engine.model, req.sampling, len(prompt.ids), engine.context_length)
            raw = prompt.kind != "chat"
            out = TextOutput(engine, prompt.ids, req.sampling.stop, kw["eos_token_id"], raw=raw)
            gen = _Request(engine, prompt.ids, kw, req.sampling.top_logprobs if req.sampling.logprobs else None)
            entries, finished = [], None
            async for event in gen.events_until_done(request):
                if isinstance(event, Token):
                    delta, lps = out.add(event)
                    if raw:
                        entries += lps
                    elif delta or lps:
                        yield "text", delta, lps
                else:
                    finished = event
            if finished is None:  # the client left
                return
            delta, lps = out.finish()
            total_prompt += finished.prompt_tokens
            total_completion += finished.completion_tokens
            total_cached += finished.cached_tokens
            reason = finish_reason(out, finished.hit_eos, finished.completion_tokens, kw["max_new_tokens"])
            if not raw:
                if delta or lps:
                    yield "text", delta, lps
                break
            answer = read_answer(out.text, prompt, special_tokens)
            if answer.directly_answer:   # Command-R chose to answer without tools: ask it for that answer
                try:
                    prompt = build_prompt(tok, req.messages, None, None)
                    continue
                except ChatTemplateError:
                    answer = Answer("")
            if answer.tool_calls and reason == "stop":
                reason = "tool_calls"
            yield "answer", answer, entries + lps
            break
        yield "done", reason, usage(total_prompt, total_completion, total_cached)

    def tool_call_objs(answer: Answer, stream: bool, rid: str) -> list[dict]:
        calls = []
        for k, c in enumerate(answer.tool_calls):
            call = {"id": c.get("id") or f"call_{rid[-12:]}_{k}", "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]}}
            calls.append({"index": k, **call} if stream else call)
        return calls

    async def chat_completions(request: Request) -> Response:
        req = parse_chat_request(await read_json(request))
        check_model(req.model)
        prompt = build_prompt(tok, req.messages, req.tools, req.documents, req.citation_mode)
        generation_kwargs(engine.model, req.sampling, len(prompt.ids), engine.context_length)  # 400 before queueing
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "created": created, "model": engine.model_name, "system_fingerprint": FINGERPRINT}
        want_lp = req.sampling.logprobs

        if not req.stream:
            text, entries, answer, reason, use = [], [], None, None, None
            async for kind, a, b in chat_parts(req, prompt, request):
                if kind == "text":
                    text.append(a)
                    entries += b
                elif kind == "answer":
                    answer, entries = a, entries + b
                else:
                    reason, use = a, b
            if reason is None:
                return Response(status_code=499)  # the client closed the request (nginx's code); nobody reads it
            message = {"role": "assistant", "content": "".join(text) if answer is None else answer.content}
            if answer is not None and answer.tool_calls:
                message["tool_calls"] = tool_call_objs(answer, False, rid)
            if answer is not None and answer.citations is not None:
                message["citations"] = answer.citations
            return JSONResponse({**head, "object": "chat.completion", "usage": use, "choices": [
                {"index": 0, "message": message, "logprobs": logprobs_obj(entries) if want_lp else None,
                 "finish_reason": reason}]})

        extra = {"usage": None} if req.include_usage else {}

        def chunk(delta, reason=None, entries=None):
            return _sse({**head, "object": "chat.completion.chunk", **extra, "choices": [
                {"index": 0, "delta": delta, "logprobs": logprobs_obj(entries) if want_lp else None,
                 "finish_reason": reason}]})

        def part_chunks(kind, a, b):
            """One part of the answer -> its SSE events."""
            if kind == "text":
                yield chunk({"content": a}, entries=b)
            elif kind == "answer" and a.tool_calls:  # id, type and name first, then the arguments (OpenAI's order)
                calls = tool_call_objs(a, True, rid)
                for call in calls:
                    name = call["function"]["name"]
                    yield chunk({"tool_calls": [{**call, "function": {"name": name, "arguments": ""}}]})
                    yield chunk({"tool_calls": [{"index": call["index"],
                                                 "function": {"arguments": call["function"]["arguments"]}}]},
                                entries=b if call is calls[-1] else [])
            elif kind == "answer":
                delta = {"content": a.content}
                if a.citations is not None:
                    delta["citations"] = a.citations
                yield chunk(delta, entries=b)
            else:
                yield chunk({}, reason=a)
                if req.include_usage:
                    yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": b})

        async def stream():
            yield chunk({"role": "assistant", "content": None})
            try:
                async for part in chat_parts(req, prompt, None):
                    for event in part_chunks(*part):
                        yield event
            except Exception as exc:  # after the 200 is sent an error can only be told in the stream (as llama.cpp)
                yield _sse(error_body(f"{type(exc).__name__}: {exc}", "server_error"))
            yield "data: [DONE]\n\n"

        busy(engine)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- completions -------------------------------------------------------------------------------
    async def completions(request: Request) -> Response:
        req = parse_completion_request(await read_json(request))
        check_model(req.model)
        if isinstance(req.prompt, str):
            ids = tok.encode(req.prompt)
        else:
            ids = list(req.prompt)
            if not all(0 <= i < engine.model.config.vocab_size for i in ids):
                raise RequestError(f"prompt token ids must lie in [0, {engine.model.config.vocab_size})",
                                   param="prompt")
        if req.echo and req.sampling.logprobs:
            raise RequestError("'echo' with 'logprobs' (logprobs of the prompt) is not supported", param="echo")
        kw = generation_kwargs(engine.model, req.sampling, len(ids), engine.context_length, param="prompt")
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": engine.model_name,
                "system_fingerprint": FINGERPRINT}
        echo = tok.decode(ids, skip_special_tokens=True) if req.echo else ""

        def legacy_logprobs(entries, offset):
            if not req.sampling.logprobs:
                return None
            offsets, pos = [], offset
            for e in entries:
                offsets.append(pos)
                pos += len(e["token"])
            return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                    "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                    "text_offset": offsets}

        async def parts(disconnect_from):
            out = TextOutput(engine, ids, req.sampling.stop, kw["eos_token_id"])
            gen = _Request(engine, ids, kw, req.sampling.top_logprobs if req.sampling.logprobs else None)
            async for event in gen.events_until_done(disconnect_from):
                if isinstance(event, Token):
                    delta, lps = out.add(event)
                    if delta or lps:
                        yield "text", delta, lps
                else:
                    delta, lps = out.finish()
                    if delta or lps:
                        yield "text", delta, lps
                    yield "done", finish_reason(out, event.hit_eos, event.completion_tokens, kw["max_new_tokens"]), \
                        usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens)

        if not req.stream:
            text, entries, reason, use = [echo], [], None, None
            async for kind, a, b in parts(request):
                if kind == "text":
                    text.append(a)
                    entries += b
                else:
                    reason, use = a, b
            if reason is None:
                return Response(status_code=499)
            return JSONResponse({**head, "usage": use, "choices": [
                {"index": 0, "text": "".join(text), "logprobs": legacy_logprobs(entries, len(echo)),
                 "finish_reason": reason}]})

        async def stream():
            offset = len(echo)
            if echo:
                yield _sse({**head, "choices": [{"index": 0, "text": echo, "logprobs": None, "finish_reason": None}]})
            async for kind, a, b in parts(None):
                if kind == "text":
                    yield _sse({**head, "choices": [{"index": 0, "text": a, "logprobs": legacy_logprobs(b, offset),
                                                     "finish_reason": None}]})
                    offset += len(a)
                else:
                    yield _sse({**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": a}]})
                    if req.include_usage:
                        yield _sse({**head, "choices": [], "usage": b})
            yield "data: [DONE]\n\n"

        busy(engine)
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # --- models, introspection ---------------------------------------------------------------------
    def model_card() -> dict:
        return {"id": engine.model_name, "object": "model", "created": engine.created, "owned_by": "pycohere",
                "meta": {"model_type": engine.model.config.model_type, "context_length": engine.context_length,
                         "vocab_size": engine.model.config.vocab_size}}

    async def models(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        authorize(request)
        check_model(request.path_params["model"])
        return JSONResponse(model_card())

    async def tokenize(request: Request) -> Response:
        """llama.cpp's /tokenize: {"content", "add_special", "with_pieces"} -> {"tokens": [...]}; a piece is
        a string, or a list of byte values when the token is not whole UTF-8 (as llama.cpp)."""
        body = await read_json(request)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise RequestError("/tokenize needs {\"content\": \"text\"}", param="content")
        add_special, pieces = (body.get(k, False) for k in ("add_special", "with_pieces"))
        if not isinstance(add_special, bool) or not isinstance(pieces, bool):
            raise RequestError("'add_special' and 'with_pieces' must be true or false")
        ids = tok.encode(content, add_special_tokens=add_special)
        if not pieces:
            return JSONResponse({"tokens": ids})
        out = []
        for i in ids:
            b = engine.token_bytes(i)
            try:
                piece = b.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(b)
            out.append({"id": i, "piece": piece})
        return JSONResponse({"tokens": out})

    async def detokenize(request: Request) -> Response:
        body = await read_json(request)
        ids = body.get("tokens") if isinstance(body, dict) else None
        V = engine.model.config.vocab_size
        if not isinstance(ids, list) or len(ids) > MAX_TOKENIZE_IDS or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < V for i in ids):
            raise RequestError(f"/detokenize needs {{\"tokens\": [ids]}} with ids in [0, {V})", param="tokens")
        return JSONResponse({"content": tok.decode(ids)})

    async def apply_template(request: Request) -> Response:
        """llama.cpp's /apply-template: the prompt the chat endpoint would run (tools and documents too)."""
        body = await read_json(request)
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        prompt = build_prompt(tok, parse_messages(body.get("messages")), parse_tools(body), parse_documents(body),
                              body.get("citation_mode", "accurate"))
        return JSONResponse({"prompt": tok.decode(prompt.ids), "tokens": len(prompt.ids)})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_text(request: Request) -> Response:
        authorize(request)
        return PlainTextResponse(metrics.render(engine.queue.qsize()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        response = JSONResponse(error_body(str(exc.detail), code="not_found" if exc.status_code == 404 else None),
                                status_code=exc.status_code)
        metrics.count_request("(other)", exc.status_code)
        return response

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), 500)

    routes = [Route(p, endpoint(f), methods=[m]) for ps, f, m in (
        (("/v1/chat/completions", "/chat/completions"), chat_completions, "POST"),
        (("/v1/completions", "/completions"), completions, "POST"),
        (("/v1/models", "/models"), models, "GET"),
        (("/v1/models/{model:path}",), model, "GET"),
        (("/tokenize",), tokenize, "POST"),
        (("/detokenize",), detokenize, "POST"),
        (("/apply-template",), apply_template, "POST"),
        (("/health", "/v1/health"), health, "GET"),
        (("/metrics",), metrics_text, "GET"),
    ) for p in ps]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
