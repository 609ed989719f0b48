"""pycohere serve against a real server on a loopback port (uvicorn on a thread, port 0, as mlx-lm's tests),
driven by the official ``openai`` client and by raw HTTP (SSE framing, error shapes).

Oracles: a second, independent load of the demo model (``model.generate``: greedy output token for token,
logprobs from ``output_logits``), the tokenizer, OpenAI's wire format (the ``openai`` client's own parser
and types) and ``prometheus_client``'s text parser. Exact tool-call and citation outputs are forced (a
logits processor that leaves one token possible per step, through the real generation loop) to check what
the server makes of them; the demo model's own greedy tool calls and citations, on held-out requests, are
checked by their rate.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import pycohere  # noqa: E402
from pycohere.checkpoints import probe  # noqa: E402
from pycohere.generation import TokenBytes  # noqa: E402
from pycohere.serve import Engine, Server  # noqa: E402

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city today.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"]}}}
DOCUMENTS = [{"title": "Tall penguins", "text": "Emperor penguins are the tallest."},
             {"title": "Penguin habitats", "text": "Emperor penguins only live in Antarctica."}]


class ForcedModel:
    """The demo model, but each generate() call may be made to write given texts (one per call, in order):
    a logits processor leaves only the next forced token possible, then eos. Everything else (the loop,
    the cache, streamer, logprobs hook) is the real one."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.texts, self.delay = model, tokenizer, [], 0.0
        self.config = model.config

    @property
    def generation_config(self):
        return self.model.generation_config

    def force(self, *texts):
        self.texts = list(texts)

    def generate(self, input_ids, logits_processor=None, **kw):
        procs = list(logits_processor or [])
        if self.delay:
            procs.append(lambda ids, scores: (time.sleep(self.delay), scores)[1])
        if self.texts:
            target = self.tokenizer.encode(self.texts.pop(0), add_special_tokens=False) + [9]
            start = len(input_ids[0])

            def force(ids, scores):
                out = np.full_like(scores, -np.inf)
                out[:, target[min(ids.shape[1] - start, len(target) - 1)]] = 0.0
                return out
            procs.append(force)
        return self.model.generate(input_ids, logits_processor=procs, **kw)


@pytest.fixture(scope="module")
def demo():
    found = probe(pycohere.DEMO_MODEL)
    return pycohere.AutoModelForCausalLM.from_pretrained(found), pycohere.CohereTokenizer.from_pretrained(found)


@pytest.fixture(scope="module")
def oracle():
    """An independent load of the demo model: what the server's answers are compared with."""
    found = probe(pycohere.DEMO_MODEL)
    return pycohere.AutoModelForCausalLM.from_pretrained(found), pycohere.CohereTokenizer.from_pretrained(found)


@pytest.fixture(scope="module")
def server(demo):
    model, tok = demo
    engine = Engine(ForcedModel(model, tok), tok, "pycohere-demo")
    srv = Server(engine, port=0, log_level="warning", max_body_bytes=1 << 20).start()
    yield srv
    srv.stop()
    engine.close()


@pytest.fixture()
def forced(server):
    m = server.engine.model
    yield m
    m.texts, m.delay = [], 0.0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


# --- raw HTTP helpers --------------------------------------------------------------------------------
def request(srv, method, path, body=None, headers=None, raw: bytes | None = None):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    c.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    out = r.read()
    c.close()
    return r.status, r.getheader("content-type"), out


def post(srv, path, body, **kw):
    status, ctype, out = request(srv, "POST", path, body, **kw)
    return status, json.loads(out)


