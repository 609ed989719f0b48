"""OpenAI chat messages -> a Command-R prompt, and what the model wrote -> an OpenAI message.

Which template: a conversation that ends with tool results, or that comes with ``documents``, gets the
``rag`` template (the answer cites its sources); one with ``tools`` gets ``tool_use``; anything else the
default chat template. A checkpoint's own templates (R7B, Command A, R+ 08-2024) know OpenAI's tool
messages and get them as they are. The built-in Command-R templates (transformers 4.40, c4ai-command-r-v01)
know only system/user/assistant, so the conversation is written the way Cohere's tool-use guide does
for them: an assistant's calls as its ``Action: ```json [...]``` `` turn, tool results as ``<results>``
documents (a system turn, or the rag template's documents when they end the conversation).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import ParseError
from ..text.chat import builtin_templates, resolve_template, tool_from_json_schema
from ..text.parsing import parse_grounded_answer, parse_tool_calls

#: Command-R's "answer without a tool" pseudo-tool: the tool_use template's instructions name it, and
#: transformers' apply_tool_use_template example lists it.
DIRECTLY_ANSWER = {"name": "directly_answer", "parameter_definitions": {},
                   "description": "Calls a standard (un-augmented) AI chatbot to generate a response given the "
                                  "conversation history"}
_DIRECT_NAMES = ("directly_answer", "directly-answer")


@dataclass
class Prompt:
    ids: list[int]
    kind: str                                  # "chat", "tools" or "grounded"
    documents: list[dict] = field(default_factory=list)  # what the template numbered 0, 1, ...


def _is_builtin(template: str) -> bool:
    return template in builtin_templates(False).values() or template in builtin_templates(True).values()


def _action_text(message: dict) -> str:
    calls = [{"tool_name": c["function"]["name"], "parameters": c["function"]["arguments"]}
             for c in message["tool_calls"]]
    action = "Action: ```json\n" + json.dumps(calls, indent=4, ensure_ascii=False) + "\n```"
    return (message["content"].strip() + "\n" + action) if message.get("content") else action


def _tool_documents(message: dict, names: dict[str, str]) -> list[dict]:
    """A tool result as documents: a JSON object (or list of them) gives one document per object, with
    its fields as text; anything else one document ``{"output": content}``. Each names its tool."""
    name = names.get(message["tool_call_id"], "tool")
    try:
        value = json.loads(message["content"])
    except json.JSONDecodeError:
        value = None
    items = value if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) else \
        [value] if isinstance(value, dict) and value else [{"output": message["content"]}]
    return [{"tool_name": name, **{str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                                   for k, v in item.items()}} for item in items]


def _results_turn(documents: list[dict], first: int) -> str:
    # The rag template's <results> block, as a system turn in the middle of the conversation.
    lines = ["<results>"]
    for k, doc in enumerate(documents, start=first):
        lines.append(f"Document: {k}")
        lines += [f"{key}: {value}" for key, value in doc.items()]
        lines.append("")
    return "\n".join(lines) + "</results>"


def _command_r_conversation(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """(messages the built-in templates accept, the trailing tool results as documents)."""
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls", ())}
    tail = len(messages)
    while tail > 0 and messages[tail - 1]["role"] == "tool":
        tail -= 1
    out, numbered = [], 0
    for i, m in enumerate(messages[:tail]):
        if m["role"] == "tool":
            docs = _tool_documents(m, names)
            if out and out[-1].get("_results"):  # one results turn for consecutive tool messages
                out[-1]["content"] = _results_turn(out[-1]["_docs"] + docs, out[-1]["_first"])
                out[-1]["_docs"] += docs
            else:
                out.append({"role": "system", "content": _results_turn(docs, numbered), "_results": True,
                            "_docs": docs, "_first": numbered})
            numbered += len(docs)
        elif m["role"] == "assistant" and m.get("tool_calls"):
            out.append({"role": "assistant", "content": _action_text(m)})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    trailing = [d for m in messages[tail:] for d in _tool_documents(m, names)]
    return [{"role": m["role"], "content": m["content"]} for m in out], trailing


def build_prompt(tokenizer, messages: list[dict], tools: list[dict] | None, documents: list[dict] | None,
                 citation_mode: str = "accurate") -> Prompt:
    """The token ids of the prompt for an OpenAI chat request, and how to read the answer."""
    ends_with_results = messages[-1]["role"] == "tool"
    kind = "grounded" if ends_with_results or documents else "tools" if tools else "chat"
    name = {"grounded": "rag", "tools": "tool_use", "chat": None}[kind]
    if kind == "grounded" and tools and ends_with_results:
        # a checkpoint whose tool_use template reads tool results (R7B, Command A) answers from it
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict) and "tool_use" in own and not _is_builtin(own["tool_use"]):
            name = "tool_use"
    template, _ = resolve_template(tokenizer, name, tools if name == "tool_use" else None)
    docs = list(documents or [])
    if _is_builtin(template):
        conversation, trailing = _command_r_conversation(messages)
        docs += trailing
        kwargs = {}
        if name == "tool_use":
            specs = [tool_from_json_schema(t) for t in tools]
            if not any(s["name"] in _DIRECT_NAMES for s in specs):
                specs.append(DIRECTLY_ANSWER)
            kwargs["tools"] = specs
        if name == "rag":
            kwargs.update(documents=docs, citation_mode=citation_mode)
        ids = tokenizer.apply_chat_template(conversation, chat_template=name, add_generation_prompt=True,
                                            tokenize=True, **kwargs)
    else:
        # the checkpoint's own template: OpenAI's messages, tools and documents as they are
        kwargs = {"documents": docs} if docs else {}
        if tools or docs:
            kwargs["tools"] = tools or []  # R7B's template loops over the tools also for documents alone
        if docs or ends_with_results:
            kwargs["enable_citations"] = True  # the switch the R7B / Command A templates read
        ids = tokenizer.apply_chat_template(messages, chat_template=name, add_generation_prompt=True, tokenize=True,
                                            **kwargs)
    return Prompt(ids=list(ids), kind=kind, documents=docs)


# --- reading the answer -------------------------------------------------------------------------
@dataclass
class Answer:
    content: str | None
    tool_calls: list[dict] = field(default_factory=list)   # [{"name", "arguments" (JSON string)}]
    citations: list[dict] | None = None
    directly_answer: bool = False   # the model chose Command-R's "answer without tools"


def _strip_markup(text: str, special_tokens) -> str:
    if "<|END_THINKING|>" in text:  # R7B's plan before its answer is not the answer
        text = text.split("<|END_THINKING|>", 1)[1]
    for t in special_tokens:
        text = text.replace(t, "")
    return text.strip()


def _document_id(documents: list[dict], i: int) -> str:
    # Cohere's chat API: a document's own "id", else "doc_<index>"
    doc = documents[i] if 0 <= i < len(documents) else {}
    return doc.get("id") or f"doc_{i}"


def read_answer(raw: str, prompt: Prompt, special_tokens) -> Answer:
    """What the model wrote (special tokens kept, eos removed) -> content, tool calls or cited text.
    Output that does not parse (cut off by max_tokens, or a model that ignored the format) is returned
    as plain content: the request was fine, the answer is what it is."""
    if prompt.kind == "tools" or "<|START_ACTION|>" in raw:
        try:
            calls = parse_tool_calls(raw)
        except ParseError:
            calls = []
        real = [c for c in calls if c.name not in _DIRECT_NAMES]
        if real:
            return Answer(None, [{"name": c.name, "arguments": json.dumps(c.parameters, ensure_ascii=False),
                                  "id": c.id} for c in real])
        if calls:
            return Answer(None, directly_answer=True)
    if prompt.kind == "grounded":
        try:
            grounded = parse_grounded_answer(_strip_markup(raw, ()))
        except ParseError:
            grounded = None
        if grounded is not None:  # offsets index grounded.text: it is returned as it is
            return Answer(grounded.text, citations=[{"start": c.start, "end": c.end, "text": c.text,
                                            "document_ids": [_document_id(prompt.documents, i)
                                                             for i in c.document_ids]}
                                           for c in grounded.citations])
    return Answer(_strip_markup(raw, special_tokens))
