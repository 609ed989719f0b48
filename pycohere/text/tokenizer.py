"""Command-R tokenizer: a thin, transformers-compatible layer over ``tokenizers.Tokenizer``.

Mirrors transformers' ``CohereTokenizerFast`` (4.x, ``models/cohere/tokenization_cohere_fast.py``;
``CohereTokenizer`` in 5.x): byte-level BPE with an NFC normaliser, ``Digits(individual_digits)``
then ``ByteLevel`` pre-tokenisation, a ``TemplateProcessing`` post-processor that adds
``<BOS_TOKEN>`` (and optionally EOS) — ``<BOS> A <BOS> B`` for pairs — and left padding.

Two sources:

* a Hugging Face folder with ``tokenizer.json`` (+ ``tokenizer_config.json``,
  ``special_tokens_map.json``, optional ``chat_template.jinja``);
* a ``.gguf`` file: the vocabulary is rebuilt from ``tokenizer.ggml.tokens/merges/token_type``
  (llama.cpp's ``tokenizer.ggml.pre = command-r`` pipeline, ``src/llama-vocab.cpp``), which
  reproduces llama.cpp's reference tokenizations (``models/ggml-vocab-command-r.gguf.inp/.out``).

:class:`IncrementalDetokenizer` turns a stream of ids into text deltas for streaming output.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from ..checkpoints.gguf import gguf_file
from .chat import apply_chat_template, check_citation_mode
from ..checkpoints.probe import Probe
from ..io.gguf import GGUFReader
from ..errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    TokenIdError,
    TokenizerError,
    UnsupportedFormatError,
)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ADDITIONAL_CHAT_TEMPLATES_DIR = "additional_chat_templates"

# The named special tokens transformers knows (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# CohereTokenizerFast.__init__ defaults (transformers 4.x).
DEFAULT_SPECIAL_TOKENS = {"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>", "unk_token": "<UNK>"}

# llama.cpp token types (llama.h enum llama_token_type / gguf-py TokenType).
GGUF_TOKEN_NORMAL, GGUF_TOKEN_CONTROL, GGUF_TOKEN_USER_DEFINED = 1, 3, 4


class BatchEncoding(dict):
    """``dict`` of model inputs with attribute access (``enc.input_ids``), like transformers'."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def cohere_backend(vocab: dict[str, int], merges: list[tuple[str, str]], add_prefix_space: bool = False) -> Tokenizer:
    """The Command-R ``tokenizers`` pipeline (transformers CohereTokenizer.__init__; llama.cpp
    ``LLAMA_VOCAB_PRE_TYPE_COMMAND_R``): NFC, single digits, byte-level BPE, byte-level decoder."""
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, continuing_subword_prefix="",
                            end_of_word_suffix=""))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, trim_offsets=True, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel(add_prefix_space=add_prefix_space, trim_offsets=True)
    return backend