def sse_events(raw: bytes) -> list:
    """Parse an SSE body strictly: every event is exactly one 'data: ...' line and a blank line."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    events = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def stream(srv, path, body):
    status, ctype, out = request(srv, "POST", path, body)
    assert status == 200 and ctype.startswith("text/event-stream"), (status, out[:300])
    return sse_events(out)


# --- oracles -------------------------------------------------------------------------------------------
def greedy(oracle, ids, n, **kw):
    model, tok = oracle
    out = model.generate([ids], do_sample=False, max_new_tokens=n, return_dict_in_generate=True, output_logits=True,
                         **kw)
    new = out.sequences[0, len(ids):].tolist()
    return new, [np.asarray(l[0], dtype=np.float64) for l in out.logits]


def chat_ids(oracle, messages):
    return oracle[1].apply_chat_template(messages, add_generation_prompt=True)


def visible(tokens, eos=(9, 6)):
    return [t for t in tokens if t not in eos]


# --- chat: greedy, logprobs, streaming -----------------------------------------------------------------
def test_greedy_is_model_generate_token_for_token_with_its_logprobs(server, client, oracle):
    server.engine.prompt_cache.entries.clear()   # a fresh prefill: no reuse in this comparison
    r = client.chat.completions.create(model="pycohere-demo", messages=HELLO, temperature=0, max_tokens=24,
                                       logprobs=True, top_logprobs=3)
    tokens, logits = greedy(oracle, chat_ids(oracle, HELLO), 24)
    tok = oracle[1]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "pycohere-demo"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == tok.decode(tokens, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(chat_ids(oracle, HELLO)) and r.usage.completion_tokens == len(tokens)
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.choices[0].finish_reason == ("stop" if tokens[-1] in (9, 6) else "length")
    token_bytes = TokenBytes(tok)
    entries = r.choices[0].logprobs.content
    assert [bytes(e.bytes) for e in entries] == [token_bytes(t) for t in visible(tokens)]   # token for token
    for e, t, lg in zip(entries, tokens, logits):
        lp = lg - lg.max() - np.log(np.exp(lg - lg.max()).sum())
        assert e.logprob == pytest.approx(lp[t], abs=1e-6)
        best = np.argsort(-lp, kind="stable")[:3]
        assert [bytes(x.bytes) for x in e.top_logprobs] == [token_bytes(int(i)) for i in best]
        assert [x.logprob for x in e.top_logprobs] == pytest.approx(lp[best].tolist(), abs=1e-6)


def test_stream_framing_is_openais(server, oracle):
    body = {"model": "pycohere-demo", "messages": HELLO, "temperature": 0, "max_tokens": 16, "stream": True,
            "stream_options": {"include_usage": True}}
    events = stream(server, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first, usage_chunk, finishing = chunks[0], chunks[-1], chunks[-2]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert finishing["choices"][0]["finish_reason"] in ("stop", "length") and finishing["choices"][0]["delta"] == {}
    middle = chunks[1:-2]
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in middle)   # no role after the first
    tokens, _ = greedy(oracle, chat_ids(oracle, HELLO), 16)
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == \
        oracle[1].decode(tokens, skip_special_tokens=True)
    without = stream(server, "/v1/chat/completions", {**body, "stream_options": None})
    assert all("usage" not in c for c in without[:-1]) and without[-2]["choices"][0]["finish_reason"]


def test_openai_client_reads_the_stream_with_logprobs(client):
    args = dict(model="pycohere-demo", messages=[{"role": "user", "content": "Who are you?"}], temperature=0,
                max_tokens=20, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**args)
    parts, entries, reasons, usage = [], [], [], None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            entries += choice.logprobs.content if choice.logprobs and choice.logprobs.content else []
            reasons.append(choice.finish_reason)
    assert "".join(parts) == whole.choices[0].message.content
    ref = whole.choices[0].logprobs.content
    # same tokens; the values agree to float32 rounding (the second request continues the first's cached
    # prefix, so its prefill is split differently)
    assert [e.token for e in entries] == [e.token for e in ref]
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in ref], abs=1e-5)
    assert [[t.token for t in e.top_logprobs] for e in entries] == [[t.token for t in e.top_logprobs] for e in ref]
    assert reasons[-1] == whole.choices[0].finish_reason and all(r is None for r in reasons[:-1])
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_deltas_never_split_a_utf8_character(server, forced, oracle):
    text = "Grüße 🙂 日本語 ok"
    token_bytes = TokenBytes(oracle[1])
    ids = oracle[1].encode(text, add_special_tokens=False)
    assert any(_not_utf8(token_bytes(i)) for i in ids), "the test needs a token that is part of a character"
    forced.force(text)
    events = stream(server, "/v1/chat/completions", {"messages": HELLO, "stream": True, "max_tokens": 64,
                                                     "logprobs": True})
    deltas = [c["choices"][0] for c in events[1:-1] if c["choices"][0]["delta"].get("content") is not None]
    assert all("\ufffd" not in d["delta"]["content"] for d in deltas)
    assert "".join(d["delta"]["content"] for d in deltas) == text
    # each chunk's logprobs are the tokens of its text: their bytes add up to exactly that text
    for d in deltas:
        assert b"".join(bytes(e["bytes"]) for e in d["logprobs"]["content"]) == d["delta"]["content"].encode()
    assert len(deltas) < len(ids)  # some tokens were held back until their character was complete


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_stop_strings_cut_the_answer_streamed_or_not(server, client, oracle):
    tokens, _ = greedy(oracle, chat_ids(oracle, HELLO), 30)
    full = oracle[1].decode(tokens, skip_special_tokens=True)
    stop = full.split()[4]          # a word the greedy answer reaches
    expected = full[:full.index(stop)]
    r = client.chat.completions.create(model="pycohere-demo", messages=HELLO, temperature=0, max_tokens=30, stop=[stop])
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    events = stream(server, "/v1/chat/completions", {"messages": HELLO, "temperature": 0, "max_tokens": 30,
                                                     "stop": stop, "stream": True})
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in events[1:-1]]
    assert "".join(deltas) == expected and stop not in "".join(deltas)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_seed_makes_sampling_reproducible_and_equal_to_generate(client, oracle):
    args = dict(model="pycohere-demo", messages=HELLO, temperature=0.9, top_p=0.95, max_tokens=20, seed=1234)
    a = client.chat.completions.create(**args).choices[0].message.content
    b = client.chat.completions.create(**args).choices[0].message.content
    model, tok = oracle
    gc = model.generation_config
    ids = chat_ids(oracle, HELLO)
    out = model.generate([ids], do_sample=True, temperature=0.9, top_p=0.95, top_k=gc.top_k, max_new_tokens=20,
                         seed=1234)
    assert a == b == tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def test_second_turn_reuses_the_prompt_cache_and_answers_the_same(client, oracle, server):
    first = [{"role": "user", "content": "Tell me my fortune."}]
    r1 = client.chat.completions.create(model="pycohere-demo", messages=first, temperature=0, max_tokens=24)
    turn2 = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                     {"role": "user", "content": "And another?"}]
    r2 = client.chat.completions.create(model="pycohere-demo", messages=turn2, temperature=0, max_tokens=24)
    first_prompt = len(chat_ids(oracle, first))
    assert r2.usage.prompt_tokens_details.cached_tokens > first_prompt  # the first prompt and (part of) its answer
    tokens, _ = greedy(oracle, chat_ids(oracle, turn2), 24)             # no cache at all
    assert r2.choices[0].message.content == oracle[1].decode(tokens, skip_special_tokens=True)


# --- tool calls ----------------------------------------------------------------------------------------
COMMAND_R_ACTION = ('Action: ```json\n[\n    {\n        "tool_name": "get_weather",\n        "parameters": '
                    '{"city": "Paris"}\n    }\n]\n```')
R7B_ACTION = ('<|START_THINKING|>I will look up the weather.<|END_THINKING|><|START_ACTION|>[\n'
              '    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}},\n'
              '    {"tool_call_id": "1", "tool_name": "get_weather", "parameters": {"city": "Rome"}}\n'
              ']<|END_ACTION|>')


def test_tools_render_the_tool_use_template(server, oracle):
    status, out = post(server, "/apply-template", {"messages": [{"role": "user", "content": "Weather in Paris?"}],
                                                   "tools": [WEATHER_TOOL]})
    assert status == 200
    spec = {"name": "get_weather", "description": "The weather in a city today.",
            "parameter_definitions": {"city": {"description": "the city", "type": "str", "required": True}}}
    expected = oracle[1].apply_tool_use_template([{"role": "user", "content": "Weather in Paris?"}],
                                                 tools=[spec, pycohere.serve.prompts.DIRECTLY_ANSWER],
                                                 add_generation_prompt=True, tokenize=False)
    assert out["prompt"] == expected and "def get_weather(city: str) -> List[Dict]:" in expected


@pytest.mark.parametrize("output, calls", [
    (COMMAND_R_ACTION, [("get_weather", {"city": "Paris"})]),
    (R7B_ACTION, [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]),
], ids=["command-r-action", "r7b-start-action"])
def test_model_tool_calls_become_tool_calls(client, forced, output, calls):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    forced.force(output)
    r = client.chat.completions.create(model="pycohere-demo", messages=messages, tools=[WEATHER_TOOL], max_tokens=200)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    got = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert got == calls and all(c.type == "function" and c.id for c in choice.message.tool_calls)
    assert len({c.id for c in choice.message.tool_calls}) == len(calls)
    # streamed: the client's accumulation of the deltas gives the same calls
    forced.force(output)
    acc, reasons = {}, []
    for chunk in client.chat.completions.create(model="pycohere-demo", messages=messages, tools=[WEATHER_TOOL],
                                                max_tokens=200, stream=True):
        for d in chunk.choices[0].delta.tool_calls or []:
            slot = acc.setdefault(d.index, {"id": None, "name": "", "args": ""})
            if d.id:
                assert slot["id"] is None, "the id comes once per call"
                slot["id"] = d.id
            slot["name"] += d.function.name or "" if d.function else ""
            slot["args"] += d.function.arguments or "" if d.function else ""
        reasons.append(chunk.choices[0].finish_reason)
    assert [(acc[i]["name"], json.loads(acc[i]["args"])) for i in sorted(acc)] == calls
    assert reasons[-1] == "tool_calls"


def test_streamed_tool_call_deltas_in_openais_order(server, forced):
    forced.force(R7B_ACTION)
    events = stream(server, "/v1/chat/completions", {"messages": HELLO, "tools": [WEATHER_TOOL], "stream": True,
                                                     "max_tokens": 300})
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in events[1:-1] if "tool_calls" in c["choices"][0]["delta"]]
    assert [d["index"] for d in deltas] == [0, 0, 1, 1]
    assert set(deltas[0]) == {"index", "id", "type", "function"} and deltas[0]["function"]["arguments"] == ""
    assert set(deltas[1]) == {"index", "function"} and set(deltas[1]["function"]) == {"arguments"}
    assert deltas[0]["id"] == "0" and deltas[2]["id"] == "1"   # R7B's tool_call_id


def test_directly_answer_runs_the_chat_template(client, forced, oracle):
    forced.force('Action: ```json\n[{"tool_name": "directly_answer", "parameters": {}}]\n```', "Hello there.")
    r = client.chat.completions.create(model="pycohere-demo", messages=HELLO, tools=[WEATHER_TOOL], max_tokens=100)
    assert r.choices[0].message.content == "Hello there." and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > len(chat_ids(oracle, HELLO))   # both passes are counted


def test_a_tool_result_feeds_the_next_turn_as_cited_documents(server, client, forced):
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"forecast": "sunny, 18 C"})}]
    status, out = post(server, "/apply-template", {"messages": messages, "tools": [WEATHER_TOOL]})
    assert status == 200
    prompt = out["prompt"]
    assert '"tool_name": "get_weather"' in prompt and "Action: ```json" in prompt      # the call, as Command-R wrote it
    assert "Document: 0\ntool_name: get_weather\nforecast: sunny, 18 C\n" in prompt    # the result, as a document
    assert "Grounded answer:" in prompt                                                  # the rag template's task
    forced.force("Relevant Documents: 0\nCited Documents: 0\nAnswer: It is sunny.\n"
                 "Grounded answer: It is <co: 0>sunny, 18 C</co: 0> in Paris.")
    r = client.chat.completions.create(model="pycohere-demo", messages=messages, tools=[WEATHER_TOOL], max_tokens=200)
    msg = r.choices[0].message
    assert msg.content == "It is sunny, 18 C in Paris." and r.choices[0].finish_reason == "stop"
    start = msg.content.index("sunny")
    assert msg.model_extra["citations"] == [{"start": start, "end": start + len("sunny, 18 C"), "text": "sunny, 18 C",
                                             "document_ids": ["doc_0"]}]


def test_documents_give_citations(server, client, forced, oracle):
    question = [{"role": "user", "content": "What is the tallest penguin?"}]
    status, out = post(server, "/apply-template", {"messages": question, "documents": DOCUMENTS})
    assert out["prompt"] == oracle[1].apply_grounded_generation_template(question, documents=DOCUMENTS,
                                                                         add_generation_prompt=True, tokenize=False)
    answer = ("Relevant Documents: 0,1\nCited Documents: 0,1\nAnswer: The emperor penguin.\nGrounded answer: "
              "The <co: 0>emperor penguin</co: 0> is the tallest; it lives in <co: 1>Antarctica</co: 1>.")
    text = "The emperor penguin is the tallest; it lives in Antarctica."
    cites = [{"start": text.index("emperor"), "end": text.index("emperor") + 15, "text": "emperor penguin",
              "document_ids": ["doc_0"]},
             {"start": text.index("Antarctica"), "end": text.index("Antarctica") + 10, "text": "Antarctica",
              "document_ids": ["doc_1"]}]
    forced.force(answer)
    r = client.chat.completions.create(model="pycohere-demo", messages=question, max_tokens=300,
                                       extra_body={"documents": DOCUMENTS})
    assert r.choices[0].message.content == text and r.choices[0].message.model_extra["citations"] == cites
    forced.force(answer)
    events = stream(server, "/v1/chat/completions", {"messages": question, "documents": DOCUMENTS, "stream": True,
                                                     "max_tokens": 300})
    content = [c["choices"][0]["delta"] for c in events[1:-1] if c["choices"][0]["delta"].get("content")]
    assert content == [{"content": text, "citations": cites}]
    # a document's own id is what its citations name
    forced.force(answer)
    r = client.chat.completions.create(model="pycohere-demo", messages=question, max_tokens=300,
                                       extra_body={"documents": [{**DOCUMENTS[0], "id": "penguins-1"}, DOCUMENTS[1]]})
    assert [c["document_ids"] for c in r.choices[0].message.model_extra["citations"]] == [["penguins-1"], ["doc_1"]]


def test_an_answer_that_does_not_parse_is_returned_as_text(client, forced):
    forced.force("Action: ```json\n[{\"tool_name\": ")   # cut off mid-JSON
    r = client.chat.completions.create(model="pycohere-demo", messages=HELLO, tools=[WEATHER_TOOL], max_tokens=200)
    assert r.choices[0].message.content.startswith("Action:") and not r.choices[0].message.tool_calls


# --- the demo model's own tool calls and citations (nothing forced) -------------------------------------
def _tool(name, description, params, required):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {p: {"type": t, "description": d} for p, t, d in params},
        "required": required}}}


# Tool names the training never used (tools/demo_corpus.py HELDOUT_TOOL_NAMES), with descriptions,
# parameters and requests written here: the model has to copy the name, parameter and quoted value.
HELDOUT_TOOLS = [
    ([_tool("get_weather", "The weather in a city today.", [("city", "string", "the city")], ["city"])],
     'What is the weather in "Jerusalem"?'),
    ([_tool("find_verses", "Finds Bible verses about a subject.", [("query", "string", "the subject"),
                                                                   ("limit", "integer", "at most this many")],
            ["query"])], 'Find verses about "shepherd".'),
    ([_tool("search_city", "Search for a city by name.", [("name", "string", "the city's name")], ["name"]),
      _tool("get_weather", "The weather in a city today.", [("city", "string", "the city")], ["city"])],
     'Search the city named "Babylon".'),
    ([_tool("lookup_friend", "Looks up a friend in the address book.", [("person", "string", "who")], ["person"])],
     'Look up my friend "Samuel".'),
    ([_tool("fetch_song", "Fetches a song to play.", [("title", "string", "the song's title")], ["title"]),
      _tool("list_news", "Lists today's news.", [("topic", "string", "a topic")], ["topic"])],
     'Fetch the song "Jubilee".'),
    ([_tool("list_news", "Lists the latest news on a topic.", [("topic", "string", "a topic"),
                                                               ("count", "integer", "how many")],
            ["topic", "count"])], 'List the news on "harvest". Give me 5.'),
    ([_tool("check_email", "Checks a mailbox for new email.", [("key", "string", "the mailbox")], ["key"])],
     'Check my email "inbox".'),
    ([_tool("show_time", "Shows the local time somewhere.", [("place", "string", "where")], ["place"]),
      _tool("read_message", "Reads a message aloud.", [("text", "string", "the message")], ["text"]),
      _tool("create_flight", "Books a flight.", [("place", "string", "the destination")], ["place"])],
     'Show the time in "Egypt".'),
    ([_tool("read_message", "Reads a message aloud.", [("text", "string", "the message")], ["text"])],
     'Read the message "peace be with you".'),
    ([_tool("create_flight", "Books a flight to a city.", [("place", "string", "the destination"),
                                                           ("number", "integer", "passengers")], ["place"])],
     'Create a flight to "Damascus" for 2.'),
]


def _sampled_heldout_tool_requests(n=10):
    """Held-out tool requests drawn as the training script's ``tool_rates`` draws them (tool names in
    HELDOUT_TOOL_NAMES, values from the held-out verses of pycohere/demo/heldout.txt), with seeds it never
    evaluated (it used 0..19 while training): (tools, ask, expected tool name)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import demo_corpus
    verses = tuple(v for v in (Path(pycohere.DEMO_MODEL) / "heldout.txt").read_text(encoding="utf-8").splitlines() if v)
    sampler = demo_corpus.ToolSampler([demo_corpus.Chapter("heldout", 1, verses)], [], heldout=True, direct_p=0.0)
    cases = []
    for i in range(20, 20 + n):
        messages, tools, _, _, expected = sampler.tool_case(np.random.default_rng([0, 11, i]))
        name = json.loads(expected.split("```json", 1)[1].rsplit("```", 1)[0])[0]["tool_name"]
        cases.append((tools, messages[-1]["content"], name))
    return cases


