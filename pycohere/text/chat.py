"""Command-R prompts: chat, tool use and grounded generation, rendered from the checkpoint's Jinja templates.

Rendering follows transformers exactly (``utils/chat_template_utils.py``): templates run in a
``jinja2.sandbox.ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks``, the
``loopcontrols`` extension, a ``tojson`` filter that does not HTML-escape, and the globals
``raise_exception`` and ``strftime_now``; the template sees ``messages``, ``tools``,
``documents``, ``add_generation_prompt``, the tokenizer's special tokens (``bos_token``...) and
any extra keyword (``citation_mode``).

Template choice follows ``PreTrainedTokenizerBase.get_chat_template``: a checkpoint may ship one
template or a list of named ones (Command-R: ``default``, ``tool_use``, ``rag``). When it ships
none — or lacks the asked-for name — the built-in Command-R templates below are used.

The parsers of what the model writes back are in :mod:`pycohere.text.parsing`.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from typing import Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ChatTemplateError, TokenizerError

# --- built-in Command-R templates -----------------------------------------------------------------
# Verbatim from transformers 4.40's CohereTokenizerFast.default_chat_template
# (src/transformers/models/cohere/tokenization_cohere_fast.py; removed from transformers in 4.43,
# when templates moved into the checkpoints). The same three templates are what
# CohereForAI/c4ai-command-r-v01's tokenizer_config.json ships, and what llama.cpp's
# models/ggml-vocab-command-r.gguf carries as tokenizer.chat_template{,.tool_use,.rag}; a test
# checks the strings below against that file.
DEFAULT_SYSTEM_PROMPT = "You are Command-R, a brilliant, sophisticated, AI-assistant trained to assist human users by providing thorough responses. You are trained by Cohere."
DEFAULT_RAG_PREAMBLE = """## Task and Context
You help people answer their questions and other requests interactively. You will be asked a very wide array of requests on all kinds of topics. You will be equipped with a wide range of search engines or similar tools to help you, which you use to research your answer. You should focus on serving the user's needs as best you can, which will be wide-ranging.

