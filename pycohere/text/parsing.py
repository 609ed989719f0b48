"""Parsers for what a Command-R model writes: tool calls and grounded answers with citations.

:func:`parse_tool_calls` reads ``Action: ```json [...]``` `` (Command-R / R+) and R7B's
``<|START_ACTION|>[...]<|END_ACTION|>``; :func:`parse_grounded_answer` reads ``<co: 0,1>span</co: 0,1>``
and R7B's ``<co>span</co: 0:[1,2]>``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ParseError


@dataclass(frozen=True)
class ToolCall:
    name: str
    parameters: dict[str, Any]
    id: str | None = None  # R7B's tool_call_id


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Tool calls in a Command-R / R+ ``Action: ```json [ ... ] ``` `` answer, or in an R7B
    ``<|START_ACTION|>[ ... ]<|END_ACTION|>`` block. No action marker -> ``[]``; a marker with
    JSON that is broken or not a list of ``{"tool_name": str, "parameters": dict}`` -> ParseError."""
    if not isinstance(text, str):
        raise ParseError(f"expected model output as str, got {type(text).__name__}")
    if "<|START_ACTION|>" in text:
        start = text.index("<|START_ACTION|>") + len("<|START_ACTION|>")
        end = text.find("<|END_ACTION|>", start)
        if end < 0:
            raise ParseError("found <|START_ACTION|> without <|END_ACTION|>: the output was cut off")
        return _tool_calls_from_json(text[start:end].strip(), "R7B action block")
    match = re.search(r"Action:\s*", text)
    if match is None:
        return []
    body = text[match.end():]
    fence = re.match(r"```(?:json)?\s*", body)
    if fence:
        body = body[fence.end():]
        close = body.rfind("```")
        if close < 0:
            raise ParseError("'Action:' block opens ``` but never closes it: the output was cut off")
        body = body[:close]
    return _tool_calls_from_json(body.strip(), "'Action:' block")


def _tool_calls_from_json(body: str, where: str) -> list[ToolCall]:
    try:
        calls, end = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as exc:
        raise ParseError(f"{where} is not valid JSON ({exc.msg} at char {exc.pos}): {body[:200]!r}") from None
    if body[end:].strip():
        raise ParseError(f"{where} has text after the JSON list: {body[end:end + 80]!r}")
    if not isinstance(calls, list):
        raise ParseError(f"{where} must hold a JSON list of tool calls, got {type(calls).__name__}")
    out = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("tool_name"), str):
            raise ParseError(f"{where}: call {i} needs a string 'tool_name', got {call!r}")
        params = call.get("parameters", {})
        if not isinstance(params, dict):
            raise ParseError(f"{where}: call {i} ({call['tool_name']}) has non-object parameters {params!r}")
        call_id = call.get("tool_call_id")
        out.append(ToolCall(call["tool_name"], params, None if call_id is None else str(call_id)))
    return out


@dataclass(frozen=True)
class Citation:
    start: int  # character offsets into GroundedAnswer.text
    end: int
    text: str
    document_ids: tuple[int, ...]
    # R7B cites (tool_call_id, result_index) pairs; for documents passed to its template they are
    # (0, document index), and document_ids holds the result indices.
    sources: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class GroundedAnswer:
    text: str
    citations: list[Citation] = field(default_factory=list)
    relevant_documents: tuple[int, ...] | None = None
    cited_documents: tuple[int, ...] | None = None
    answer: str | None = None  # the uncited "Answer:" of citation_mode="accurate"


_SECTION = re.compile(r"^(Relevant Documents|Cited Documents|Answer|Grounded answer):[ \t]*", re.MULTILINE)
# <co: 0,2>span</co: 0,2>  (Command-R / R+)  and  <co>span</co: 0:[1,2],1:[0]>  (R7B)
_CO_TAG = re.compile(r"<co: ?([0-9][0-9, ]*)>|<co>|</co: ?([^>]*)>")