def _tool_answers(client, requests):
    """(valid, exact, every answer a tool call, the answers) for greedy answers to (tools, ask) requests: valid
    when every call names one of the request's tools with JSON-object arguments."""
    valid, exact, all_calls, answers = 0, 0, True, []
    for tools, ask in requests:
        r = client.chat.completions.create(model="pycohere-demo", messages=[{"role": "user", "content": ask}],
                                           tools=tools, temperature=0)
        choice = r.choices[0]
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
        names = {t["function"]["name"] for t in tools}
        ok = bool(calls) and all(n in names and isinstance(a, dict) for n, a in calls)
        assert not calls or (choice.finish_reason == "tool_calls" and choice.message.content is None)
        all_calls &= bool(calls)
        valid += ok
        quoted = ask.split('"')[1]
        exact += ok and calls[0][0] == tools[0]["function"]["name"] and quoted in calls[0][1].values()
        answers.append((ask, calls or choice.message.content))
    return valid, exact, all_calls, answers


def test_the_demo_model_calls_the_requests_tools(client, record_property):
    """Greedy answers to held-out tool requests. Requests drawn like the training script's held-out ones (names
    and values never trained on, the sampler's phrasings), seeds it never evaluated: at least 8 of 10 must call
    the request's own tools with JSON-object arguments, and at least 8 the tool the request asks for (10 and 10
    measured). The requests written above (other phrasings and descriptions, a shift from the training
    distribution): every answer must be a tool call; how many name a request's tool is recorded (7 of 10 for
    the shipped model: it took "book" from "Books a flight" for create_flight, and "send" for "Look up")."""
    sampled = _sampled_heldout_tool_requests()
    valid, exact, all_calls, answers = _tool_answers(client, [(tools, ask) for tools, ask, _ in sampled])
    right = sum(bool(calls) and not isinstance(calls, str) and calls[0][0] == name
                for (_, calls), (_, _, name) in zip(answers, sampled))
    assert valid >= 8 and right >= 8, (valid, right, answers)
    valid, exact, all_calls, answers = _tool_answers(client, HELDOUT_TOOLS)
    record_property("handwritten_tool_requests", json.dumps({"valid": valid, "exact": exact, "of": len(answers)}))
    assert all_calls, answers


