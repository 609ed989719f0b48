"""Benchmark of ``pycohere serve`` (a benchmark, not a test: it prints numbers and asserts nothing).

1. Time to first token of a second turn on a ~1k-token prompt, with and without prompt-cache reuse
   (the server streams /v1/completions over the rendered prompt ids; first token = first text chunk),
   for three layouts: Command-R's rag template, which puts the documents *after* the conversation (so a
   new turn changes the text before them and only the conversation's start is shared); the same request
   on a copy of the model whose chat template is Command R7B's (from llama.cpp's test data,
   tools/fetch_llama_cpp_data.py; its preamble makes the prompt ~3k tokens, so the copy's RoPE table is
   longer), which injects the documents after the *first* user turn, where a follow-up shares them; and a
   chat whose first user turn carries the ~1k-token text (shared whole).
2. Throughput with 4 and 16 concurrent clients (completion tokens / wall time, non-streaming chat).

    PYTHONPATH=. nice -n 10 python tools/bench_serve.py [--model PATH] [--repeats 3]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fetch_llama_cpp_data, beside this file
from pycohere.serve import Server, load_engine  # noqa: E402
from pycohere.serve.prompts import build_prompt  # noqa: E402

DOC = ("And it came to pass in those days, that there went out a decree from Caesar Augustus, that all the world "
       "should be taxed. And all went to be taxed, every one into his own city. ")


def post(port, path, body, stream=False):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if not stream:
        out = json.loads(r.read())
        c.close()
        return out
    return c, r


def first_token_seconds(port, ids) -> float:
    t0 = time.perf_counter()
    c, r = post(port, "/v1/completions", {"prompt": ids, "max_tokens": 8, "temperature": 0, "stream": True}, True)
    buf = b""
    while True:
        buf += r.read1(65536)
        for event in buf.split(b"\n\n")[:-1]:
            if event.startswith(b"data: {") and json.loads(event[6:])["choices"][0]["text"]:
                dt = time.perf_counter() - t0
                r.read()
                c.close()
                return dt


def long_turns(tok, layout, answer, target_tokens=1000):
    """(turn 1 messages, documents, turn 2 messages) of about target_tokens."""
    docs, text, n = [], "", 0
    while n < target_tokens:
        if layout.startswith("rag"):
            docs.append({"title": f"Record {len(docs)}", "text": DOC * 2})
        else:
            text += DOC * 2
        ask = "Who was taxed?" if layout.startswith("rag") else text + "\nWho was taxed?"
        turn1 = [{"role": "user", "content": ask}]
        n = len(build_prompt(tok, turn1, None, docs or None).ids)
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And where did they go?"}]
    return turn1, docs or None, turn2


def with_r7b_template(model, folder: Path) -> str:
    """A copy of ``model`` (the bundled demo model by default; weights linked, not copied) whose tokenizer
    has Command R7B's chat template for default, tool_use and rag: R7B's own template renders all three."""
    from fetch_llama_cpp_data import fetch

    from pycohere.demo import DEMO_MODEL
    src = Path(model or DEMO_MODEL)  # (a local checkpoint folder)
    template = (fetch() / "templates" / "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja").read_text()
    folder.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": n, "template": template} for n in ("default", "tool_use", "rag")]
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    # R7B's system preamble alone is ~2.4k demo tokens, past the demo's 2048 positions: a longer RoPE table
    # (this measures time, not answers)
    model_config = json.loads((src / "config.json").read_text())
    model_config["max_position_embeddings"] = max(8192, model_config["max_position_embeddings"])
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(model_config, indent=2))
    return str(folder)


def ttft(args, cache_size, layout):
    model = args.r7b_model if layout == "rag-r7b" else args.model
    engine = load_engine(model, prompt_cache_size=cache_size)
    srv = Server(engine, port=0, log_level="warning").start()
    tok = engine.tokenizer
    try:
        post(srv.port, "/v1/completions", {"prompt": [5, 6], "max_tokens": 2})   # warm up (JIT)
        times = []
        for _ in range(args.repeats):
            turn1, docs, _ = long_turns(tok, layout, "")
            body = {"messages": turn1, "max_tokens": 16, "temperature": 0, **({"documents": docs} if docs else {})}
            answer = post(srv.port, "/v1/chat/completions", body)["choices"][0]["message"]["content"]  # turn 1
            _, _, turn2 = long_turns(tok, layout, answer)
            first, second = build_prompt(tok, turn1, None, docs).ids, build_prompt(tok, turn2, None, docs).ids
            times.append(first_token_seconds(srv.port, second))
        shared = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), len(first))
        return len(first), len(second), shared, statistics.median(times)
    finally:
        srv.stop()
        engine.close()


def throughput(args, clients):
    engine = load_engine(args.model)
    srv = Server(engine, port=0, log_level="warning").start()
    try:
        post(srv.port, "/v1/completions", {"prompt": [5, 6], "max_tokens": 2})
        tokens = []

        def one(i):
            out = post(srv.port, "/v1/chat/completions", {"messages": [{"role": "user", "content": f"Tell me {i}"}],
                                                          "max_tokens": 32, "ignore_eos": True, "temperature": 0.7})
            tokens.append(out["usage"]["completion_tokens"])
        threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(tokens), time.perf_counter() - t0
    finally:
        srv.stop()
        engine.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (2 shared cores: alternate and repeat runs)")
    tmp = tempfile.TemporaryDirectory()
    args.r7b_model = with_r7b_template(args.model, Path(tmp.name) / "r7b-template")
    for layout in ("rag", "rag-r7b", "chat"):
        n1, n2, shared, cold = ttft(args, 0, layout)
        *_, warm = ttft(args, 4, layout)
        print(f"{layout} second turn: prompt {n2} tokens ({shared} shared with turn 1's {n1}-token prompt)")
        print(f"  first token without prompt-cache reuse: {cold * 1000:.0f} ms")
        print(f"  first token with reuse:                 {warm * 1000:.0f} ms  ({cold / warm:.1f}x faster)")
    for clients in (4, 16):
        n, dt = throughput(args, clients)
        print(f"{clients:2d} concurrent clients: {n} tokens in {dt:.2f} s = {n / dt:.1f} tokens/s")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
