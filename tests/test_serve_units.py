"""The server's pieces that need no HTTP: the core without the serve extra, KVCache.crop (what prompt-cache
reuse stands on), stop-string hold-back, request checks; and ``pycohere serve`` as a real process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import pycohere
from pycohere.checkpoints import probe
from pycohere.errors import CacheError, RequestError
from pycohere.serve.engine import PromptCache, Token
from pycohere.serve.output import TextOutput
from pycohere.serve.protocol import parse_chat_request
from pycohere.spec.cache import KVCache

ROOT = Path(__file__).resolve().parents[1]
BLOCK = ("import sys, importlib.abc\n"
         "class Block(importlib.abc.MetaPathFinder):\n"
         "    def find_spec(self, name, path, target=None):\n"
         "        if name.split('.')[0] in ('starlette', 'uvicorn', 'openai', 'httpx', 'httpx2'):\n"
         "            raise ImportError('blocked: ' + name)\n"
         "sys.meta_path.insert(0, Block())\n")


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", BLOCK + code, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=ROOT)


def test_the_core_works_without_the_serve_extra():
    r = _run("import pycohere, pycohere.serve.engine, pycohere.serve.protocol, pycohere.cli\n"
             "from pycohere.cli import main\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')))\n"
             "sys.exit(main(['serve', '--help']))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("[]") and "--api-key" in r.stdout
    r = _run("from pycohere.cli import main; sys.exit(main(sys.argv[1:]))", "serve")
    assert r.returncode == 2 and "pip install 'pycohere[serve]'" in r.stderr, r.stderr
    r = _run("import pycohere.serve as s\ntry:\n    s.create_app\nexcept ImportError as e:\n    print(e)")
    assert "pycohere[serve]" in r.stdout, r.stdout + r.stderr


def test_pycohere_serve_runs_as_a_process():
    pytest.importorskip("uvicorn")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "pycohere", "serve", "--port", "0"], stderr=subprocess.PIPE, text=True,
                         env=env, cwd=ROOT)
    try:
        url = None
        for line in p.stderr:          # uvicorn logs the port it bound
            if "Uvicorn running on" in line:
                url = line.split("running on ")[1].split()[0]
                break
        assert url and url.startswith("http://127.0.0.1:"), "the server did not start"
        assert json.load(urllib.request.urlopen(url + "/health", timeout=60)) == {"status": "ok"}
        req = urllib.request.Request(url + "/v1/chat/completions", method="POST", data=json.dumps(
            {"model": "pycohere-demo", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0,
             "max_tokens": 8}).encode(), headers={"Content-Type": "application/json"})
        out = json.load(urllib.request.urlopen(req, timeout=120))
        found = probe(pycohere.DEMO_MODEL)
        model, tok = pycohere.AutoModelForCausalLM.from_pretrained(found), pycohere.CohereTokenizer.from_pretrained(found)
        ids = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
        expected = model.generate([ids], do_sample=False, max_new_tokens=8)[0, len(ids):].tolist()
        assert out["choices"][0]["message"]["content"] == tok.decode(expected, skip_special_tokens=True)
    finally:
        p.terminate()
        p.wait(timeout=30)


# --- KVCache.crop ------------------------------------------------------------------------------------
def _filled(windows, n, seed=0, kv=None):
    rng = np.random.default_rng(seed)
    cache = KVCache(windows)
    kv = rng.standard_normal((2, len(windows), 1, n, 2, 4)).astype(np.float32) if kv is None else kv[:, :, :, :n]
    for layer in range(len(windows)):
        for t in range(n):  # one token at a time, as decoding does
            cache.update(layer, kv[0, layer][:, t:t + 1], kv[1, layer][:, t:t + 1])
    return cache, kv


def test_crop_keeps_the_prefix_and_continues_like_a_fresh_cache():
    cache, kv = _filled([None, None], 10)
    cache.crop(6)
    assert cache.get_seq_length() == 6
    fresh, _ = _filled([None, None], 6, kv=kv)
    extra = np.ones((1, 1, 2, 4), dtype=np.float32)
    k1, v1, s1 = cache.update(0, extra, extra)
    k2, v2, s2 = fresh.update(0, extra, extra)
    assert s1 == s2 == 0 and np.array_equal(k1, k2) and np.array_equal(v1, v2)


def test_crop_refuses_what_a_sliding_layer_already_dropped():
    cache, _ = _filled([4, None], 40)      # the window-4 layer keeps only its last 3 entries
    start = cache.layers[0].start
    assert start > 0
    with pytest.raises(CacheError, match="sliding layer"):
        cache.crop(5)
    assert cache.get_seq_length() == 40    # unchanged
    cache.crop(start + 3)                  # the entries it still holds suffice
    assert cache.get_seq_length() == start + 3 and cache.get_seq_length(1) == start + 3
    with pytest.raises(CacheError):
        cache.crop(41)


def test_prompt_cache_hands_out_the_longest_shared_prefix():
    pc = PromptCache(capacity=2)
    a, _ = _filled([None], 8)
    b, _ = _filled([None], 8, seed=1)
    pc.put([1, 2, 3, 4, 5, 6, 7, 8], a)
    pc.put([1, 2, 9, 9, 9, 9, 9, 9], b)
    cache, n = pc.take([1, 2, 3, 4, 7])
    assert cache is a and n == 4 and a.get_seq_length() == 4 and len(pc.entries) == 1
    cache, n = pc.take([1, 2, 9])          # all shared: one token is left for the forward
    assert cache is b and n == 2
    assert pc.take([5]) == (None, 0)


# --- text deltas and stop strings --------------------------------------------------------------------
class _Engine:
    def __init__(self, tok):
        from pycohere.generation import TokenBytes
        self.tokenizer, self.token_bytes = tok, TokenBytes(tok)


@pytest.fixture(scope="module")
def tok():
    return pycohere.CohereTokenizer.from_pretrained(probe(pycohere.DEMO_MODEL))


def test_text_that_may_start_a_stop_string_is_held_back(tok):
    text = "one two. three"
    out = TextOutput(_Engine(tok), [5], ["two. t"], eos=[9])
    sent = []
    for i in tok.encode(text, add_special_tokens=False):
        delta, _ = out.add(Token(i))
        sent.append(delta)
        assert "two" not in "".join(sent)    # nothing of the stop string ever goes out
    sent.append(out.finish()[0])
    assert "".join(sent) == "one " and out.stopped


def test_without_a_match_everything_held_is_sent_at_the_end(tok):
    out = TextOutput(_Engine(tok), [5], ["xyz"], eos=[9])
    text = "abc x"
    parts = [out.add(Token(i))[0] for i in tok.encode(text, add_special_tokens=False)] + [out.finish()[0]]
    assert "".join(parts) == text and not out.stopped


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]},
     "messages[0].tool_calls"),
    ({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [{"role": "user", "content": "x"}], "citation_mode": "slow"}, "citation_mode"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["x"] * 17}, "stop"),
])
def test_request_checks_name_the_field(body, param):
    with pytest.raises(RequestError) as e:
        parse_chat_request(body)
    assert e.value.param == param and e.value.status == 400


def test_text_parts_and_developer_role_are_accepted():
    req = parse_chat_request({"messages": [{"role": "developer", "content": "Be brief."},
                                           {"role": "user", "content": [{"type": "text", "text": "Hel"},
                                                                        {"type": "text", "text": "lo"}]}],
                              "user": "ignored", "max_completion_tokens": 5})
    assert req.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert req.sampling.max_tokens == 5


# --- a checkpoint's own template (R7B) gets OpenAI's messages as they are ------------------------------
def test_a_checkpoints_own_tool_template_gets_openais_messages():
    import importlib.util
    from pycohere.serve.prompts import build_prompt, read_answer
    from pycohere.serve.protocol import parse_messages
    from pycohere.text.chat import builtin_templates
    spec = importlib.util.spec_from_file_location("fetch_llama_cpp_data", ROOT / "tools" / "fetch_llama_cpp_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        data = tool.fetch()
    except tool.RegistryUnreachableError as exc:  # only a network failure may skip
        pytest.skip(f"PyPI unreachable, cannot fetch llama-cpp-python sdist: {str(exc).splitlines()[0]}")
    r7b = (data / "templates" / "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja").read_text(encoding="utf-8")
    tok = pycohere.CohereTokenizer.from_pretrained(ROOT / "tests" / "data" / "tokenizer" / "tiny-command-r")
    tok.chat_template = {"default": builtin_templates()["default"], "tool_use": r7b}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather.",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = parse_messages([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "0", "content": "sunny"}])
    prompt = build_prompt(tok, messages, tools, None)
    expected = tok.apply_chat_template(messages, chat_template="tool_use", tools=tools, add_generation_prompt=True,
                                       enable_citations=True)
    assert prompt.ids == expected and prompt.kind == "grounded"
    assert "get_weather" in tok.decode(prompt.ids) and "sunny" in tok.decode(prompt.ids)
    answer = read_answer("<|START_RESPONSE|>It is <co>sunny</co: 0:[0]>.<|END_RESPONSE|>", prompt, tok.all_special_tokens)
    assert answer.content == "It is sunny." and answer.citations == [
        {"start": 6, "end": 11, "text": "sunny", "document_ids": ["doc_0"]}]
    # documents without tools: R7B's template still loops over the tools (an empty list, not None), and it
    # puts the documents after the first user turn, so a follow-up's prompt starts with the first one's
    tok.chat_template = {"default": builtin_templates()["default"], "rag": r7b}
    docs = [{"title": "Census", "text": "All went to be taxed."}]
    first = parse_messages([{"role": "user", "content": "Who was taxed?"}])
    prompt = build_prompt(tok, first, None, docs)
    assert prompt.kind == "grounded" and "All went to be taxed." in tok.decode(prompt.ids)
    assert prompt.ids == tok.apply_chat_template(first, chat_template="rag", tools=[], documents=docs,
                                                 add_generation_prompt=True, enable_citations=True)
    follow = parse_messages([{"role": "user", "content": "Who was taxed?"}, {"role": "assistant", "content": "All."},
                             {"role": "user", "content": "Where?"}])
    second = build_prompt(tok, follow, None, docs).ids
    n = next(i for i, (a, b) in enumerate(zip(prompt.ids, second)) if a != b)
    assert "All went to be taxed." in tok.decode(prompt.ids[:n]) and n > 0.9 * len(prompt.ids)