def _heldout_documents():
    """Ten document sets of held-out verses (never trained on), each with a word found in one of them only."""
    verses = [v for v in (Path(pycohere.DEMO_MODEL) / "heldout.txt").read_text(encoding="utf-8").splitlines()
              if 20 <= len(v) <= 110]
    cases = []
    for i in range(10):
        docs = [verses[(97 * i + 31 * j) % len(verses)] for j in range(2 + i % 3)]
        k = i % len(docs)
        others = " ".join(d for j, d in enumerate(docs) if j != k).lower()
        word = next(w for w in re.findall(r"[A-Za-z]{5,}", docs[k]) if w.lower() not in others)
        titled = [{"title": f"Verse {j + 1}", "text": d} for j, d in enumerate(docs)]
        cases.append((titled if i % 2 == 0 else [{"text": d} for d in docs], word, k))
    return cases


def test_the_demo_model_cites_the_documents(client):
    """Greedy answers to ten held-out document requests: at least 8 must carry citations naming existing
    documents, each span indexing the returned text."""
    valid, right, answers = 0, 0, []
    for documents, word, k in _heldout_documents():
        r = client.chat.completions.create(model="pycohere-demo", temperature=0, extra_body={"documents": documents},
                                           messages=[{"role": "user", "content": f"What is written about {word}?"}])
        msg = r.choices[0].message
        cites = msg.model_extra.get("citations") or []
        ids = {f"doc_{j}" for j in range(len(documents))}
        ok = bool(cites) and all(c["document_ids"] and set(c["document_ids"]) <= ids
                                 and msg.content[c["start"]:c["end"]] == c["text"] != "" for c in cites)
        valid += ok
        right += ok and all(c["document_ids"] == [f"doc_{k}"] for c in cites)
        answers.append((word, msg.content, cites))
    assert valid >= 8, (valid, right, answers)