## Style Guide
Unless the user asks for a different style of answer, you should answer in full sentences, using proper grammar and spelling."""

# fmt: off
_DEFAULT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}"  # Extract system message if it's present
    "{% set system_message = messages[0]['content'] %}"
    "{% elif USE_DEFAULT_PROMPT == true %}"
    "{% set loop_messages = messages %}"  # Or use the default system message if the flag is set
    "{% set system_message = 'DEFAULT_SYSTEM_MESSAGE' %}"
    "{% else %}"
    "{% set loop_messages = messages %}"
    "{% set system_message = false %}"
    "{% endif %}"
    "{% if system_message != false %}"  # Start with system message
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + system_message + '<|END_OF_TURN_TOKEN|>' }}"
    "{% endif %}"
    "{% for message in loop_messages %}"  # Loop over all non-system messages
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'user' %}"  # After all of that, handle messages/roles in a fairly normal way
    "{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'  + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}"
    "{% endif %}"
)

_TOOL_USE_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}"  # Extract system message if it's present
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}"
    "{% set loop_messages = messages %}"
    "{% set system_message = 'DEFAULT_SYSTEM_MESSAGE' %}"
    "{% endif %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' }}"
    "{{ '# Safety Preamble' }}"
    "{{ '\nThe instructions in this section override those in the task description and style guide sections. Don\\'t answer questions that are harmful or immoral.' }}"
    "{{ '\n\n# System Preamble' }}"
    "{{ '\n## Basic Rules' }}"
    "{{ '\nYou are a powerful conversational AI trained by Cohere to help people. You are augmented by a number of tools, and your job is to use and consume the output of these tools to best help the user. You will see a conversation history between yourself and a user, ending with an utterance from the user. You will then see a specific instruction instructing you what kind of response to generate. When you answer the user\\'s requests, you cite your sources in your answers, according to those instructions.' }}"
    "{{ '\n\n# User Preamble' }}"
    "{{ '\n' + system_message }}"
    "{{'\n\n## Available Tools\nHere is a list of tools that you have available to you:\n\n'}}"
    "{% for tool in tools %}"
    "{% if loop.index0 != 0 %}"
    "{{ '\n\n'}}"
    "{% endif %}"
    "{{'```python\ndef ' + tool.name + '('}}"
    "{% for param_name, param_fields in tool.parameter_definitions.items() %}"
    "{% if loop.index0 != 0 %}"
    "{{ ', '}}"
    "{% endif %}"
    "{{param_name}}: "
    "{% if not param_fields.required %}"
    "{{'Optional[' + param_fields.type + '] = None'}}"
    "{% else %}"
    "{{ param_fields.type }}"
    "{% endif %}"
    "{% endfor %}"
    '{{ \') -> List[Dict]:\n    """\'}}'
    "{{ tool.description }}"
    "{% if tool.parameter_definitions|length != 0 %}"
    "{{ '\n\n    Args:\n        '}}"
    "{% for param_name, param_fields in tool.parameter_definitions.items() %}"
    "{% if loop.index0 != 0 %}"
    "{{ '\n        ' }}"
    "{% endif %}"
    "{{ param_name + ' ('}}"
    "{% if not param_fields.required %}"
    "{{'Optional[' + param_fields.type + ']'}}"
    "{% else %}"
    "{{ param_fields.type }}"
    "{% endif %}"
    "{{ '): ' + param_fields.description }}"
    "{% endfor %}"
    "{% endif %}"
    '{{ \'\n    """\n    pass\n```\' }}'
    "{% endfor %}"
    "{{ '<|END_OF_TURN_TOKEN|>'}}"
    "{% for message in loop_messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% elif message['role'] == 'system' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'  + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{{'<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Write \\'Action:\\' followed by a json-formatted list of actions that you want to perform in order to produce a good response to the user\\'s last input. You can use any of the supplied tools any number of times, but you should aim to execute the minimum number of necessary actions for the input. You should use the `directly-answer` tool if calling the other tools is unnecessary. The list of actions you want to call should be formatted as a list of json objects, for example:\n```json\n[\n    {\n        \"tool_name\": title of the tool in the specification,\n        \"parameters\": a dict of parameters to input into the tool as they are defined in the specs, or {} if it takes no parameters\n    }\n]```<|END_OF_TURN_TOKEN|>'}}"
    "{% if add_generation_prompt %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}"
    "{% endif %}"
)

_RAG_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}"  # Extract system message if it's present
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}"
    "{% set loop_messages = messages %}"
    "{% set system_message = 'DEFAULT_SYSTEM_MESSAGE' %}"
    "{% endif %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' }}"
    "{{ '# Safety Preamble' }}"
    "{{ '\nThe instructions in this section override those in the task description and style guide sections. Don\\'t answer questions that are harmful or immoral.' }}"
    "{{ '\n\n# System Preamble' }}"
    "{{ '\n## Basic Rules' }}"
    "{{ '\nYou are a powerful conversational AI trained by Cohere to help people. You are augmented by a number of tools, and your job is to use and consume the output of these tools to best help the user. You will see a conversation history between yourself and a user, ending with an utterance from the user. You will then see a specific instruction instructing you what kind of response to generate. When you answer the user\\'s requests, you cite your sources in your answers, according to those instructions.' }}"
    "{{ '\n\n# User Preamble' }}"
    "{{ '\n' + system_message }}"
    "{{ '<|END_OF_TURN_TOKEN|>'}}"
    "{% for message in loop_messages %}"  # Loop over all non-system messages
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'user' %}"  # After all of that, handle messages/roles in a fairly normal way
    "{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% elif message['role'] == 'system' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'  + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>'}}"
    "{{ '<results>' }}"
    "{% for document in documents %}"  # Loop over all non-system messages
    "{{ '\nDocument: ' }}"
    "{{ loop.index0 }}\n"
    "{% for key, value in document.items() %}"
    "{{ key }}: {{value}}\n"
    "{% endfor %}"
    "{% endfor %}"
    "{{ '</results>'}}"
    "{{ '<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' }}"
    "{{ 'Carefully perform the following instructions, in order, starting each with a new line.\n' }}"
    "{{ 'Firstly, Decide which of the retrieved documents are relevant to the user\\'s last input by writing \\'Relevant Documents:\\' followed by comma-separated list of document numbers. If none are relevant, you should instead write \\'None\\'.\n' }}"
    "{{ 'Secondly, Decide which of the retrieved documents contain facts that should be cited in a good answer to the user\\'s last input by writing \\'Cited Documents:\\' followed a comma-separated list of document numbers. If you dont want to cite any of them, you should instead write \\'None\\'.\n' }}"
    "{% if citation_mode=='accurate' %}"
    "{{ 'Thirdly, Write \\'Answer:\\' followed by a response to the user\\'s last input in high quality natural english. Use the retrieved documents to help you. Do not insert any citations or grounding markup.\n' }}"
    "{% endif %}"
    "{{ 'Finally, Write \\'Grounded answer:\\' followed by a response to the user\\'s last input in high quality natural english. Use the symbols <co: doc> and </co: doc> to indicate when a fact comes from a document in the search result, e.g <co: 0>my fact</co: 0> for a fact from document 0.' }}"
    "{{ '<|END_OF_TURN_TOKEN|>' }}"
    "{% if add_generation_prompt %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}"
    "{% endif %}"
)
# fmt: on