class CohereTokenizer:
    """Byte-level BPE tokenizer for Command-R / Command R+ / R7B (transformers' CohereTokenizerFast API).

    >>> tok = CohereTokenizer.from_pretrained("path/to/c4ai-command-r-v01")     # doctest: +SKIP
    >>> tok.encode("Hello this is a test")                                      # doctest: +SKIP
    [5, 28339, 2075, 1801, 1671, 3282]
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_token: str | None = DEFAULT_SPECIAL_TOKENS["bos_token"],
        eos_token: str | None = DEFAULT_SPECIAL_TOKENS["eos_token"],
        unk_token: str | None = DEFAULT_SPECIAL_TOKENS["unk_token"],
        pad_token: str | None = None,
        cls_token: str | None = None,
        sep_token: str | None = None,
        mask_token: str | None = None,
        additional_special_tokens: Sequence[str] = (),
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        use_default_system_prompt: bool = False,
        clean_up_tokenization_spaces: bool = False,
        padding_side: str = "left",
        truncation_side: str = "right",
        model_max_length: int = int(1e30),
        chat_template: str | dict[str, str] | None = None,
        name_or_path: str = "",
    ):
        if not isinstance(tokenizer, Tokenizer):
            raise TokenizerError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        self._tokenizer = tokenizer
        self.name_or_path = name_or_path
        self._special: dict[str, str | None] = {}
        for name, value in zip(SPECIAL_TOKEN_NAMES, (bos_token, eos_token, unk_token, sep_token, pad_token,
                                                     cls_token, mask_token)):
            self._special[name] = _token_content(value)
        self.additional_special_tokens = [_token_content(t) for t in additional_special_tokens]
        self.use_default_system_prompt = use_default_system_prompt
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.padding_side = _check_side(padding_side, "padding_side")
        self.truncation_side = _check_side(truncation_side, "truncation_side")
        self.model_max_length = model_max_length
        self.chat_template = chat_template
        self._register_special_tokens()
        self._add_bos_token = bool(add_bos_token)
        self._add_eos_token = bool(add_eos_token)
        self.update_post_processor()

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | Probe, **kwargs) -> "CohereTokenizer":
        """Load from a folder with ``tokenizer.json`` (or that file itself), from a ``.gguf`` file (any name;
        or a folder of GGUF split parts; or ``gguf_file=`` inside the folder, as transformers), or from a
        ``pycohere.checkpoints.Probe`` (whose parsed GGUF vocabulary is reused, not read again). Keyword
        arguments override the files' settings (``add_bos_token=False``...)."""
        if isinstance(path, Probe):
            if path.hf_tokenizer_file is None and path.gguf is not None:
                return cls._from_gguf_metadata(path.gguf.metadata, str(path.path), kwargs)
            path = path.path
        gguf_name = kwargs.pop("gguf_file", None)
        path = Path(path) / gguf_name if gguf_name else Path(path)
        if not path.exists():
            raise CheckpointNotFoundError(
                f"tokenizer path does not exist: {path} (pass a folder with tokenizer.json or a .gguf file)"
            )
        if not (path.is_dir() and (path / TOKENIZER_FILE).is_file()):
            g = gguf_file(path)  # a GGUF file (any name) or a folder of GGUF parts
            if g is not None:
                return cls.from_gguf(g, **kwargs)
        folder = path.parent if path.is_file() else path
        tokenizer_file = path if path.is_file() else path / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            ggufs = sorted(folder.glob("*.gguf"))
            hint = f"; it has {ggufs[0].name}: pass that file instead" if ggufs else ""
            raise CheckpointNotFoundError(f"no {TOKENIZER_FILE} in {folder}{hint}")
        try:
            backend = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON / schema
            raise TokenizerError(f"{tokenizer_file} is not a valid tokenizers file: {exc}") from None
        settings = _read_hf_settings(folder)
        settings.update(kwargs)
        settings.setdefault("name_or_path", str(path))
        return cls(backend, **settings)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, **kwargs) -> "CohereTokenizer":
        """Build the tokenizer from a GGUF file's vocabulary (``tokenizer.ggml.*`` metadata)."""
        try:
            with GGUFReader(path) as reader:
                meta = reader.metadata
        except (CorruptCheckpointError, UnsupportedFormatError) as exc:
            raise TokenizerError(f"cannot read the vocabulary from {path}: {exc}") from exc
        return cls._from_gguf_metadata(meta, str(path), kwargs)

    @classmethod
    def _from_gguf_metadata(cls, meta: dict, source: str, kwargs: dict) -> "CohereTokenizer":
        backend, settings = _backend_from_gguf_metadata(meta, source)
        settings.update(kwargs)
        settings.setdefault("name_or_path", source)
        return cls(backend, **settings)

    def _register_special_tokens(self) -> None:
        # As transformers' _post_init: every named/additional special token becomes a special
        # added token of the backend (new id if it is not in the vocabulary yet), so that
        # encode() matches it in text and decode(skip_special_tokens=True) drops it.
        tokens = [t for t in (*self._special.values(), *self.additional_special_tokens) if t is not None]
        self._tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])

    def update_post_processor(self) -> None:
        """Rebuild the TemplateProcessing post-processor from bos/eos and add_bos/eos_token
        (CohereTokenizerFast.update_post_processor)."""
        bos, eos = self.bos_token, self.eos_token
        if bos is None and self.add_bos_token:
            raise TokenizerError("add_bos_token = True but bos_token = None; set a bos_token or add_bos_token=False")
        if eos is None and self.add_eos_token:
            raise TokenizerError("add_eos_token = True but eos_token = None; set an eos_token or add_eos_token=False")
        single = f"{(bos + ':0 ') if self.add_bos_token else ''}$A:0{(' ' + eos + ':0') if self.add_eos_token else ''}"
        pair = f"{single}{(' ' + bos + ':1') if self.add_bos_token else ''} $B:1{(' ' + eos + ':1') if self.add_eos_token else ''}"
        special = []
        if self.add_bos_token:
            special.append((bos, self.bos_token_id))
        if self.add_eos_token:
            special.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = bool(value)
        self.update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = bool(value)
        self.update_post_processor()

    # -- special tokens ----------------------------------------------------------------------------
    def _special_id(self, name: str) -> int | None:
        token = self._special[name]
        return None if token is None else self._tokenizer.token_to_id(token)

    def _set_special(self, name: str, value: str | None) -> None:
        self._special[name] = _token_content(value)
        self._register_special_tokens()
        if name in ("bos_token", "eos_token"):
            self.update_post_processor()

    bos_token = property(lambda self: self._special["bos_token"], lambda self, v: self._set_special("bos_token", v))
    eos_token = property(lambda self: self._special["eos_token"], lambda self, v: self._set_special("eos_token", v))
    unk_token = property(lambda self: self._special["unk_token"], lambda self, v: self._set_special("unk_token", v))
    sep_token = property(lambda self: self._special["sep_token"], lambda self, v: self._set_special("sep_token", v))
    pad_token = property(lambda self: self._special["pad_token"], lambda self, v: self._set_special("pad_token", v))
    cls_token = property(lambda self: self._special["cls_token"], lambda self, v: self._set_special("cls_token", v))
    mask_token = property(lambda self: self._special["mask_token"], lambda self, v: self._set_special("mask_token", v))
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))
    sep_token_id = property(lambda self: self._special_id("sep_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))
    cls_token_id = property(lambda self: self._special_id("cls_token"))
    mask_token_id = property(lambda self: self._special_id("mask_token"))

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self._special.items() if v is not None}
        if self.additional_special_tokens:
            out["additional_special_tokens"] = list(self.additional_special_tokens)
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        seen: dict[str, None] = {}
        for token in (*self._special.values(), *self.additional_special_tokens):
            if token is not None:
                seen.setdefault(token, None)
        return list(seen)

    @property
    def all_special_ids(self) -> list[int]:
        return [self._tokenizer.token_to_id(t) for t in self.all_special_tokens]

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(self._tokenizer.get_added_tokens_decoder())

    # -- vocabulary ----------------------------------------------------------------------------------
    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without tokens added on top of it."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | None | list[int | None]:
        if isinstance(tokens, str):
            token_id = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False):
        if isinstance(ids, (int, np.integer)):
            return self._tokenizer.id_to_token(self._check_ids([int(ids)])[0])
        ids = self._check_ids(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(i) for i in ids if i not in skip]

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)] if not isinstance(ids, list) else [int(i) for i in ids]
        n = len(self)
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise TokenIdError(f"token id(s) {bad[:5]} outside [0, {n}) for this tokenizer")
        return ids

    # -- encoding ------------------------------------------------------------------------------------
    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        return self._encode_one(text, pair, add_special_tokens).tokens

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        """Ids of ``text`` (BOS first when ``add_bos_token``, as transformers)."""
        return self._encode_one(text, text_pair, add_special_tokens).ids

    def _encode_one(self, text, pair, add_special_tokens):
        _check_text(text)
        if pair is not None:
            _check_text(pair)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        return self._tokenizer.encode(text, pair, add_special_tokens=add_special_tokens)

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
        return_token_type_ids: bool = False,
        return_special_tokens_mask: bool = False,
        return_length: bool = False,
    ) -> BatchEncoding:
        """Encode one text or a batch (transformers' ``__call__``): ``input_ids`` and
        ``attention_mask``; ``padding=True``/``"longest"``/``"max_length"`` pads on
        ``padding_side`` (left by default, from Cohere's tokenizer_config)."""
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        for t in texts:
            _check_text(t)
        pairs = None
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if isinstance(text_pair, str) == batched or len(pairs) != len(texts):
                raise TokenizerError("text_pair must match text: a string for a string, a list of equal length for a list")
            for t in pairs:
                _check_text(t)
        if return_tensors not in (None, "np"):
            raise TokenizerError(f"return_tensors={return_tensors!r} is not supported: use 'np' or None")
        self._configure_truncation(truncation, max_length)
        self._configure_padding(padding, max_length, pad_to_multiple_of, padding_side or self.padding_side)
        try:
            inputs = list(zip(texts, pairs)) if pairs is not None else texts
            encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            self._tokenizer.no_padding()
            self._tokenizer.no_truncation()
        columns = {"input_ids": [e.ids for e in encodings]}
        if return_attention_mask:
            columns["attention_mask"] = [e.attention_mask for e in encodings]
        if return_token_type_ids:
            columns["token_type_ids"] = [e.type_ids for e in encodings]
        if return_special_tokens_mask:
            columns["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_length:
            columns["length"] = [len(e.ids) for e in encodings]
        return self._finish_batch(columns, batched, return_tensors)

    def _configure_truncation(self, truncation, max_length) -> None:
        if truncation in (False, None, "do_not_truncate"):
            self._tokenizer.no_truncation()
            return
        strategy = "longest_first" if truncation is True else truncation
        if strategy not in ("longest_first", "only_first", "only_second"):
            raise TokenizerError(f"unknown truncation strategy {truncation!r}")
        limit = max_length if max_length is not None else self.model_max_length
        if limit >= 2**32:
            raise TokenizerError("truncation needs max_length (this tokenizer has no model_max_length)")
        self._tokenizer.enable_truncation(limit, strategy=strategy, direction=self.truncation_side)

    def _configure_padding(self, padding, max_length, pad_to_multiple_of, side) -> None:
        if padding in (False, None, "do_not_pad"):
            self._tokenizer.no_padding()
            return
        strategy = "longest" if padding is True else padding
        if strategy not in ("longest", "max_length"):
            raise TokenizerError(f"unknown padding strategy {padding!r}: use True, 'longest' or 'max_length'")
        if self.pad_token is None or self.pad_token_id is None:
            raise TokenizerError("padding needs a pad_token; set tokenizer.pad_token (Cohere uses '<PAD>')")
        length = None
        if strategy == "max_length":
            if max_length is None:
                raise TokenizerError("padding='max_length' needs max_length")
            length = max_length
        self._tokenizer.enable_padding(direction=_check_side(side, "padding_side"), pad_id=self.pad_token_id,
                                       pad_token=self.pad_token, length=length, pad_to_multiple_of=pad_to_multiple_of)

    @staticmethod
    def _finish_batch(columns: dict[str, list[list[int]]], batched: bool, return_tensors) -> BatchEncoding:
        if return_tensors == "np":
            lengths = {len(row) for row in columns["input_ids"]}
            if len(lengths) > 1:
                raise TokenizerError(
                    "sequences have different lengths; pass padding=True to get a rectangular array"
                )
            out = {k: np.asarray(v, dtype=np.int64) for k, v in columns.items()}
            return BatchEncoding(out)
        if not batched:
            return BatchEncoding({k: v[0] for k, v in columns.items()})
        return BatchEncoding(columns)

    # -- special-token helpers (CohereTokenizerFast / LlamaTokenizer semantics) ------------------
    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        output = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            output = output + bos + list(token_ids_1) + eos
        return output

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 where build_inputs_with_special_tokens puts BOS/EOS, 0 over the sequences; with
        ``already_has_special_tokens``, 1 for every id in :attr:`all_special_ids`."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise TokenizerError("token_ids_1 must be None when the ids already contain special tokens")
            special = set(self.all_special_ids)
            return [1 if int(i) in special else 0 for i in token_ids_0]
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        """0 over ``<BOS> A <EOS>``, 1 over the pair's ``<BOS> B <EOS>`` (the post-processor's type ids)."""
        n_special = int(self.add_bos_token) + int(self.add_eos_token)
        output = [0] * (len(token_ids_0) + n_special)
        if token_ids_1 is not None:
            output += [1] * (len(token_ids_1) + n_special)
        return output

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tokenizer.num_special_tokens_to_add(pair)

    # -- decoding ------------------------------------------------------------------------------------
    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        if isinstance(token_ids, (int, np.integer)):
            token_ids = [int(token_ids)]
        ids = self._check_ids(token_ids)
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        return [self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in sequences]

    def decode_stream(self, skip_special_tokens: bool = False, prompt_ids: Sequence[int] | None = None) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self, skip_special_tokens=skip_special_tokens, prompt_ids=prompt_ids)

    # -- chat templates (implemented in pycohere.text.chat) ---------------------------------------------
    def apply_chat_template(self, conversation, tools=None, documents=None, chat_template=None,
                            add_generation_prompt: bool = False, tokenize: bool = True, **kwargs):
        """Render ``conversation`` with this tokenizer's (or the built-in) Command-R template;
        with ``tokenize=True`` (transformers' default) return ids, encoded without adding BOS again."""
        return apply_chat_template(self, conversation, chat_template=chat_template, add_generation_prompt=add_generation_prompt,
                                   tokenize=tokenize, tools=tools, documents=documents, **kwargs)

    def apply_tool_use_template(self, conversation, tools, **kwargs):
        """Command-R tool-use prompt: ``apply_chat_template(..., chat_template="tool_use", tools=tools)``."""
        return self.apply_chat_template(conversation, chat_template="tool_use", tools=tools, **kwargs)

    def apply_grounded_generation_template(self, conversation, documents, citation_mode: str = "accurate", **kwargs):
        """Command-R RAG prompt: ``apply_chat_template(..., chat_template="rag", documents=documents)``."""
        check_citation_mode(citation_mode)
        return self.apply_chat_template(conversation, chat_template="rag", documents=documents,
                                        citation_mode=citation_mode, **kwargs)

    # -- saving --------------------------------------------------------------------------------------
    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write the BPE model's ``vocab.json`` and ``merges.txt`` (added tokens are in tokenizer.json)."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise CheckpointNotFoundError(f"save_vocabulary needs an existing directory, got {directory}")
        return tuple(self._tokenizer.model.save(str(directory), filename_prefix))

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``
        (loadable by :meth:`from_pretrained` and by transformers' AutoTokenizer)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = (directory / TOKENIZER_FILE, directory / TOKENIZER_CONFIG_FILE, directory / SPECIAL_TOKENS_MAP_FILE)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._tokenizer.save(str(paths[0]))
        paths[1].write_text(json.dumps(self._config_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths[2].write_text(json.dumps(self.special_tokens_map, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return tuple(str(p) for p in paths)

    def _config_dict(self) -> dict[str, Any]:
        added = {
            str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(self.added_tokens_decoder.items())
        }
        config: dict[str, Any] = {
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "added_tokens_decoder": added,
            **{k: v for k, v in self._special.items()},
            "additional_special_tokens": list(self.additional_special_tokens),
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "tokenizer_class": "CohereTokenizer",
            "use_default_system_prompt": self.use_default_system_prompt,
        }
        if isinstance(self.chat_template, dict):
            config["chat_template"] = [{"name": k, "template": v} for k, v in self.chat_template.items()]
        elif self.chat_template is not None:
            config["chat_template"] = self.chat_template
        return config

    def __repr__(self) -> str:
        return (f"CohereTokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, len={len(self)}, "
                f"bos={self.bos_token!r}, eos={self.eos_token!r}, pad={self.pad_token!r}, "
                f"add_bos_token={self.add_bos_token}, padding_side={self.padding_side!r})")


# --- streaming ----------------------------------------------------------------------------------
class IncrementalDetokenizer:
    """Turn ids fed one at a time into text deltas (like ``tokenizers.decoders.DecodeStream``).

    Holds text back while the decoded bytes end inside a UTF-8 character (the byte-level
    decoder shows that as a trailing U+FFFD), so a delta never contains half a character.
    Offsets only advance at character boundaries, so ``"".join(deltas) + flush()`` equals
    ``tokenizer.decode(all_ids)``. The prefix/read-offset scheme is the one used by
    text-generation-inference and vLLM's ``detokenize_incrementally``.
    """

    def __init__(self, tokenizer: CohereTokenizer, skip_special_tokens: bool = False,
                 prompt_ids: Sequence[int] | None = None):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(prompt_ids or [])
        # With a prompt, start at its end; a few tokens of look-back give the decoder context.
        self.read_offset = len(self.ids)
        self.prefix_offset = max(self.read_offset - 5, 0)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False)

    def step(self, token_id: int) -> str:
        """Add one id; return the newly completed text ('' while a character is incomplete)."""
        self.ids.append(int(token_id))
        return self._advance(final=False)

    def put(self, token_ids: Iterable[int]) -> str:
        return "".join(self.step(i) for i in token_ids)

    def flush(self) -> str:
        """Emit whatever is held back (incomplete bytes become U+FFFD, as decode() shows them)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return new_text[len(prefix_text):]
        return ""


DecodeStream = IncrementalDetokenizer  # the tokenizers / transformers name for the same idea


# --- helpers --------------------------------------------------------------------------------------
def clean_up_tokenization(text: str) -> str:
    """transformers' PreTrainedTokenizerBase.clean_up_tokenization (only used when asked for)."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(old, new)
    return text


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise TokenizerError(f"expected text as str, got {type(text).__name__}")


def _check_side(side: str, what: str) -> str:
    if side not in ("left", "right"):
        raise TokenizerError(f"{what} must be 'left' or 'right', got {side!r}")
    return side


def _token_content(value) -> str | None:
    """A special token as given in configs: a string, an AddedToken, or its dict form."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, AddedToken):
        return value.content
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"cannot read a special token from {value!r}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must contain a JSON object, got {type(data).__name__}")
    return data


def _read_hf_settings(folder: Path) -> dict[str, Any]:
    """CohereTokenizer init arguments from tokenizer_config.json + special_tokens_map.json
    (the latter wins, as in transformers' ``_from_pretrained``) + chat template files."""
    config = _read_json(folder / TOKENIZER_CONFIG_FILE) if (folder / TOKENIZER_CONFIG_FILE).is_file() else {}
    if (folder / SPECIAL_TOKENS_MAP_FILE).is_file():
        config.update(_read_json(folder / SPECIAL_TOKENS_MAP_FILE))
    settings: dict[str, Any] = {}
    for name in SPECIAL_TOKEN_NAMES:
        if name in config:
            settings[name] = _token_content(config[name])
    extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
    if isinstance(extra, dict):  # transformers 5 may save a name -> token mapping
        extra = list(extra.values())
    settings["additional_special_tokens"] = [_token_content(t) for t in extra]
    for key in ("add_bos_token", "add_eos_token", "use_default_system_prompt", "clean_up_tokenization_spaces",
                "padding_side", "truncation_side", "model_max_length"):
        if config.get(key) is not None:
            settings[key] = config[key]
    settings["chat_template"] = _read_chat_templates(folder, config.get("chat_template"))
    return settings


def _read_chat_templates(folder: Path, from_config) -> str | dict[str, str] | None:
    """tokenizer_config's ``chat_template`` (a string, or a list of {name, template} as Cohere
    ships it), then ``chat_template.jinja`` / ``additional_chat_templates/*.jinja`` (transformers
    >= 4.43 save format) on top."""
    templates: dict[str, str] = {}
    if isinstance(from_config, str):
        templates["default"] = from_config
    elif isinstance(from_config, list):
        for entry in from_config:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str)):
                raise TokenizerError(f"chat_template entries must be {{'name': str, 'template': str}}, got {entry!r}")
            templates[entry["name"]] = entry["template"]
    elif from_config is not None:
        raise TokenizerError(f"chat_template must be a string or a list of named templates, got {type(from_config).__name__}")
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    extra_dir = folder / ADDITIONAL_CHAT_TEMPLATES_DIR
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.stem] = file.read_text(encoding="utf-8")
    if not templates:
        return None
    if list(templates) == ["default"]:
        return templates["default"]
    return templates


def _backend_from_gguf_metadata(meta: dict[str, Any], source: str) -> tuple[Tokenizer, dict[str, Any]]:
    model = meta.get("tokenizer.ggml.model")
    pre = meta.get("tokenizer.ggml.pre")
    if model != "gpt2" or pre != "command-r":
        raise TokenizerError(
            f"{source}: vocabulary is tokenizer.ggml.model={model!r}, pre={pre!r}; CohereTokenizer "
            "rebuilds only the byte-level BPE with pre='command-r' (Command-R / R+ / R7B GGUFs)"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges")
    types = meta.get("tokenizer.ggml.token_type")
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise TokenizerError(f"{source}: tokenizer.ggml.tokens / tokenizer.ggml.merges missing or not string arrays")
    types = np.full(len(tokens), GGUF_TOKEN_NORMAL) if types is None else np.asarray(types)
    if len(types) != len(tokens):
        raise TokenizerError(f"{source}: {len(tokens)} tokens but {len(types)} token types")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise TokenizerError(f"{source}: tokenizer.ggml.tokens has duplicate entries")
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep or left not in vocab or right not in vocab or left + right not in vocab:
            raise TokenizerError(f"{source}: malformed merge {merge!r} (expected two vocabulary tokens split by a space)")
        pairs.append((left, right))
    backend = cohere_backend(vocab, pairs)
    # CONTROL tokens are HF "special" added tokens; USER_DEFINED ones are added but not special
    # (llama.cpp convert_hf_to_gguf.py get_vocab_base maps them that way). Both are matched in
    # raw text before BPE, as llama.cpp's tokenizer_st_partition does.
    backend.add_tokens([
        AddedToken(tokens[i], special=bool(types[i] == GGUF_TOKEN_CONTROL), normalized=False)
        for i in np.nonzero((types == GGUF_TOKEN_CONTROL) | (types == GGUF_TOKEN_USER_DEFINED))[0]
    ])
    settings: dict[str, Any] = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id"),
                      ("unk_token", "unknown_token_id"), ("sep_token", "seperator_token_id"),
                      ("cls_token", "cls_token_id"), ("mask_token", "mask_token_id")):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if token_id is None:
            settings[name] = None if name != "unk_token" else (DEFAULT_SPECIAL_TOKENS["unk_token"]
                                                                if DEFAULT_SPECIAL_TOKENS["unk_token"] in vocab else None)
            continue
        if not 0 <= int(token_id) < len(tokens):
            raise TokenizerError(f"{source}: tokenizer.ggml.{key} = {token_id} is outside the vocabulary")
        settings[name] = tokens[int(token_id)]
    for flag in ("add_bos_token", "add_eos_token"):
        if meta.get(f"tokenizer.ggml.{flag}") is not None:
            settings[flag] = bool(meta[f"tokenizer.ggml.{flag}"])
    settings["chat_template"] = _gguf_chat_templates(meta)
    return backend, settings


def _gguf_chat_templates(meta: dict[str, Any]) -> str | dict[str, str] | None:
    """``tokenizer.chat_template`` plus named ``tokenizer.chat_template.<name>`` (listed in
    ``tokenizer.chat_templates``), the way llama.cpp's converter stores HF's template list."""
    templates = {}
    if isinstance(meta.get("tokenizer.chat_template"), str):
        templates["default"] = meta["tokenizer.chat_template"]
    for name in meta.get("tokenizer.chat_templates") or []:
        value = meta.get(f"tokenizer.chat_template.{name}")
        if isinstance(value, str):
            templates[name] = value
    if not templates:
        return None
    return templates["default"] if list(templates) == ["default"] else templates


__all__ = ["CohereTokenizer", "IncrementalDetokenizer", "DecodeStream", "BatchEncoding", "cohere_backend",
           "clean_up_tokenization"]
