"""Command-R prompt rendering and output parsing.

Oracles: transformers' apply_chat_template / CohereTokenizer.apply_tool_use_template /
apply_grounded_generation_template on the same templates and messages; the real
c4ai-command-r-v01 templates as llama.cpp's ggml-vocab-command-r.gguf carries them; and the
example prompts/outputs printed in transformers' CohereTokenizerFast docstrings.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pycohere.text.chat import (
    DEFAULT_SYSTEM_PROMPT,
    apply_chat_template,
    builtin_templates,
    tool_from_json_schema,
)
from pycohere.text.parsing import Citation, ToolCall, parse_grounded_answer, parse_tool_calls
from pycohere.errors import ChatTemplateError, ParseError
from pycohere.io.gguf import GGUFReader
from pycohere.text.tokenizer import CohereTokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tokenizer" / "tiny-command-r"

TOOLS = [  # transformers' apply_tool_use_template docstring example
    {"name": "internet_search",
     "description": "Returns a list of relevant document snippets for a textual query retrieved from the internet",
     "parameter_definitions": {"query": {"description": "Query to search the internet with", "type": "str", "required": True}}},
    {"name": "directly_answer",
     "description": "Calls a standard (un-augmented) AI chatbot to generate a response given the conversation history",
     "parameter_definitions": {}},
    {"name": "lookup", "description": "Look a word up.",
     "parameter_definitions": {"word": {"description": "The word", "type": "str", "required": True},
                               "lang": {"description": "Language code", "type": "str"}}},
]
DOCUMENTS = [  # transformers' apply_grounded_generation_template docstring example
    {"title": "Tall penguins", "text": "Emperor penguins are the tallest."},
    {"title": "Penguin habitats", "text": "Emperor penguins only live in Antarctica."},
]
USER_ONLY = [{"role": "user", "content": "Whats the biggest penguin in the world?"}]
WITH_SYSTEM = [
    {"role": "system", "content": "You are a penguin expert. Be brief."},
    {"role": "user", "content": "Hi there "},
    {"role": "assistant", "content": " Hello! Ask me about penguins."},
    {"role": "user", "content": "Whats the biggest penguin in the world?"},
]


@pytest.fixture()
def tiny() -> CohereTokenizer:
    return CohereTokenizer.from_pretrained(TINY)


@pytest.fixture(scope="module")
def llama_data() -> Path:
    spec = importlib.util.spec_from_file_location("fetch_llama_cpp_data", ROOT / "tools" / "fetch_llama_cpp_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        return tool.fetch()
    except tool.RegistryUnreachableError as exc:  # only a network failure may skip
        pytest.skip(f"PyPI unreachable, cannot fetch llama-cpp-python sdist: {str(exc).splitlines()[0]}")


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="transformers (oracle) is not installed")


def _hf_tokenizer(transformers, tiny, chat_template):
    from tokenizers import Tokenizer

    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tiny.backend_tokenizer.to_str()), bos_token=tiny.bos_token,
        eos_token=tiny.eos_token, pad_token=tiny.pad_token, add_bos_token=True, add_eos_token=False)
    hf.chat_template = chat_template
    return hf


# --- built-in templates ----------------------------------------------------------------------------
def test_builtin_templates_equal_the_real_checkpoint(llama_data):
    meta = GGUFReader(llama_data / "ggml-vocab-command-r.gguf").metadata
    ours = builtin_templates()
    assert ours["default"] == meta["tokenizer.chat_template"]
    assert ours["tool_use"] == meta["tokenizer.chat_template.tool_use"]
    assert ours["rag"] == meta["tokenizer.chat_template.rag"]
    real = CohereTokenizer.from_pretrained(llama_data / "ggml-vocab-command-r.gguf")
    assert real.chat_template == ours


def test_default_template_documented_output():
    # transformers CohereTokenizerFast.default_chat_template docstring
    rendered = apply_chat_template(None, [{"role": "user", "content": "Hello, how are you?"}], add_generation_prompt=True)
    assert rendered == ("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hello, how are you?<|END_OF_TURN_TOKEN|>"
                        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")


def test_grounded_generation_documented_prompt_structure(tiny):
    text = tiny.apply_grounded_generation_template(USER_ONLY, documents=DOCUMENTS, tokenize=False, add_generation_prompt=True)
    # the <results> block as printed in transformers' docstring
    assert ("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><results>\nDocument: 0\ntitle: Tall penguins\n"
            "text: Emperor penguins are the tallest.\n\nDocument: 1\ntitle: Penguin habitats\n"
            "text: Emperor penguins only live in Antarctica.\n</results><|END_OF_TURN_TOKEN|>") in text
    assert "Thirdly, Write 'Answer:'" in text
    fast = tiny.apply_grounded_generation_template(USER_ONLY, documents=DOCUMENTS, citation_mode="fast", tokenize=False)
    assert "Thirdly" not in fast and fast.endswith("for a fact from document 0.<|END_OF_TURN_TOKEN|>")


def test_use_default_system_prompt(tiny):
    tiny.chat_template = None  # built-ins only; the flag selects the default-system-prompt variant
    tiny.use_default_system_prompt = True
    text = tiny.apply_chat_template(USER_ONLY, tokenize=False)
    assert text.startswith(f"<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{DEFAULT_SYSTEM_PROMPT}<|END_OF_TURN_TOKEN|>")
    tiny.use_default_system_prompt = False
    assert "<|SYSTEM_TOKEN|>" not in tiny.apply_chat_template(USER_ONLY, tokenize=False)


# --- oracle: transformers renders the same strings ----------------------------------------------------
@pytest.mark.parametrize("messages", [USER_ONLY, WITH_SYSTEM], ids=["user", "system"])
@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("kind", ["default", "tool_use", "rag", "rag_fast"])
def test_renders_like_transformers(transformers, tiny, messages, generation_prompt, kind):
    hf = _hf_tokenizer(transformers, tiny, dict(tiny.chat_template))
    kwargs = {"default": {}, "tool_use": {"chat_template": "tool_use", "tools": TOOLS},
              "rag": {"chat_template": "rag", "documents": DOCUMENTS, "citation_mode": "accurate"},
              "rag_fast": {"chat_template": "rag", "documents": DOCUMENTS, "citation_mode": "fast"}}[kind]
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)
    assert tiny.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs) == expected
    assert apply_chat_template(None, messages, add_generation_prompt=generation_prompt, **kwargs) == expected
    ids = tiny.apply_chat_template(messages, add_generation_prompt=generation_prompt, **kwargs)
    assert ids == hf.apply_chat_template(messages, add_generation_prompt=generation_prompt, return_dict=False, **kwargs)
    assert ids[0] == tiny.bos_token_id and ids[1] != tiny.bos_token_id  # BOS once, from the template


def test_named_methods_match_transformers_cohere_tokenizer(transformers, tiny):
    hf = transformers.AutoTokenizer.from_pretrained(TINY)
    assert type(hf).__name__ == "CohereTokenizer"
    for messages in (USER_ONLY, WITH_SYSTEM):
        assert tiny.apply_tool_use_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True) == \
            hf.apply_tool_use_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
        for mode in ("accurate", "fast"):
            assert tiny.apply_grounded_generation_template(messages, documents=DOCUMENTS, citation_mode=mode, tokenize=False) == \
                hf.apply_grounded_generation_template(messages, documents=DOCUMENTS, citation_mode=mode, tokenize=False)
    assert tiny.apply_chat_template(WITH_SYSTEM, tools=TOOLS, tokenize=False) == \
        hf.apply_chat_template(WITH_SYSTEM, tools=TOOLS, tokenize=False)  # tools= picks "tool_use"


def test_batch_rendering(tiny):
    batch = tiny.apply_chat_template([USER_ONLY, WITH_SYSTEM], tokenize=False)
    assert batch == [tiny.apply_chat_template(USER_ONLY, tokenize=False), tiny.apply_chat_template(WITH_SYSTEM, tokenize=False)]
    enc = tiny.apply_chat_template([USER_ONLY, WITH_SYSTEM], return_tensors="np", add_generation_prompt=True)
    assert enc["input_ids"].shape[0] == 2 and enc["attention_mask"][0, 0] == 0  # left-padded


@pytest.mark.parametrize("name", ["CohereForAI-c4ai-command-r-plus-tool_use.jinja",
                                  "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja"])
def test_llama_cpp_cohere_templates_render_like_transformers(transformers, tiny, llama_data, name):
    """Checkpoint-provided templates (Command R+, R7B: macros, namespace, loop break, tojson)."""
    template = (llama_data / "templates" / name).read_text(encoding="utf-8")
    tools = [{"type": "function", "function": {
        "name": "internet_search", "description": "Search the web",
        "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "the query"},
                                                        "n": {"type": "integer", "description": "how many"}},
                       "required": ["query"]}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Biggest penguin?"},
        {"role": "assistant", "content": "", "reasoning_content": "I will search.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "internet_search", "arguments": {"query": "biggest penguin"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Emperor penguins are the tallest."},
    ]
    hf = _hf_tokenizer(transformers, tiny, template)
    tiny.chat_template = template
    for kwargs in ({"tools": tools}, {"tools": tools, "documents": DOCUMENTS, "enable_citations": True}):
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        assert tiny.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs) == expected
        assert "internet_search" in expected


def test_tool_from_json_schema_feeds_the_builtin_template(tiny):
    spec = tool_from_json_schema({"type": "function", "function": {
        "name": "lookup", "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string", "description": "The word"},
                                                        "lang": {"type": "string", "description": "Language code"}},
                       "required": ["word"]}}})
    expected = {**TOOLS[2], "parameter_definitions": {"word": TOOLS[2]["parameter_definitions"]["word"],
                                                      "lang": {**TOOLS[2]["parameter_definitions"]["lang"], "required": False}}}
    assert spec == expected
    text = tiny.apply_tool_use_template(USER_ONLY, tools=[spec], tokenize=False)
    assert "def lookup(word: str, lang: Optional[str] = None) -> List[Dict]:" in text


# --- errors ------------------------------------------------------------------------------------------
def test_non_alternating_roles(tiny):
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError, match="alternate"):
        tiny.apply_chat_template(bad, tokenize=False)
    with pytest.raises(ChatTemplateError, match="alternate"):  # the template's own raise_exception
        tiny.apply_chat_template(bad, tokenize=False, validate=False)
    with pytest.raises(ChatTemplateError, match="alternate"):
        tiny.apply_tool_use_template(bad, tools=TOOLS, tokenize=False)
    with pytest.raises(ChatTemplateError, match="alternate"):
        apply_chat_template(None, [{"role": "assistant", "content": "a"}])


def test_unknown_roles_and_bad_messages(tiny):
    with pytest.raises(ChatTemplateError, match="role 'tool'"):
        tiny.apply_chat_template(USER_ONLY + [{"role": "tool", "content": "x"}], tokenize=False)
    with pytest.raises(ChatTemplateError, match="role 'bot'"):
        tiny.apply_grounded_generation_template([{"role": "bot", "content": "x"}], documents=DOCUMENTS, tokenize=False)
    with pytest.raises(ChatTemplateError, match="non-empty list"):
        tiny.apply_chat_template([], tokenize=False)
    with pytest.raises(ChatTemplateError, match="string 'content'"):
        tiny.apply_chat_template([{"role": "user", "content": None}], tokenize=False)
    with pytest.raises(ChatTemplateError, match="system message only first"):
        tiny.apply_chat_template(USER_ONLY + [{"role": "system", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("tools, match", [
    ([{"description": "d", "parameter_definitions": {}}], "needs a 'name'"),
    ([{"name": "2fast", "description": "d", "parameter_definitions": {}}], "needs a 'name'"),
    ([{"name": "t", "parameter_definitions": {}}], "string 'description'"),
    ([{"name": "t", "description": "d"}], "parameter_definitions"),
    ([{"type": "function", "function": {"name": "t"}}], "tool_from_json_schema"),
    ([{"name": "t", "description": "d", "parameter_definitions": {"q": "str"}}], "spec must be a dict"),
    ([{"name": "t", "description": "d", "parameter_definitions": {"q": {"type": "str"}}}], "'description'"),
    ([{"name": "t", "description": "d", "parameter_definitions": {"q": {"type": "str", "description": "x", "required": "yes"}}}], "true or false"),
    ([{"name": "t", "description": "d", "parameter_definitions": {"bad name": {"type": "str", "description": "x"}}}], "not an identifier"),
    ("internet_search", "list of tool specs"),
])
def test_malformed_tool_specs(tiny, tools, match):
    with pytest.raises(ChatTemplateError, match=match):
        tiny.apply_tool_use_template(USER_ONLY, tools=tools, tokenize=False)


def test_other_template_errors(tiny):
    with pytest.raises(ChatTemplateError, match="needs tools"):
        tiny.apply_chat_template(USER_ONLY, chat_template="tool_use", tokenize=False)
    with pytest.raises(ChatTemplateError, match="needs documents"):
        tiny.apply_chat_template(USER_ONLY, chat_template="rag", tokenize=False)
    with pytest.raises(ChatTemplateError, match="document 0"):
        tiny.apply_grounded_generation_template(USER_ONLY, documents=["text"], tokenize=False)
    with pytest.raises(ChatTemplateError, match="citation_mode"):
        tiny.apply_grounded_generation_template(USER_ONLY, documents=DOCUMENTS, citation_mode="slow")
    with pytest.raises(ChatTemplateError, match="no chat template named 'tool-use'"):
        tiny.apply_chat_template(USER_ONLY, chat_template="tool-use", tokenize=False)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        tiny.apply_chat_template(USER_ONLY, chat_template="{% if %}", tokenize=False)
    with pytest.raises(ChatTemplateError, match="rejected"):  # the sandbox blocks attribute escapes
        tiny.apply_chat_template(USER_ONLY, chat_template="{{ messages.__class__.__mro__ }}", tokenize=False)


# --- parsers -------------------------------------------------------------------------------------------
def test_parse_command_r_action():
    # the model output printed in transformers' apply_tool_use_template docstring
    out = ('Action: ```json\n[\n    {\n        "tool_name": "internet_search",\n        "parameters": {\n'
           '            "query": "biggest penguin in the world"\n        }\n    }\n]\n```')
    assert parse_tool_calls(out) == [ToolCall("internet_search", {"query": "biggest penguin in the world"})]
    multi = ('Plan: search twice.\nAction: ```json\n[{"tool_name": "internet_search", "parameters": {"query": "a"}},'
             ' {"tool_name": "directly_answer", "parameters": {}}]```<|END_OF_TURN_TOKEN|>')
    assert [c.name for c in parse_tool_calls(multi)] == ["internet_search", "directly_answer"]
    assert parse_tool_calls(multi)[1].parameters == {}
    assert parse_tool_calls("The emperor penguin is the biggest.") == []


def test_parse_r7b_action():
    out = ('<|START_THINKING|>I will search for penguins.<|END_THINKING|><|START_ACTION|>[\n'
           '    {"tool_call_id": "0", "tool_name": "internet_search", "parameters": {"query": "biggest penguin"}},\n'
           '    {"tool_call_id": "1", "tool_name": "lookup", "parameters": {"word": "emperor", "lang": "en"}}\n'
           ']<|END_ACTION|><|END_OF_TURN_TOKEN|>')
    assert parse_tool_calls(out) == [ToolCall("internet_search", {"query": "biggest penguin"}, "0"),
                                     ToolCall("lookup", {"word": "emperor", "lang": "en"}, "1")]


@pytest.mark.parametrize("text, match", [
    ('Action: ```json\n[{"tool_name": "x", "parameters": {]\n```', "not valid JSON"),
    ('Action: ```json\n{"tool_name": "x", "parameters": {}}\n```', "JSON list"),
    ('Action: ```json\n[{"name": "x"}]\n```', "tool_name"),
    ('Action: ```json\n[{"tool_name": "x", "parameters": [1]}]\n```', "non-object parameters"),
    ('Action: ```json\n[{"tool_name": "x", "parameters": {}}', "never closes"),
    ('<|START_ACTION|>[{"tool_name": "x", "parameters": {}}]', "END_ACTION"),
    ('Action: ```json\n[] and more\n```', "text after"),
])
def test_malformed_actions(text, match):
    with pytest.raises(ParseError, match=match):
        parse_tool_calls(text)


def test_parse_grounded_answer_documented_output():
    # the model output printed in transformers' apply_grounded_generation_template docstring
    answer = ("The Emperor Penguin is the tallest or biggest penguin in the world. It is a bird that lives only in "
              "Antarctica and grows to a height of around 122 centimetres.")
    out = ("Relevant Documents: 0,1\nCited Documents: 0,1\nAnswer: " + answer + "\nGrounded answer: The <co: 0>Emperor "
           "Penguin</co: 0> is the <co: 0>tallest</co: 0> or biggest penguin in the world. It is a bird that <co: 1>lives "
           "only in Antarctica</co: 1> and <co: 0>grows to a height of around 122 centimetres.</co: 0>")
    parsed = parse_grounded_answer(out)
    assert parsed.text == answer == parsed.answer  # the citations wrap the same answer
    assert parsed.relevant_documents == (0, 1) and parsed.cited_documents == (0, 1)
    assert [(c.text, c.document_ids) for c in parsed.citations] == [
        ("Emperor Penguin", (0,)), ("tallest", (0,)), ("lives only in Antarctica", (1,)),
        ("grows to a height of around 122 centimetres.", (0,))]
    for c in parsed.citations:
        assert parsed.text[c.start:c.end] == c.text
    assert parsed.citations[0].start == len("The ")


def test_parse_grounded_fast_mode_and_multi_document():
    out = "Relevant Documents: 0,2\nCited Documents: None\nGrounded answer: <co: 0,2>Emperors</co: 0,2> are tall."
    parsed = parse_grounded_answer(out)
    assert parsed.text == "Emperors are tall." and parsed.answer is None and parsed.cited_documents == ()
    assert parsed.citations == [Citation(0, 8, "Emperors", (0, 2))]
    bare = parse_grounded_answer("No tags here.")
    assert bare.text == "No tags here." and bare.citations == [] and bare.relevant_documents is None


def test_parse_r7b_citations():
    # format from the R7B template's Grounding section: "<co>span</co: 0:[1,2],1:[0]>"
    out = ("<|START_RESPONSE|>The <co>emperor penguin</co: 0:[0]> is the tallest and <co>lives in Antarctica</co: 0:[1,2],1:[0]>."
           "<|END_RESPONSE|>")
    parsed = parse_grounded_answer(out)
    assert parsed.text == "The emperor penguin is the tallest and lives in Antarctica."
    first, second = parsed.citations
    assert (first.text, first.document_ids, first.sources) == ("emperor penguin", (0,), ((0, 0),))
    assert second.sources == ((0, 1), (0, 2), (1, 0)) and second.document_ids == (0, 1, 2)
    assert parsed.text[second.start:second.end] == "lives in Antarctica"


@pytest.mark.parametrize("text, match", [
    ("Grounded answer: <co: 0>tall</co: 1>", "closed with"),
    ("Grounded answer: <co: 0>tall", "never closed"),
    ("Grounded answer: tall</co: 0>", "without an opening"),
    ("Grounded answer: <co: 0>a <co: 1>b</co: 1></co: 0>", "nested"),
    ("Relevant Documents: 0\nCited Documents: 0\nAnswer: cut off", "no 'Grounded answer:'"),
    ("Relevant Documents: zero\nGrounded answer: x", "document numbers"),
    ("<co>x</co: zero>", "should look like"),
])
def test_malformed_grounded_answers(text, match):
    with pytest.raises(ParseError, match=match):
        parse_grounded_answer(text)
