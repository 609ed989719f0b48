"""``pipeline("text-generation", model=...)``: transformers' ``TextGenerationPipeline`` on pycohere.

    >>> pipe = pipeline("text-generation", model="path/to/checkpoint")              # doctest: +SKIP
    >>> pipe("The capital of France is", max_new_tokens=5)                            # doctest: +SKIP
    [{'generated_text': 'The capital of France is Paris.'}]
    >>> pipe([{"role": "user", "content": "Hi!"}], max_new_tokens=20)                 # doctest: +SKIP
    [{'generated_text': [{'role': 'user', 'content': 'Hi!'}, {'role': 'assistant', 'content': '...'}]}]

Behaviour follows transformers 5.x ``pipelines/text_generation.py``: a string is tokenized (BOS added)
and the answer is ``prompt + decode(new tokens, skip_special_tokens=True)`` (``return_full_text=False``:
only the new text); a chat (list of ``{"role", "content"}`` messages) is rendered with the chat template
and a generation prompt, and the answer is the message list with a new assistant message appended (or,
if the chat ends with an assistant message, that message continued). A list of prompts gives a list of
answers, each generated on its own (no padding), as the pipeline does with its default batch size 1.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .checkpoints.probe import probe
from .errors import InputError, TokenizerError
from .model import AutoModelForCausalLM
from .text.tokenizer import CohereTokenizer

SUPPORTED_TASKS = ("text-generation",)
# transformers' TextGenerationPipeline._default_generation_config
DEFAULT_MAX_NEW_TOKENS = 256


def _is_chat(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) and "role" in m for m in x)


class TextGenerationPipeline:
    """Callable: ``pipe(text_or_chat_or_list, return_full_text=True, **generate_kwargs)``."""

    def __init__(self, model, tokenizer, **generate_defaults: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.generate_defaults = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, **generate_defaults}

    def __call__(self, text_inputs, *, return_full_text: bool | None = None, return_tensors: bool = False,
                 skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool | None = None,
                 continue_final_message: bool | None = None, prefix: str = "", **generate_kwargs):
        kwargs = {**self.generate_defaults, **generate_kwargs}
        options = dict(return_full_text=True if return_full_text is None else return_full_text,
                       return_tensors=return_tensors, skip_special_tokens=skip_special_tokens,
                       clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                       continue_final_message=continue_final_message, prefix=prefix)
        if isinstance(text_inputs, str) or _is_chat(text_inputs):
            return self._one(text_inputs, options, kwargs)
        if isinstance(text_inputs, (list, tuple)) and text_inputs and all(
                isinstance(x, str) or _is_chat(x) for x in text_inputs):
            return [self._one(x, options, kwargs) for x in text_inputs]
        raise InputError("text-generation input must be a string, a chat (a list of {'role': ..., 'content': ...} "
                         f"messages), or a non-empty list of those; got {type(text_inputs).__name__}")

    # -- one prompt -------------------------------------------------------------------------------
    def _encode(self, prompt, options) -> tuple[list[int], bool]:
        """Prompt ids, and whether the chat's last (assistant) message is being continued."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(options["prefix"] + prompt), False
        cont = options["continue_final_message"]
        if cont is None:  # transformers: a chat ending with an assistant message is a prefill
            cont = prompt[-1]["role"] == "assistant"
        text = _render_chat(self.tokenizer, prompt, cont)
        # The template writes <BOS_TOKEN> itself: do not add it again (transformers encodes chats the same way).
        return self.tokenizer.encode(text, add_special_tokens=False), cont

    def _one(self, prompt, options, kwargs) -> list[dict]:
        ids, cont = self._encode(prompt, options)
        kwargs = {"tokenizer": self.tokenizer, **kwargs}  # stop_strings need it (transformers passes it too)
        sequences = self.model.generate([ids], **kwargs)
        if kwargs.get("return_dict_in_generate"):
            sequences = sequences.sequences
        records = []
        for seq in sequences:
            seq = [int(t) for t in seq]
            if options["return_tensors"]:
                records.append({"generated_token_ids": seq})
                continue
            new_text = self.tokenizer.decode(seq[len(ids):], skip_special_tokens=options["skip_special_tokens"],
                                             clean_up_tokenization_spaces=options["clean_up_tokenization_spaces"])
            records.append({"generated_text": self._full_text(prompt, new_text, cont) if options["return_full_text"]
                            else new_text})
        return records

    @staticmethod
    def _full_text(prompt, new_text: str, cont: bool):
        if isinstance(prompt, str):
            return prompt + new_text
        messages = [dict(m) for m in prompt]
        if cont:  # continue the final assistant message
            messages[-1]["content"] = messages[-1]["content"] + new_text
            return messages
        return messages + [{"role": "assistant", "content": new_text}]


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _render_chat(tokenizer, messages, continue_final: bool) -> str:
    """The chat prompt: with a generation prompt, or (``continue_final``) ending inside the last
    message, so that the model continues it. The cut is transformers' (``chat_template_utils.render_jinja_template``):
    tag the final content, render, and cut at the tag; templates that strip content lose the tag's
    space, so the text before it is then right-stripped too."""
    messages = [dict(m) for m in messages]
    if not continue_final:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    final = messages[-1].get("content")
    if not isinstance(final, str):
        raise InputError("continue_final_message needs the last message to have string content")
    messages[-1]["content"] = final + _CONTINUE_TAG
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    tag = _CONTINUE_TAG.strip()
    if tag not in text:
        raise InputError("continue_final_message: the chat template dropped the final message, "
                         "so it cannot be continued")
    loc = text.rindex(tag)
    return text[:loc] if text[loc:loc + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:loc].rstrip()


def pipeline(task: str, model=None, tokenizer=None, model_kwargs: dict | None = None,
             **generate_defaults: Any) -> TextGenerationPipeline:
    """Build a pipeline (transformers ``pipeline``); only ``"text-generation"`` is supported.

    ``model``: a checkpoint folder (loaded with ``AutoModelForCausalLM.from_pretrained(path,
    **model_kwargs)``) or a loaded model. ``tokenizer``: a ``CohereTokenizer``, a path, or None to load
    it from the model's checkpoint folder. Extra keyword arguments become generate() defaults.
    """
    if task not in SUPPORTED_TASKS:
        raise InputError(f"unknown pipeline task {task!r}; pycohere supports {', '.join(SUPPORTED_TASKS)}")
    if model is None:
        raise InputError("pipeline needs model=: a checkpoint folder or a loaded pycohere model")
    if isinstance(model, (str, os.PathLike)):
        found = probe(Path(model))  # one probe: the model and its tokenizer
        model = AutoModelForCausalLM.from_pretrained(found, **(model_kwargs or {}))
    else:
        if model_kwargs:
            raise InputError("model_kwargs only apply when model= is a path")
        if not callable(getattr(model, "generate", None)):
            raise InputError(f"model must be a pycohere causal LM or a checkpoint path, got {type(model).__name__}")
        found = getattr(model, "probe", None)  # a GGUF file carries its own vocabulary
    if tokenizer is None:
        if found is None:
            raise TokenizerError("no tokenizer: pass tokenizer= (a CohereTokenizer or a tokenizer folder)")
        tokenizer = CohereTokenizer.from_pretrained(found)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = CohereTokenizer.from_pretrained(tokenizer)
    return TextGenerationPipeline(model, tokenizer, **generate_defaults)