# --- completions, models, introspection -----------------------------------------------------------------
def test_completions_greedy_stream_and_logprobs(server, client, oracle):
    prompt = "And the LORD said unto Moses"
    ids = oracle[1].encode(prompt)
    tokens, logits = greedy(oracle, ids, 12)
    expected = oracle[1].decode(tokens, skip_special_tokens=True)
    r = client.completions.create(model="pycohere-demo", prompt=prompt, temperature=0, max_tokens=12, logprobs=2)
    assert r.object == "text_completion" and r.choices[0].text == expected
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == expected and len(lp.top_logprobs) == len(lp.tokens) == len(visible(tokens))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(len(lp.tokens))]
    lg = logits[0]
    assert lp.token_logprobs[0] == pytest.approx(lg[tokens[0]] - lg.max() - np.log(np.exp(lg - lg.max()).sum()), abs=1e-6)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="pycohere-demo", prompt=prompt, temperature=0, max_tokens=12, stream=True) if c.choices)
    assert streamed == expected
    r = client.completions.create(model="pycohere-demo", prompt=ids, temperature=0, max_tokens=12, echo=True)
    assert r.choices[0].text == prompt + expected


def test_models_health_tokenize_detokenize(server, client, oracle):
    models = client.models.list()
    assert [m.id for m in models.data] == ["pycohere-demo"] and client.models.retrieve("pycohere-demo").id == "pycohere-demo"
    status, ctype, out = request(server, "GET", "/health")
    assert status == 200 and json.loads(out) == {"status": "ok"}
    tok = oracle[1]
    text = "Grüße 🙂"
    status, out = post(server, "/tokenize", {"content": text})
    assert out == {"tokens": tok.encode(text, add_special_tokens=False)}
    status, out = post(server, "/tokenize", {"content": text, "add_special": True, "with_pieces": True})
    token_bytes = TokenBytes(tok)
    assert [p["id"] for p in out["tokens"]] == tok.encode(text)
    for p in out["tokens"]:  # a string when the token is whole UTF-8, else its bytes (llama.cpp's convention)
        b = token_bytes(p["id"])
        assert p["piece"] == (list(b) if _not_utf8(b) else b.decode())
    status, out = post(server, "/detokenize", {"tokens": tok.encode(text, add_special_tokens=False)})
    assert out == {"content": text}
    status, out = post(server, "/apply-template", {"messages": HELLO})
    assert out["prompt"] == tok.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)


