"""Text: the Command-R tokenizer (``tokenizer``), chat / tool-use / grounded-generation prompts from the
checkpoint's sandboxed Jinja templates (``chat``) and the parsers of what the model writes (``parsing``).

May import: ``pycohere.checkpoints`` and below (a GGUF probe carries the vocabulary); never the model.
"""
from .chat import apply_chat_template
from .parsing import Citation, GroundedAnswer, ToolCall, parse_grounded_answer, parse_tool_calls
from .tokenizer import BatchEncoding, CohereTokenizer, IncrementalDetokenizer

__all__ = ["BatchEncoding", "Citation", "CohereTokenizer", "GroundedAnswer", "IncrementalDetokenizer", "ToolCall",
           "apply_chat_template", "parse_grounded_answer", "parse_tool_calls"]
