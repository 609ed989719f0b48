"""``pycohere generate`` (stream a continuation) and ``pycohere chat`` (an interactive conversation)."""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from ..errors import InputError, RankTimeoutError
from ..generation.streamers import TextStreamer
from .common import add_model_args, load_model_and_tokenizer, sampling_kwargs


class _CountingStreamer:
    """Wraps a TextStreamer: also counts the generated tokens and times the first one."""

    def __init__(self, inner, echo: str | None = None):
        self.inner, self.n, self.first, self.t0 = inner, None, None, time.perf_counter()
        self.echo = echo

    def put(self, value):
        if self.n is None:  # the first put is the prompt (transformers' streamer protocol)
            self.n = 0
            if self.echo is not None:  # printed only now: generate() has checked its arguments
                print(self.echo, end="", flush=True)
        else:
            self.n += int(np.asarray(value).size)
            if self.first is None:
                self.first = time.perf_counter() - self.t0
        self.inner.put(value)

    def end(self):
        self.inner.end()


def _tensor_parallel(command):
    """With --tp: load over the MPI world (``mpiexec -n N``); ranks other than 0 follow rank 0 (``serve``)
    and print nothing; rank 0 runs ``command`` and then releases them (or hands them its error, so that
    every rank names it). A rank that times out ends the job: the stuck rank would keep mpiexec waiting."""
    def run(args) -> int:
        if not args.tp:
            return command(args, None)
        from ..demo import DEMO_MODEL
        from ..parallel import from_pretrained
        from ..parallel.mpi import MPICommunicator
        from ..text.tokenizer import CohereTokenizer
        comm = MPICommunicator()  # first: a rank that fails from here on reaches the others
        try:
            # (the path is probed inside from_pretrained, where a failure on one rank reaches every rank)
            model = from_pretrained(args.model or DEMO_MODEL, comm, dtype=args.dtype, backend=args.backend,
                                    activations=args.activations)
            if not comm.is_root:
                return model.serve()
            with model:
                return command(args, (model, CohereTokenizer.from_pretrained(model.probe)))
        except RankTimeoutError as e:
            print(f"pycohere: error: {e}", file=sys.stderr, flush=True)
            comm.abort(2)
            raise  # (not reached)
    run.__doc__ = command.__doc__
    return run


@_tensor_parallel
def cmd_generate(args, loaded=None) -> int:
    """Stream a continuation of the prompt (or of standard input when piped)."""
    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            raise InputError("give a prompt: pycohere generate \"text\" (or pipe it in on standard input)")
        prompt = sys.stdin.read()
        prompt = prompt[:-1] if prompt.endswith("\n") else prompt
    model, tok = loaded or load_model_and_tokenizer(args)
    if args.chat:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    else:
        ids = tok.encode(prompt)
    kw = sampling_kwargs(args)
    t0 = time.perf_counter()
    if args.json:
        out = model.generate([ids], **kw)[0, len(ids):]
        dt = time.perf_counter() - t0
        text = tok.decode(out.tolist(), skip_special_tokens=True)
        print(json.dumps({"prompt": prompt, "completion": text, "prompt_tokens": len(ids),
                          "completion_tokens": int(out.size), "seconds": round(dt, 4),
                          "tokens_per_second": round(out.size / dt, 2) if dt > 0 else None,
                          "token_ids": out.tolist()}, ensure_ascii=False))
        return 0
    streamer = _CountingStreamer(TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),
                                 echo=None if args.chat else prompt)
    model.generate([ids], streamer=streamer, **kw)
    dt = time.perf_counter() - t0
    first = f", first token after {streamer.first:.2f} s" if streamer.first is not None else ""
    print(f"[{streamer.n} tokens in {dt:.2f} s: {streamer.n / dt:.1f} tokens/s{first}]", file=sys.stderr)
    return 0


CHAT_HELP = "commands: /system TEXT (set the system message), /reset (forget the conversation), /exit"


@_tensor_parallel
def cmd_chat(args, loaded=None) -> int:
    """Interactive chat with history; works on a terminal and with piped input."""
    model, tok = loaded or load_model_and_tokenizer(args)
    tty = sys.stdin.isatty()
    system = args.system
    history: list[dict] = []
    if tty:
        print(f"pycohere chat ({model.config.model_type}); {CHAT_HELP}", file=sys.stderr)
    while True:
        if tty:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                history.clear()
                print("[conversation reset]", file=sys.stderr)
            elif cmd == "/system":
                system = rest.strip() or None
                history.clear()
                print(f"[system message {'set' if system else 'cleared'}; conversation reset]", file=sys.stderr)
            else:
                print(f"[unknown command {cmd}; {CHAT_HELP}]", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        out = model.generate([ids], streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),
                             **sampling_kwargs(args))
        reply = tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)
        history.append({"role": "assistant", "content": reply.strip()})
    return 0


TP_HELP = ("tensor parallelism over MPI: run as mpiexec -n N pycohere ... --tp (N ranks, each holding 1/N of "
           "the weights; only rank 0 prints). Needs pip install 'pycohere[mpi]'")


def register(sub) -> None:
    gen = sub.add_parser("generate", help="continue a prompt, streaming the tokens",
                         description="Continue PROMPT (or standard input when piped) and stream the tokens; "
                                     "prints tokens/s to stderr at the end.")
    gen.add_argument("prompt", nargs="?", default=None, help="the text to continue (default: read standard input)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template as a user turn")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    add_model_args(gen)
    gen.add_argument("--tp", action="store_true", help=TP_HELP)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat (also works with piped input)",
                          description="Chat with the model. " + CHAT_HELP + ".")
    chat.add_argument("--system", default=None, help="system message (preamble)")
    add_model_args(chat)
    chat.add_argument("--tp", action="store_true", help=TP_HELP)
    chat.set_defaults(func=cmd_chat)