def parse_grounded_answer(text: str) -> GroundedAnswer:
    """Split a Command-R grounded-generation answer into plain text and citations.

    Accepts the full ``Relevant Documents: / Cited Documents: / Answer: / Grounded answer:``
    output of the rag template, or just the grounded text. Spans are character offsets into
    the returned plain ``text``. Unbalanced or mismatched ``<co>`` tags -> ParseError.
    """
    if not isinstance(text, str):
        raise ParseError(f"expected model output as str, got {type(text).__name__}")
    text = text.replace("<|START_RESPONSE|>", "").replace("<|END_RESPONSE|>", "")
    sections = _split_sections(text)
    if sections and "Grounded answer" not in sections:
        raise ParseError(f"no 'Grounded answer:' section (found {sorted(sections)}): the output was cut off or is not a grounded answer")
    grounded = sections.get("Grounded answer", text).strip()
    plain, citations = _strip_citations(grounded)
    return GroundedAnswer(
        text=plain,
        citations=citations,
        relevant_documents=_doc_list(sections.get("Relevant Documents"), "Relevant Documents"),
        cited_documents=_doc_list(sections.get("Cited Documents"), "Cited Documents"),
        answer=sections["Answer"].strip() if "Answer" in sections else None,
    )


def _split_sections(text: str) -> dict[str, str]:
    heads = list(_SECTION.finditer(text))
    return {m.group(1): text[m.end():(heads[k + 1].start() if k + 1 < len(heads) else len(text))]
            for k, m in enumerate(heads)}


def _doc_list(value: str | None, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    value = value.strip()
    if value in ("None", ""):
        return ()
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise ParseError(f"'{what}:' should be comma-separated document numbers or None, got {value!r}") from None


def _strip_citations(grounded: str) -> tuple[str, list[Citation]]:
    plain: list[str] = []
    citations: list[Citation] = []
    length = 0
    open_tag: tuple[str | None, int, int] | None = None  # (doc list of the opening tag, plain offset, raw pos)
    pos = 0
    for m in _CO_TAG.finditer(grounded):
        piece = grounded[pos:m.start()]
        plain.append(piece)
        length += len(piece)
        pos = m.end()
        if not m.group(0).startswith("</"):
            if open_tag is not None:
                raise ParseError(f"nested <co> tag at char {m.start()}: {grounded[max(0, m.start() - 40):m.end()]!r}")
            open_tag = (m.group(1), length, m.start())
            continue
        if open_tag is None:
            raise ParseError(f"closing {m.group(0)!r} at char {m.start()} without an opening <co> tag")
        opened_docs, start, _ = open_tag
        doc_ids, sources = _citation_ids(opened_docs, m.group(2), m.group(0))
        citations.append(Citation(start, length, "".join(plain)[start:length], doc_ids, sources))
        open_tag = None
    if open_tag is not None:
        raise ParseError(f"<co> tag at char {open_tag[2]} is never closed: the output was cut off")
    plain.append(grounded[pos:])
    return "".join(plain), citations


def _citation_ids(opened: str | None, closed: str, tag: str) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    closed = closed.strip()
    if opened is not None:  # Command-R: <co: 0,1>...</co: 0,1>
        try:
            ids = tuple(int(x) for x in opened.split(","))
            closing = tuple(int(x) for x in closed.split(","))
        except ValueError:
            raise ParseError(f"citation tag {tag!r} should list document numbers") from None
        if ids != closing:
            raise ParseError(f"citation opened with documents {ids} but closed with {closing} ({tag!r})")
        return ids, ()
    # R7B: </co: 0:[1,2],1:[0]>
    sources = []
    for call, indices in re.findall(r"(\d+):\[([0-9, ]*)\]", closed):
        sources += [(int(call), int(i)) for i in indices.split(",") if i.strip()]
    if not sources or re.sub(r"\d+:\[[0-9, ]*\]|,|\s", "", closed):
        raise ParseError(f"citation tag {tag!r} should look like </co: 0:[1,2],1:[0]>")
    return tuple(sorted({i for _, i in sources})), tuple(sources)


__all__ = ["parse_tool_calls", "parse_grounded_answer", "ToolCall", "Citation", "GroundedAnswer"]
