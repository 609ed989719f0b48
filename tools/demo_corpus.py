#!/usr/bin/env python
"""Corpus for pycohere's bundled demo model: the King James Bible plus a few chat samples.

Everything here comes from Debian packages, so it is available offline once installed:

    apt-get install -y bible-kjv bible-kjv-text fortunes-min fortunes-es

* ``bible-kjv-text`` holds the King James Version (1611, public domain) in a compressed
  format; the ``bible`` reader from ``bible-kjv`` (GPL-2+, only run, never shipped) prints it.
* ``fortunes-min`` ships ``/usr/share/games/fortunes/fortunes``: anonymous fortune-cookie lines
  from BSD fortune (BSD-style licence for the collection). Used only as chat answers.
* ``fortunes-es`` ships ``es/refranes.fortunes``: traditional Spanish proverbs (refranes); the
  package's copyright file says its texts are "presumed to be in the public domain". Used only
  as chat answers.

Deterministic split: the KJV's 1189 chapters are numbered 0..1188 in canonical order; chapter
``i`` with ``i % 50 == 25`` is held out (24 chapters, never trained on, and never used to
train the tokenizer). Chapter text = its verses joined by ``"\\n"`` (no verse numbers or
headings); ``heldout.txt`` = held-out chapters joined by ``"\\n\\n"``.

Chat samples are rendered with the real Command-R chat template (see ``COMMAND_R_CHAT_TEMPLATE``)
so training and inference see exactly the same token layout.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_EN = FORTUNES_DIR / "fortunes"  # from Debian package fortunes-min
REFRANES_ES = FORTUNES_DIR / "es" / "refranes.fortunes"  # from Debian package fortunes-es

# A demo that greets strangers should not tell them they will die soon: drop such cookies.
GLOOMY = re.compile(r"\b(die|dies|dying|dead|death|born|pass away|sex|kill\w*|suicide)\b", re.I)

HELDOUT_EVERY = 50
HELDOUT_OFFSET = 25  # chapter 25 is Genesis 26: keeps Genesis 1 ("In the beginning") in training

# The Command-R (c4ai-command-r-v01 / -plus) default chat template, verbatim. Source:
# llama.cpp tests/test-chat-template.cpp, test case "CohereForAI/c4ai-command-r-plus"
# (github.com/ggml-org/llama.cpp, commit 03f94f19a2c4c9d039fa1a84838fe3e2110cc28d), which copies
# the "default" entry of the model's tokenizer_config.json; transformers 4.x
# tokenization_cohere_fast.py built the same text in `default_chat_template`.
COMMAND_R_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% elif false == true %}"
    "{% set loop_messages = messages %}{% set system_message = 'You are Command-R, a brilliant, "
    "sophisticated, AI-assistant trained to assist human users by providing thorough responses. "
    "You are trained by Cohere.' %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% if system_message != false %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + system_message + '<|END_OF_TURN_TOKEN|>' }}"
    "{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% set content = message['content'] %}{% if message['role'] == 'user' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'  + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}"
)


@dataclass(frozen=True)
class Chapter:
    book: str
    number: int
    verses: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.book} {self.number}"

    @property
    def text(self) -> str:
        return "\n".join(self.verses)


# ----------------------------------------------------------------------------- King James Bible
def read_kjv() -> list[Chapter]:
    """All 1189 chapters, in canonical order, via the ``bible`` reader (package bible-kjv)."""
    if shutil.which("bible") is None:
        raise SystemExit("`bible` not found: apt-get install -y bible-kjv bible-kjv-text")
    # -l100000: no line wrapping, so each verse is one line "  <n> <text>".
    raw = subprocess.run(
        ["bible", "-l100000", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True
    ).stdout
    chapters: list[Chapter] = []
    book, number, verses = None, 0, []
    for line in raw.splitlines():
        verse = re.match(r"^\s+(\d+) (.*\S)\s*$", line)
        heading = re.match(r"^(\S.*) (\d+)$", line)
        if verse:
            verses.append(verse.group(2))
        elif heading:
            if book is not None:
                chapters.append(Chapter(book, number, tuple(verses)))
            book, number, verses = heading.group(1), int(heading.group(2)), []
        elif line.strip():
            raise ValueError(f"unexpected line in bible output: {line!r}")
    chapters.append(Chapter(book, number, tuple(verses)))
    n_verses = sum(len(c.verses) for c in chapters)
    if len(chapters) != 1189 or n_verses != 31102:
        raise ValueError(f"expected 1189 chapters / 31102 verses, got {len(chapters)} / {n_verses}")
    return chapters


def split_chapters(chapters: list[Chapter]) -> tuple[list[Chapter], list[Chapter]]:
    """(train, heldout): every 50th chapter, starting at index 25, is held out."""
    train = [c for i, c in enumerate(chapters) if i % HELDOUT_EVERY != HELDOUT_OFFSET]
    heldout = [c for i, c in enumerate(chapters) if i % HELDOUT_EVERY == HELDOUT_OFFSET]
    return train, heldout


def heldout_text(heldout: list[Chapter]) -> str:
    return "\n\n".join(c.text for c in heldout) + "\n"


# ----------------------------------------------------------------------------- fortunes
def read_fortune_file(path: Path, max_chars: int) -> list[str]:
    """Entries of a fortune file (separated by lines holding only '%'), whitespace collapsed.

    Drops entries with control characters (BSD fortune uses backspace overstriking), with an
    attribution line ("-- Author": quotations of named, possibly modern, authors) or longer
    than ``max_chars``: chat answers should be short, anonymous one-liners.
    """
    if not path.exists():
        raise SystemExit(f"{path} not found: apt-get install -y fortunes-min fortunes-es")
    text = unicodedata.normalize("NFC", path.read_text(encoding="utf-8"))
    entries = []
    for entry in re.split(r"^%\s*$", text, flags=re.M):
        if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", entry) or re.search(r"^\s*--", entry, re.M):
            continue
        flat = " ".join(entry.split())
        if 8 <= len(flat) <= max_chars and not GLOOMY.search(flat):
            entries.append(flat)
    return entries


# ----------------------------------------------------------------------------- chat samples
GREETINGS = ["Hello", "Hello!", "Hi", "Hi!", "Hi there", "Hey", "Good morning", "Good evening",
             "Greetings", "Hello, how are you?", "How are you?", "hello", "hi"]
GREETING_ANSWERS = ["Hello! Here is a verse for you: {v}", "Peace be with you. {v}", "Hello. {v}",
                    "Greetings! {v}", "Hello! {v}", "I am well, thank you. {v}"]
VERSE_ASKS = ["Give me a verse.", "Quote a verse from the Bible.", "Tell me a Bible verse.",
              "Share a verse with me.", "Can you quote scripture?", "Say something from the Bible.",
              "Read me a verse.", "A verse, please."]
BOOK_ASKS = ["Give me a verse from {b}.", "Quote {b}.", "What does the book of {b} say?",
             "Tell me something from {b}."]
PROVERB_ASKS = ["Tell me a proverb.", "Give me a proverb.", "Share some wisdom.",
                "Give me some advice.", "Say something wise."]
FORTUNE_ASKS = ["Tell me my fortune.", "What is my fortune?", "Give me a fortune cookie.",
                "What does the future hold?", "Tell me a fortune.", "Open a fortune cookie."]
FORTUNE_ANSWERS = ["{f}", "Your fortune: {f}", "Here is your fortune: {f}"]
SPANISH_ASKS = ["Dime un refrán.", "Tell me a Spanish proverb.", "Un refrán, por favor.",
                "¿Conoces algún refrán?", "Hola", "¡Hola!", "Buenos días"]
IDENTITY_ASKS = ["Who are you?", "What are you?", "What is your name?", "Tell me about yourself.",
                 "Are you a person?"]
IDENTITY_ANSWERS = [
    "I am a small demo model with the Cohere architecture, trained from scratch on the King James Bible.",
    "I am the pycohere demo model. I was trained on the King James Bible, so I answer with verses.",
    "I am a tiny language model. I know the King James Bible and a few proverbs.",
]
OTHER_ASKS = ["What is the meaning of life?", "I am sad.", "What should I do today?",
              "Tell me something.", "What is love?", "Can you help me?", "Why is the sky blue?",
              "I am afraid.", "Thank you.", "What is truth?", "Tell me a story.", "Goodbye"]
OTHER_ANSWERS = ["{v}", "As it is written: {v}", "Consider this: {v}", "{v}"]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.", "You are a wise teacher.", "Answer briefly.",
    "You quote the King James Bible.", "You are a friendly chatbot.",
    "You are Command-R, a brilliant, sophisticated, AI-assistant trained to assist human users "
    "by providing thorough responses. You are trained by Cohere.",
]


class ChatSampler:
    """Draws short Command-R-formatted conversations whose answers are public-domain verses,
    fortune-cookie lines or Spanish refranes. Answers always end the turn."""

    def __init__(self, train: list[Chapter], fortunes_en: list[str], refranes_es: list[str]):
        self.verses = [v for c in train for v in c.verses if len(v) <= 220]
        self.by_book: dict[str, list[str]] = {}
        for c in train:
            self.by_book.setdefault(c.book, []).extend(v for v in c.verses if len(v) <= 220)
        self.books = sorted(self.by_book)
        self.wisdom = self.by_book["Proverbs"] + self.by_book["Ecclesiastes"]
        self.fortunes_en = fortunes_en
        self.refranes_es = refranes_es
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(COMMAND_R_CHAT_TEMPLATE)

    @staticmethod
    def _pick(rng: np.random.Generator, items):
        return items[int(rng.integers(len(items)))]

    def exchange(self, rng: np.random.Generator) -> tuple[str, str]:
        pick = lambda items: self._pick(rng, items)  # noqa: E731
        kind = rng.choice(["greet", "verse", "book", "proverb", "fortune", "es", "who", "other"],
                          p=[0.22, 0.16, 0.10, 0.10, 0.14, 0.10, 0.06, 0.12])
        if kind == "greet":
            return pick(GREETINGS), pick(GREETING_ANSWERS).format(v=pick(self.verses))
        if kind == "verse":
            return pick(VERSE_ASKS), pick(self.verses)
        if kind == "book":
            book = pick(self.books)
            return pick(BOOK_ASKS).format(b=book), pick(self.by_book[book])
        if kind == "proverb":
            return pick(PROVERB_ASKS), pick(self.wisdom)
        if kind == "fortune":
            return pick(FORTUNE_ASKS), pick(FORTUNE_ANSWERS).format(f=pick(self.fortunes_en))
        if kind == "es":
            ask = pick(SPANISH_ASKS)
            refran = pick(self.refranes_es)
            return ask, (f"¡Hola! {refran}" if "ola" in ask or "días" in ask else refran)
        if kind == "who":
            return pick(IDENTITY_ASKS), pick(IDENTITY_ANSWERS)
        return pick(OTHER_ASKS), pick(OTHER_ANSWERS).format(v=pick(self.verses))

    def messages(self, rng: np.random.Generator) -> list[dict[str, str]]:
        msgs = []
        if rng.random() < 0.15:
            msgs.append({"role": "system", "content": self._pick(rng, SYSTEM_PROMPTS)})
        for _ in range(2 if rng.random() < 0.2 else 1):
            user, answer = self.exchange(rng)
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return msgs

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.template.render(messages=messages, bos_token="<BOS_TOKEN>",
                                    eos_token="<|END_OF_TURN_TOKEN|>",
                                    add_generation_prompt=add_generation_prompt)

    def sample(self, rng: np.random.Generator) -> str:
        return self.render(self.messages(rng))


def _raise(message: str):
    raise jinja2.TemplateError(message)


# ----------------------------------------------------------------------------- tool use and grounded answers
# Requests in OpenAI's form (tools as JSON schema, documents as {"title", "text"}), answered in Command-R's
# formats: an "Action: ```json [...]```" block for tools, "Relevant Documents: / Cited Documents: /
# (Answer:) / Grounded answer:" with <co: i> spans for documents. The training script renders the prompts with
# pycohere.serve.prompts.build_prompt, the code the server runs, so both see the same tokens. A 4M-parameter
# model can learn to copy: the tool's name and parameter names from the spec, the quoted value from the user
# turn, a document's sentence and its number.
TOOL_VERBS = ["get", "find", "search", "lookup", "fetch", "list", "count", "send", "play", "translate",
              "check", "show", "open", "read", "book", "order", "add", "remove", "create", "convert"]
TOOL_NOUNS = ["weather", "verses", "word", "message", "song", "news", "price", "recipe", "flight", "hotel",
              "movie", "time", "city", "friend", "note", "event", "proverb", "fortune", "chapter", "stock",
              "email", "file", "user", "color", "book"]
# (verb, noun) pairs never used in training: the held-out tool names tests and the training report use.
HELDOUT_TOOL_NAMES = [f"{v}_{n}" for i, v in enumerate(TOOL_VERBS) for j, n in enumerate(TOOL_NOUNS)
                      if (7 * i + 3 * j) % 10 == 0 and v != n]
TOOL_PARAMS = [  # (name, JSON type, description)
    ("query", "string", "the text to look for"), ("city", "string", "the name of the city"),
    ("name", "string", "the name to use"), ("word", "string", "the word"), ("text", "string", "the text"),
    ("title", "string", "the title"), ("topic", "string", "what it is about"),
    ("place", "string", "where"), ("person", "string", "who it is for"), ("key", "string", "the key"),
]
TOOL_COUNT_PARAMS = [("count", "integer", "how many results"), ("limit", "integer", "at most this many"),
                     ("number", "integer", "the number")]
TOOL_DESCRIPTIONS = ["{V} the {n}.", "{V}s a {n} by its {p}.", "Use this to {v} the {n}.",
                     "{V} {n} for the user.", "Returns the {n} after you {v} it."]
TOOL_ASKS = ['Please {v} the {n} for "{x}".', 'Can you {v} {n} "{x}"?', '{V} the {n}: "{x}"',
             '{V} {n} with {p} "{x}".', 'I need you to {v} the {n} "{x}".', '{V} "{x}" ({n}).']
TOOL_COUNT_ASKS = [" Give me {k}.", " Only {k}, please.", " {k} of them."]
DOC_ASKS = ['What does it say about "{w}"?', "Tell me about {w}.", "What is written about {w}?",
            'Find "{w}" in the documents.', "Which document mentions {w}?", "What do you know about {w}?"]
GROUNDED_LEADS = ["", "", "It is written: ", "The document says: ", "As document {k} says, "]
CHAT_WITH_TOOLS_ASKS = GREETINGS[:6] + ["Thank you.", "Tell me a story.", "Who are you?"]


def _json_schema_tool(name: str, description: str, params: list[tuple[str, str, str]], required: list[str]):
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {p: {"type": t, "description": d} for p, t, d in params},
                       "required": required}}}


class ToolSampler:
    """Draws (messages, tools, documents, citation_mode, answer) cases; answer is the Command-R output the
    model should write (without the closing <|END_OF_TURN_TOKEN|>)."""

    def __init__(self, chapters: list[Chapter], fortunes_en: list[str], heldout: bool = False,
                 direct_p: float = 0.08):
        """Training cases use the training chapters and tool names outside HELDOUT_TOOL_NAMES;
        ``heldout=True`` (with the held-out chapters) draws evaluation cases from what training never saw."""
        held = set(HELDOUT_TOOL_NAMES)
        self.names = [(v, n) for v in TOOL_VERBS for n in TOOL_NOUNS
                      if ((f"{v}_{n}" in held) == heldout) and v != n]
        self.direct_p = direct_p
        self.short_verses = [(c.name, k + 1, v) for c in chapters for k, v in enumerate(c.verses)
                             if len(v) <= 110]
        self.fortunes = [f for f in fortunes_en if len(f) <= 110]
        step = 1 if heldout else 7  # argument words: a sample of the verses' words
        words = {w for _, _, v in self.short_verses[::step] for w in re.findall(r"[A-Za-z]{4,10}", v)}
        self.values = sorted(words)

    @staticmethod
    def _pick(rng, items):
        return items[int(rng.integers(len(items)))]

    def tool_case(self, rng: np.random.Generator):
        pick = lambda items: self._pick(rng, items)  # noqa: E731
        n_tools = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
        chosen = [self.names[int(i)] for i in rng.choice(len(self.names), n_tools, replace=False)]
        tools, specs = [], []
        for verb, noun in chosen:
            p_str = TOOL_PARAMS[int(rng.integers(len(TOOL_PARAMS)))]
            params, required = [p_str], [p_str[0]]
            if rng.random() < 0.35:
                params.append(pick(TOOL_COUNT_PARAMS))
                if rng.random() < 0.5:
                    required.append(params[-1][0])
            desc = pick(TOOL_DESCRIPTIONS).format(V=verb.capitalize(), v=verb, n=noun, p=p_str[0])
            tools.append(_json_schema_tool(f"{verb}_{noun}", desc, params, required))
            specs.append((verb, noun, params, required))
        if rng.random() < self.direct_p:  # nothing to call: Command-R's directly_answer pseudo-tool
            user = pick(CHAT_WITH_TOOLS_ASKS)
            answer = [{"tool_name": "directly_answer", "parameters": {}}]
        else:
            verb, noun, params, required = specs[int(rng.integers(n_tools))]
            value = pick(self.values)
            user = pick(TOOL_ASKS).format(V=verb.capitalize(), v=verb, n=noun, p=params[0][0], x=value)
            args = {params[0][0]: value}
            if len(params) > 1 and (params[1][0] in required or rng.random() < 0.5):
                k = int(rng.integers(1, 21))
                user += pick(TOOL_COUNT_ASKS).format(k=k)
                args[params[1][0]] = k
            answer = [{"tool_name": f"{verb}_{noun}", "parameters": args}]
        messages = [{"role": "user", "content": user}]
        if rng.random() < 0.1:
            messages.insert(0, {"role": "system", "content": pick(SYSTEM_PROMPTS[:5])})
        # As pycohere.serve.prompts renders an assistant's earlier calls (json.dumps, indent 4).
        text = "Action: ```json\n" + json.dumps(answer, indent=4, ensure_ascii=False) + "\n```"
        return messages, tools, None, "accurate", text

    def grounded_case(self, rng: np.random.Generator):
        pick = lambda items: self._pick(rng, items)  # noqa: E731
        n_docs = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.35, 0.35, 0.15]))
        for _ in range(50):  # the asked-about word must be in the cited document only
            docs = []
            for _ in range(n_docs):
                if rng.random() < 0.25:
                    docs.append(("Fortune", pick(self.fortunes)))
                else:
                    book, verse_no, verse = pick(self.short_verses)
                    docs.append((f"{book}:{verse_no}", verse))
            k = int(rng.integers(n_docs))
            others = " ".join(t for i, (_, t) in enumerate(docs) if i != k).lower()
            words = [w for w in re.findall(r"[A-Za-z]{4,12}", docs[k][1]) if w.lower() not in others]
            if words:
                break
        word = pick(words)
        titled = rng.random() < 0.7
        documents = [{"title": t, "text": x} if titled else {"text": x} for t, x in docs]
        mode = "accurate" if rng.random() < 0.7 else "fast"
        sentence = docs[k][1]
        lines = [f"Relevant Documents: {k}", f"Cited Documents: {k}"]
        if mode == "accurate":
            lines.append(f"Answer: {sentence}")
        lines.append(f"Grounded answer: {pick(GROUNDED_LEADS).format(k=k)}<co: {k}>{sentence}</co: {k}>")
        messages = [{"role": "user", "content": pick(DOC_ASKS).format(w=word)}]
        if rng.random() < 0.1:
            messages.insert(0, {"role": "system", "content": pick(SYSTEM_PROMPTS[:5])})
        return messages, None, documents, mode, "\n".join(lines)

    def case(self, rng: np.random.Generator):
        return self.tool_case(rng) if rng.random() < 0.5 else self.grounded_case(rng)