def _jinja_string_literal(text: str) -> str:
    # The same escaping transformers applied before substituting a message into a template.
    return text.replace("\n", "\\n").replace("'", "\\'")


def builtin_templates(use_default_system_prompt: bool = False) -> dict[str, str]:
    """The built-in Command-R templates ``{"default", "tool_use", "rag"}`` (transformers 4.40)."""
    default = _DEFAULT_TEMPLATE.replace("USE_DEFAULT_PROMPT", "true" if use_default_system_prompt else "false")
    default = default.replace("DEFAULT_SYSTEM_MESSAGE", _jinja_string_literal(DEFAULT_SYSTEM_PROMPT))
    preamble = _jinja_string_literal(DEFAULT_RAG_PREAMBLE)
    return {
        "default": default,
        "tool_use": _TOOL_USE_TEMPLATE.replace("DEFAULT_SYSTEM_MESSAGE", preamble),
        "rag": _RAG_TEMPLATE.replace("DEFAULT_SYSTEM_MESSAGE", preamble),
    }


# Command-R's special tokens, for rendering without a tokenizer (tokenizer_config of c4ai-command-r-v01).
COMMAND_R_SPECIAL_TOKENS = {"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>",
                            "unk_token": "<UNK>", "pad_token": "<PAD>"}
CITATION_MODES = ("accurate", "fast")


# --- the sandbox (transformers utils/chat_template_utils.py _cached_compile_jinja_template) --------
def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes; transformers overrides it with plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _TemplateDict:
    # transformers exposes a restricted dict() so templates cannot reach dict's attributes.
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # Namespaces that refuse underscore attributes (transformers' TemplateNamespace).
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc.message} (line {exc.lineno})") from None


def render_template(template: str, messages, **context) -> str:
    """Render one template; any Jinja error (``raise_exception`` included) -> ChatTemplateError."""
    try:
        return compile_template(template).render(messages=messages, **context)
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"chat template rejected the input: {exc}") from None
    except (TypeError, AttributeError, KeyError, IndexError) as exc:  # e.g. iterating tools=None
        raise ChatTemplateError(f"chat template failed on this input ({type(exc).__name__}: {exc})") from None


# --- template selection ---------------------------------------------------------------------------
def resolve_template(tokenizer, chat_template: str | None, tools) -> tuple[str, str | None]:
    """(template text, its name or None), as transformers' get_chat_template picks it, with the
    built-in Command-R templates standing in for names the checkpoint does not have."""
    own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    named: dict[str, str] = dict(own) if isinstance(own, Mapping) else ({"default": own} if isinstance(own, str) else {})
    builtins = builtin_templates(bool(getattr(tokenizer, "use_default_system_prompt", False)))
    if chat_template is None:
        name = "tool_use" if tools is not None and ("tool_use" in named or not named) else "default"
        if name not in named and named and not isinstance(own, str):
            raise ChatTemplateError(
                f"this checkpoint has chat templates {sorted(named)} and none is called 'default'; "
                "pass chat_template=<one of those names>"
            )
        return named.get(name, builtins[name]), name
    if chat_template in named:
        return named[chat_template], chat_template
    if chat_template in builtins:
        return builtins[chat_template], chat_template
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", chat_template):
        raise ChatTemplateError(
            f"no chat template named {chat_template!r}; available: {sorted(set(named) | set(builtins))}"
        )
    return chat_template, None  # a literal Jinja template