def test_metrics_are_prometheus_text(server, client):
    parser = pytest.importorskip("prometheus_client.parser")

    def read():
        status, ctype, out = request(server, "GET", "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        return {s.name + json.dumps(s.labels, sort_keys=True): s.value
                for fam in parser.text_string_to_metric_families(out.decode()) for s in fam.samples}
    before = read()
    r = client.chat.completions.create(model="pycohere-demo", messages=HELLO, temperature=0, max_tokens=5)
    after = read()
    key = 'pycohere_requests_total{"endpoint": "/v1/chat/completions", "status": "200"}'
    assert after[key] == before.get(key, 0) + 1
    assert after["pycohere_completion_tokens_total{}"] == before["pycohere_completion_tokens_total{}"] + \
        r.usage.completion_tokens
    assert after["pycohere_prompt_tokens_total{}"] == before["pycohere_prompt_tokens_total{}"] + r.usage.prompt_tokens
    assert after["pycohere_tokens_per_second{}"] > 0 and after["pycohere_queue_depth{}"] == 0


# --- bad requests: 4xx in OpenAI's shape, and the server keeps serving ----------------------------------
LONG = "word " * 3000
BAD = [
    ("malformed JSON", b'{"messages": [', 400, None),
    ("not an object", [1, 2], 400, None),
    ("no messages", {"model": "pycohere-demo"}, 400, "messages"),
    ("bad role", {"messages": [{"role": "bot", "content": "x"}]}, 400, "messages[0].role"),
    ("content not text", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("temperature type", {"messages": HELLO, "temperature": "hot"}, 400, "temperature"),
    ("temperature range", {"messages": HELLO, "temperature": 3}, 400, "temperature"),
    ("top_p zero", {"messages": HELLO, "top_p": 0}, 400, "top_p"),
    ("max_tokens zero", {"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens bool", {"messages": HELLO, "max_tokens": True}, 400, "max_tokens"),
    ("n=2", {"messages": HELLO, "n": 2}, 400, "n"),
    ("negative seed", {"messages": HELLO, "seed": -1}, 400, "seed"),
    ("top_logprobs alone", {"messages": HELLO, "top_logprobs": 2}, 400, "top_logprobs"),
    ("top_logprobs 21", {"messages": HELLO, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("stop type", {"messages": HELLO, "stop": [1]}, 400, "stop"),
    ("stream type", {"messages": HELLO, "stream": "yes"}, 400, "stream"),
    ("unknown field", {"messages": HELLO, "temprature": 0.5}, 400, "temprature"),
    ("penalty", {"messages": HELLO, "frequency_penalty": 1}, 400, "frequency_penalty"),
    ("json mode", {"messages": HELLO, "response_format": {"type": "json_object"}}, 400, "response_format"),
    ("tools shape", {"messages": HELLO, "tools": [{"name": "x"}]}, 400, "tools[0]"),
    ("tool_choice", {"messages": HELLO, "tools": [WEATHER_TOOL], "tool_choice": "required"}, 400, "tool_choice"),
    ("tool without id", {"messages": HELLO + [{"role": "tool", "content": "x"}]}, 400, "messages[1].tool_call_id"),
    ("documents values", {"messages": HELLO, "documents": [{"text": 3}]}, 400, "documents[0]"),
    ("roles do not alternate", {"messages": HELLO + HELLO}, 400, None),
    ("unknown model", {"model": "gpt-5", "messages": HELLO}, 404, "model"),
    ("prompt over the context", {"messages": [{"role": "user", "content": LONG}]}, 400, "messages"),
    ("max_tokens over the context", {"messages": HELLO, "max_tokens": 5000}, 400, "max_tokens"),
]


@pytest.mark.parametrize("what, body, status, param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(server, what, body, status, param):
    got, ctype, out = request(server, "POST", "/v1/chat/completions", raw=body if isinstance(body, bytes) else None,
                              body=None if isinstance(body, bytes) else body)
    err = json.loads(out)
    assert got == status and ctype == "application/json", (got, out)
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["param"] == param and err["error"]["message"]
    if "context" in what:
        assert err["error"]["code"] == "context_length_exceeded"


def test_other_bad_requests_and_the_server_keeps_serving(server, client):
    status, out = post(server, "/v1/chat/completions", None, raw=b'{"messages": "' + b"x" * (1 << 20) + b'"}')
    assert status == 413 and out["error"]["code"] == "request_too_large"
    assert post(server, "/v1/completions", {"prompt": [10**9]})[0] == 400
    assert post(server, "/v1/completions", {"prompt": "x", "suffix": "y"})[0] == 400
    assert post(server, "/detokenize", {"tokens": [-1]})[0] == 400
    assert post(server, "/tokenize", {"content": 3})[0] == 400
    status, ctype, out = request(server, "GET", "/v1/chat/completions")
    assert status == 405 and "error" in json.loads(out)
    status, ctype, out = request(server, "GET", "/nowhere")
    assert status == 404 and json.loads(out)["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HELLO)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="pycohere-demo", messages=HELLO, n=3)
    r = client.chat.completions.create(model="pycohere-demo", messages=HELLO, temperature=0, max_tokens=4)
    assert r.choices[0].message.content


def test_api_key(demo):
    model, tok = demo
    engine = Engine(model, tok, "pycohere-demo")
    srv = Server(engine, port=0, api_key="sekrit", log_level="warning").start()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
            status, ctype, out = request(srv, "POST", "/v1/chat/completions", {"messages": HELLO}, headers=headers)
            assert status == 401 and json.loads(out)["error"]["code"] == "invalid_api_key"
        assert request(srv, "GET", "/v1/models")[0] == 401 and request(srv, "GET", "/metrics")[0] == 401
        assert request(srv, "GET", "/health")[0] == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekrit", max_retries=0)
        assert good.chat.completions.create(model="pycohere-demo", messages=HELLO, temperature=0, max_tokens=3).choices
    finally:
        srv.stop()
        engine.close()


# --- load and faults -----------------------------------------------------------------------------------
def test_sixteen_concurrent_clients_all_get_their_greedy_answer(server, oracle):
    prompts = [f"Tell me about number {i}." for i in range(16)]
    results, errors = {}, []

    def ask(i):
        try:
            c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)
            r = c.chat.completions.create(model="pycohere-demo", temperature=0, max_tokens=12,
                                          messages=[{"role": "user", "content": prompts[i]}])
            results[i] = r.choices[0].message.content
        except Exception as exc:  # reported below
            errors.append(repr(exc))
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and len(results) == 16
    for i, p in enumerate(prompts):
        tokens, _ = greedy(oracle, chat_ids(oracle, [{"role": "user", "content": p}]), 12)
        assert results[i] == oracle[1].decode(tokens, skip_special_tokens=True), i


def _metric(srv, name):
    status, ctype, out = request(srv, "GET", "/metrics")
    return float(next(line.split()[-1] for line in out.decode().splitlines() if line.startswith(name + " ")))


def test_a_disconnect_cancels_its_generation(server, forced):
    cancelled = _metric(server, "pycohere_generations_cancelled_total")
    tokens = _metric(server, "pycohere_completion_tokens_total")
    forced.delay = 0.01   # at most 1500 tokens x 10 ms: the request would take 15 s or more
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    body = json.dumps({"messages": HELLO, "stream": True, "max_tokens": 1500, "ignore_eos": True}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    got = b""
    while got.count(b"data: ") < 4:
        got += sock.recv(65536)
    sock.close()
    t0 = time.monotonic()
    while _metric(server, "pycohere_generations_cancelled_total") == cancelled and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    assert _metric(server, "pycohere_generations_cancelled_total") == cancelled + 1
    assert _metric(server, "pycohere_requests_processing") == 0            # the worker is free
    assert _metric(server, "pycohere_completion_tokens_total") == tokens   # a cancelled run adds no finished tokens
    forced.delay = 0.0
    status, out = post(server, "/v1/chat/completions", {"messages": HELLO, "temperature": 0, "max_tokens": 3})
    assert status == 200


def test_a_full_queue_answers_503_and_recovers(demo):
    model, tok = demo
    slow = ForcedModel(model, tok)
    slow.delay = 0.02
    engine = Engine(slow, tok, "pycohere-demo", max_queue=1)
    srv = Server(engine, port=0, log_level="warning").start()
    codes = []
    body = {"messages": HELLO, "max_tokens": 100, "ignore_eos": True}
    try:
        threads = [threading.Thread(target=lambda: codes.append(post(srv, "/v1/chat/completions", body)[0]))
                   for _ in range(2)]
        for t in threads:      # one runs, one waits
            t.start()
            time.sleep(0.5)
        status, out = post(srv, "/v1/chat/completions", body)
        assert status == 503 and out["error"]["code"] == "server_busy"
        for t in threads:
            t.join(timeout=120)
        assert codes == [200, 200]
        slow.delay = 0.0
        assert post(srv, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 2})[0] == 200
    finally:
        srv.stop()
        engine.close()