# --- validation -----------------------------------------------------------------------------------
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def validate_messages(messages, template_name: str | None, builtin: bool) -> None:
    """Python-side checks the Command-R templates need but only partly make (the tool_use and
    rag templates silently drop unknown roles; the default one drops them when they happen to
    fall on an odd position)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"message {i} is a {type(message).__name__}, not a dict with 'role' and 'content'")
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise ChatTemplateError(f"message {i} has no 'role' string: {dict(message)!r}")
    if not builtin:
        return  # a checkpoint's own template knows its roles
    roles = [m["role"] for m in messages]
    for i, message in enumerate(messages):
        role = message["role"]
        if role not in ("system", "user", "assistant"):
            raise ChatTemplateError(
                f"message {i} has role {role!r}; the Command-R {template_name} template knows only "
                "'system', 'user' and 'assistant' (tool results go in documents=...)"
            )
        if not isinstance(message.get("content"), str):
            raise ChatTemplateError(f"message {i} ({role}) needs a string 'content', got {message.get('content')!r}")
        if role == "system" and i > 0 and template_name == "default":
            raise ChatTemplateError(f"message {i}: the default Command-R template allows a system message only first")
    turns = [(i, r) for i, r in enumerate(roles) if r != "system"]
    for k, (i, role) in enumerate(turns):
        expected = "user" if k % 2 == 0 else "assistant"
        if role != expected:
            raise ChatTemplateError(
                f"conversation roles must alternate user/assistant/user/assistant/...: message {i} is "
                f"{role!r} where {expected!r} was expected"
            )


def validate_tools(tools) -> None:
    """Command-R tool specs: ``{"name", "description", "parameter_definitions": {param:
    {"description", "type", "required"}}}`` with identifier names (transformers'
    apply_tool_use_template docstring)."""
    if not isinstance(tools, (list, tuple)):
        raise ChatTemplateError(f"tools must be a list of tool specs, got {type(tools).__name__}")
    for i, tool in enumerate(tools):
        where = f"tool {i}"
        if not isinstance(tool, Mapping):
            raise ChatTemplateError(f"{where} must be a dict, got {type(tool).__name__}")
        if "parameter_definitions" not in tool and ("function" in tool or "parameters" in tool):
            raise ChatTemplateError(
                f"{where} is a JSON-schema tool; the Command-R tool_use template needs 'parameter_definitions' "
                "specs: convert it with pycohere.chat.tool_from_json_schema"
            )
        name = tool.get("name")
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise ChatTemplateError(f"{where} needs a 'name' of letters, digits and _ not starting with a digit, got {name!r}")
        where = f"tool {name!r}"
        if not isinstance(tool.get("description"), str):
            raise ChatTemplateError(f"{where} needs a string 'description'")
        params = tool.get("parameter_definitions")
        if not isinstance(params, Mapping):
            raise ChatTemplateError(f"{where} needs a 'parameter_definitions' dict")
        for pname, spec in params.items():
            if not isinstance(pname, str) or not _IDENTIFIER.match(pname):
                raise ChatTemplateError(f"{where}: parameter name {pname!r} is not an identifier")
            if not isinstance(spec, Mapping):
                raise ChatTemplateError(f"{where}: parameter {pname!r} spec must be a dict")
            for key in ("type", "description"):
                if not isinstance(spec.get(key), str):
                    raise ChatTemplateError(f"{where}: parameter {pname!r} needs a string {key!r}")
            if "required" in spec and not isinstance(spec["required"], bool):
                raise ChatTemplateError(f"{where}: parameter {pname!r} 'required' must be true or false")


_JSON_TO_PYTHON = {"string": "str", "number": "float", "integer": "int", "boolean": "bool", "array": "list", "object": "dict"}


def tool_from_json_schema(tool: Mapping) -> dict:
    """OpenAI/JSON-schema tool (``{"type": "function", "function": {...}}`` or the inner dict) ->
    Command-R ``parameter_definitions`` spec (types mapped as llama.cpp's Command R+ template does)."""
    fn = tool.get("function", tool)
    schema = fn.get("parameters") or {}
    required = set(schema.get("required", []))
    params = {}
    for pname, spec in (schema.get("properties") or {}).items():
        params[pname] = {"description": spec.get("description", ""), "type": _JSON_TO_PYTHON.get(spec.get("type"), "Any"),
                         "required": pname in required}
    return {"name": fn.get("name"), "description": fn.get("description", ""), "parameter_definitions": params}


def validate_documents(documents) -> None:
    if not isinstance(documents, (list, tuple)):
        raise ChatTemplateError(f"documents must be a list of dicts, got {type(documents).__name__}")
    for i, document in enumerate(documents):
        if not isinstance(document, Mapping) or not all(isinstance(k, str) for k in document):
            raise ChatTemplateError(f"document {i} must be a dict with string keys (e.g. title, text), got {document!r}")


def check_citation_mode(citation_mode: str) -> None:
    if citation_mode not in CITATION_MODES:
        raise ChatTemplateError(f"citation_mode must be one of {CITATION_MODES}, got {citation_mode!r}")


# --- the public entry point -----------------------------------------------------------------------
def apply_chat_template(
    tokenizer,
    messages,
    chat_template: str | None = None,
    add_generation_prompt: bool = False,
    tokenize: bool = False,
    tools: Sequence[Mapping] | None = None,
    documents: Sequence[Mapping] | None = None,
    *,
    return_dict: bool = False,
    return_tensors: str | None = None,
    validate: bool = True,
    **kwargs,
):
    """Render ``messages`` (or a batch: a list of message lists) into a Command-R prompt.

    ``tokenizer`` may be None (the built-in templates and Command-R's special tokens are used).
    ``chat_template`` is a name (``"default"``, ``"tool_use"``, ``"rag"``) or a Jinja string.
    Extra keywords reach the template (``citation_mode="fast"`` for ``rag``). With
    ``tokenize=True`` the prompt is encoded without adding special tokens (the template already
    starts with ``bos_token``): ids, or with ``return_dict=True`` a BatchEncoding.
    """
    batched = isinstance(messages, (list, tuple)) and bool(messages) and isinstance(messages[0], (list, tuple))
    conversations = list(messages) if batched else [messages]
    template, name = resolve_template(tokenizer, chat_template, tools)
    builtin = template in builtin_templates(False).values() or template in builtin_templates(True).values()
    if "citation_mode" in kwargs:  # no default here: transformers passes none either (apply_grounded_generation_template does)
        check_citation_mode(kwargs["citation_mode"])
    if validate:
        for conversation in conversations:
            validate_messages(conversation, name, builtin)
        if builtin and name == "tool_use":
            if tools is None:
                raise ChatTemplateError("the tool_use template needs tools=[...] (Command-R tool specs)")
            validate_tools(tools)
        if builtin and name == "rag" and documents is None:
            raise ChatTemplateError("the rag template needs documents=[{...}, ...]")
        if documents is not None:
            validate_documents(documents)
    special = dict(getattr(tokenizer, "special_tokens_map", None) or COMMAND_R_SPECIAL_TOKENS)
    context = {**special, **kwargs}  # keywords override special tokens, as in transformers
    rendered = [
        render_template(template, [dict(m) for m in conversation], tools=tools, documents=documents,
                        add_generation_prompt=add_generation_prompt, **context)
        for conversation in conversations
    ]
    if not tokenize:
        return rendered if batched else rendered[0]
    if tokenizer is None:
        raise TokenizerError("tokenize=True needs a tokenizer; pass one or use tokenize=False")
    if return_dict or return_tensors is not None:
        return tokenizer(rendered if batched else rendered[0], add_special_tokens=False, return_tensors=return_tensors,
                         padding=batched and return_tensors is not None)
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in rendered]
    return ids if batched else ids[0]


__all__ = [
    "apply_chat_template", "builtin_templates", "render_template", "resolve_template", "compile_template",
    "validate_messages", "validate_tools", "validate_documents", "tool_from_json_schema", "check_citation_mode",
    "DEFAULT_SYSTEM_PROMPT", "DEFAULT_RAG_PREAMBLE", "COMMAND_R_SPECIAL_TOKENS",
]
