#!/usr/bin/env python
"""Train pycohere's bundled demo model (``pycohere/demo/``) from scratch on CPU.

A Cohere-architecture model (transformers ``CohereForCausalLM``: parallel attention+MLP block,
LayerNorm without bias, interleaved RoPE, qk-norm, GQA, tied embeddings) with a 4096-token
byte-level BPE laid out like Command-R's tokenizer, trained on the King James Bible plus a small
fraction of Command-R-formatted chat samples (see ``tools/demo_corpus.py``).

Dev-only tool: needs torch, transformers, tokenizers, jinja2 and the Debian packages
``bible-kjv bible-kjv-text fortunes-min fortunes-es``. Reproduce the shipped artifacts with the
exact command recorded in ``pycohere/demo/PROVENANCE.md`` (it uses ``--steps``, so the run does
not depend on machine speed):

    nice -n 10 python tools/train_demo_model.py --steps N --seed 0 --out pycohere/demo

``--tool-every N`` (default 0: off, which is how the shipped model was made) adds, every N steps, a
batch of Command-R tool-use / grounded-answer sequences (``demo_corpus.ToolSampler``, rendered by
``pycohere.serve.prompts.build_prompt``), with the loss on their answers only; ``--init DIR`` starts
from an earlier demo model's weights instead of random ones (fine-tuning). Tried once: ``--init
pycohere/demo --steps 350 --lr 1e-3 --warmup 20 --batch-size 4 --tool-every 1 --tool-batch 3`` (50 min
on the shared machine) kept the held-out perplexity at 29.1 and learned the answer layouts, but not
yet to copy a tool's name from the prompt (0 of 20 held-out tool requests valid).

``--minutes M`` instead times the first steps and picks the step count that fits in M minutes;
the learning-rate schedule only depends on the final step count, so such a run equals the
``--steps`` run with the step count it reports.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_corpus  # noqa: E402

# ----------------------------------------------------------------------------- tokenizer layout
# Command-R's special tokens keep their names; ids 0..7 match the real tokenizer (<PAD> 0 ...
# <BOS_TOKEN> 5, <EOS_TOKEN> 6, <EOP_TOKEN> 7). The chat/tool tokens (ids 255000+ in the real
# 256k vocabulary) follow directly here so the small vocabulary stays dense. The R7B markers
# (<|START_RESPONSE|> ...) come from llama.cpp models/templates/
# CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja; they are reserved, never trained.
SPECIAL_TOKENS = [
    "<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>", "<EOP_TOKEN>",
    "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_THINKING|>",
    "<|END_THINKING|>", "<|START_ACTION|>", "<|END_ACTION|>", "<|START_TOOL_RESULT|>",
    "<|END_TOOL_RESULT|>",
]
PAD_ID, BOS_ID, EOS_DOC_ID = 0, 5, 6
EOT_ID = SPECIAL_TOKENS.index("<|END_OF_TURN_TOKEN|>")  # 9: Command-R's chat eos

VOCAB_SIZE = 4096


def model_config(max_positions: int) -> dict:
    """config.json content, with the 4.x keys real hub checkpoints use (rope_theta, no
    rope_parameters) — the same dict builds the training model, so both always agree."""
    import transformers

    return {
        "architectures": ["CohereForCausalLM"],
        "model_type": "cohere",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "logit_scale": 1.0,
        "use_qk_norm": True,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "use_cache": True,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOT_ID,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
        "transformers_version": transformers.__version__,
    }


def build_tokenizer(texts: list[str]):
    """Byte-level BPE like Command-R's tokenizer.json: NFC, Digits(individual) then ByteLevel
    pre-tokenizer, ByteLevel decoder, a post-processor that adds <BOS_TOKEN> (not EOS)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    # decoders.ByteLevel takes no options (it serialises its defaults); decoding only maps bytes.
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Same template transformers' CohereTokenizerFast.update_post_processor builds.
    tok.post_processor = processors.TemplateProcessing(
        single="<BOS_TOKEN>:0 $A:0", pair="<BOS_TOKEN>:0 $A:0 <BOS_TOKEN>:1 $B:1",
        special_tokens=[("<BOS_TOKEN>", BOS_ID)],
    )
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    return tok


def tokenizer_files(max_positions: int) -> dict[str, dict]:
    """tokenizer_config.json / special_tokens_map.json / generation_config.json contents."""
    def spec(t):
        return {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False}

    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {**spec(t), "special": True}
                                 for i, t in enumerate(SPECIAL_TOKENS)},
        "bos_token": "<BOS_TOKEN>",
        "eos_token": "<|END_OF_TURN_TOKEN|>",
        "pad_token": "<PAD>",
        "unk_token": "<UNK>",
        "cls_token": "<CLS>",
        "sep_token": "<SEP>",
        "mask_token": "<MASK_TOKEN>",
        "chat_template": demo_corpus.COMMAND_R_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": max_positions,
        "padding_side": "left",
        "spaces_between_special_tokens": False,
        "tokenizer_class": "CohereTokenizer",
        "use_default_system_prompt": False,
    }
    special_tokens_map = {"bos_token": spec("<BOS_TOKEN>"), "eos_token": spec("<|END_OF_TURN_TOKEN|>"),
                          "pad_token": spec("<PAD>"), "unk_token": spec("<UNK>")}
    generation_config = {
        "bos_token_id": BOS_ID,
        # <|END_OF_TURN_TOKEN|> ends a chat turn; <EOS_TOKEN> ends a plain-text document.
        "eos_token_id": [EOT_ID, EOS_DOC_ID],
        "pad_token_id": PAD_ID,
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "max_new_tokens": 128,
    }
    return {"tokenizer_config.json": tokenizer_config, "special_tokens_map.json": special_tokens_map,
            "generation_config.json": generation_config}


# ----------------------------------------------------------------------------- data
class Corpus:
    """Token ids for training (KJV chapters + fresh chat samples every epoch) and evaluation."""

    def __init__(self, tok, train, heldout, sampler, chat_fraction: float, seq_len: int, seed: int,
                 ptok=None, tool_sampler=None, tool_every: int = 0, tool_max_len: int = 1536,
                 copy_fraction: float = 0.0):
        self.tok, self.sampler, self.seq_len, self.seed = tok, sampler, seq_len, seed
        self.copy_fraction = copy_fraction
        self.ptok, self.tool_sampler = ptok, tool_sampler
        self.tool_every, self.tool_max_len = tool_every, tool_max_len
        encs = tok.encode_batch([c.text for c in train], add_special_tokens=False)
        # One document per chapter: <BOS_TOKEN> text <EOS_TOKEN>, as in pretraining.
        self.kjv_docs = [[BOS_ID] + e.ids + [EOS_DOC_ID] for e in encs]
        self.kjv_tokens = sum(map(len, self.kjv_docs))
        self.chat_target = int(self.kjv_tokens * chat_fraction / (1.0 - chat_fraction))
        self.heldout_ids = [e.ids for e in tok.encode_batch([c.text for c in heldout],
                                                            add_special_tokens=False)]
        self.chat_tokens_seen = 0

    def chat_docs(self, rng: np.random.Generator) -> list[list[int]]:
        docs, n = [], 0
        while n < self.chat_target:
            ids = self.tok.encode(self.sampler.sample(rng), add_special_tokens=False).ids
            docs.append(ids)
            n += len(ids)
        return docs

    def epoch_windows(self, epoch: int) -> np.ndarray:
        """(n, seq_len + 1) windows of one shuffled pass over all documents."""
        rng = np.random.default_rng([self.seed, epoch])
        docs = self.kjv_docs + self.chat_docs(rng)
        order = rng.permutation(len(docs))
        stream = np.fromiter((t for i in order for t in docs[i]), dtype=np.int64)
        start = int(rng.integers(self.seq_len))  # window boundaries move every epoch
        n = (len(stream) - start - 1) // self.seq_len
        idx = start + np.arange(n)[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        windows = stream[idx][rng.permutation(n)]
        if self.copy_fraction:
            self.repeat_spans(windows, np.random.default_rng([self.seed, epoch, 17]))
        return windows

    def repeat_spans(self, windows: np.ndarray, rng: np.random.Generator):
        """In a `copy_fraction` of the windows, overwrite a later stretch with an earlier span of
        8-48 tokens: the second copy is predictable only by looking back at the first."""
        width = windows.shape[1]
        for row in np.flatnonzero(rng.random(len(windows)) < self.copy_fraction):
            span = int(rng.integers(8, 49))
            a = int(rng.integers(0, width - 2 * span))
            b = int(rng.integers(a + span, width - span + 1))
            windows[row, b:b + span] = windows[row, a:a + span]

    def batches(self, batch_size: int, start_step: int = 0):
        """Endless (epoch, batch) stream; `start_step` skips batches to resume a run exactly."""
        epoch, skip = 0, start_step
        while True:
            windows = self.epoch_windows(epoch)
            n = len(windows) // batch_size
            for b in range(min(skip, n), n):
                yield epoch, windows[b * batch_size:(b + 1) * batch_size]
            skip = max(0, skip - n)
            epoch += 1

    def tool_batch(self, step: int, size: int) -> list[tuple[list[int], int]]:
        """`size` tool-use or grounded-answer sequences (alternating kinds by call, so a batch shares
        the template's long fixed preamble): (prompt ids + answer ids + <|END_OF_TURN_TOKEN|>, prompt
        length). Drawn from the step number alone, so a resumed run gets the same ones."""
        rng = np.random.default_rng([self.seed, 7, step])
        kind = (step // max(1, self.tool_every)) % 2
        out = []
        for _ in range(size):
            case = self.tool_sampler.tool_case(rng) if kind == 0 else self.tool_sampler.grounded_case(rng)
            prompt, answer = render_tool_case(self.ptok, case)
            ids = prompt + answer
            out.append((ids[:self.tool_max_len], len(prompt)))
        return out

    def drill_batch(self, step: int, size: int) -> list[tuple[list[int], int]]:
        """`size` tool drills (``tool_drill``) as (ids, prompt length), drawn from the step number alone."""
        rng = np.random.default_rng([self.seed, 19, step])
        out = []
        for _ in range(size):
            case = self.tool_sampler.tool_case(rng)
            text, answer = tool_drill(self.ptok, case)
            prompt = [BOS_ID] + self.ptok.encode(text, add_special_tokens=False)
            out.append((prompt + answer, len(prompt)))
        return out

    def eval_windows(self) -> list[list[int]]:
        """Held-out windows: per chapter, [BOS] + 256 text tokens at a time (no carried context);
        every text token is predicted exactly once."""
        out = []
        for ids in self.heldout_ids:
            for i in range(0, len(ids), self.seq_len):
                out.append([BOS_ID] + ids[i:i + self.seq_len])
        return out


def pycohere_tokenizer(tok, max_positions: int, directory: Path):
    """pycohere's own CohereTokenizer over the freshly trained BPE: the tool and document prompts are
    rendered with it by pycohere.serve.prompts.build_prompt, the code `pycohere serve` runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pycohere.text.tokenizer import CohereTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    for name, content in tokenizer_files(max_positions).items():
        (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return CohereTokenizer.from_pretrained(str(directory))


def render_tool_case(ptok, case) -> tuple[list[int], list[int]]:
    """(prompt ids exactly as the server builds them, answer ids + <|END_OF_TURN_TOKEN|>)."""
    from pycohere.serve.prompts import build_prompt

    messages, tools, documents, mode, answer = case
    prompt = build_prompt(ptok, messages, tools, documents, mode)
    return prompt.ids, ptok.encode(answer, add_special_tokens=False) + [EOT_ID]


def tool_drill(ptok, case) -> tuple[str, list[int]]:
    """(prompt text, answer ids) of a tool case as the server renders it, cut to its tool definitions and
    user turn: the same tokens the answer copies from, a few lines up instead of ~300 tokens (the
    templates' preamble and instructions left out). The name's first token follows ``def `` in the spec
    (``Ġsearch``) and a quote in the answer (``search``): the drills teach that pairing where it is short."""
    prompt, answer = render_tool_case(ptok, case)
    text = ptok.decode(prompt, skip_special_tokens=False)
    start = text.index("```python\n")
    defs = text[start:text.index("<|END_OF_TURN_TOKEN|>", start)]
    user = text.rindex("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>")
    user_turn = text[user:text.index("<|END_OF_TURN_TOKEN|>", user) + len("<|END_OF_TURN_TOKEN|>")]
    return defs + "\n" + user_turn + "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", answer


def tool_texts(ptok, sampler, n: int, seed: int) -> list[str]:
    """Text for the tokenizer's second pass: `n` training cases (alternately tool and grounded) as the
    server renders them, special tokens dropped, and every training tool name as the answer writes it
    (``"order_song"``) and as the spec does (`` order_song``). Rendered with the first-pass
    tokenizer; byte-level BPE round-trips any text, so the strings are the templates' exact text."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 13, i])
        case = sampler.tool_case(rng) if i % 2 == 0 else sampler.grounded_case(rng)
        prompt, answer = render_tool_case(ptok, case)
        out.append(ptok.decode(prompt + answer, skip_special_tokens=True))
    names = [f"{v}_{n}" for v, n in sampler.names]
    out += [f'"{name}" {name}' for name in names for _ in range(3)]
    return out


def answer_loss(model, seqs: list[tuple[list[int], int]]):
    """Mean cross-entropy over the answer tokens only (the prompt is the template's fixed preamble
    plus the request: nothing the model ever has to write). The batch's common prefix runs once,
    without gradients, as a KV cache the rest attends to: same forward as the full sequences, at a
    fraction of the cost (the preamble is ~600 of ~1000 tokens)."""
    import torch
    import torch.nn.functional as F

    n = min(p for _, p in seqs) - 1  # the first answer token is predicted from inside the suffix
    first = seqs[0][0]
    lcp = next((i for i in range(n) if any(ids[i] != first[i] for ids, _ in seqs)), n)
    with torch.no_grad():
        cache = model.model(input_ids=torch.tensor([first[:lcp]]), use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(seqs))
    width = max(len(ids) for ids, _ in seqs) - lcp
    x = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    rows, cols, targets = [], [], []
    for b, (ids, p) in enumerate(seqs):
        x[b, :len(ids) - lcp] = torch.tensor(ids[lcp:])
        for g in range(p - 1, len(ids) - 1):  # position g predicts ids[g + 1], an answer token
            rows.append(b), cols.append(g - lcp), targets.append(ids[g + 1])
    h = model.model(input_ids=x, past_key_values=cache, use_cache=True).last_hidden_state
    logits = model.lm_head(h[torch.tensor(rows), torch.tensor(cols)]) * model.logit_scale  # COHERE: logit_scale
    return F.cross_entropy(logits.float(), torch.tensor(targets))


def tool_rates(model, ptok, heldout_sampler, n: int = 20, seed: int = 0,
               max_new_tokens: int = 128) -> dict:
    """Greedy answers (transformers generate) to `n` held-out tool requests (tool names, verses and
    argument words never trained on) and `n` held-out document requests, read back by
    pycohere.serve.prompts.read_answer as the server does. A tool answer is valid when it calls only
    tools of the request with JSON-object arguments (exact: the expected call); a grounded answer when
    it has citations of existing documents whose spans index its text (exact: cites the right one)."""
    import torch
    from pycohere.serve.prompts import build_prompt, read_answer

    special = tuple(ptok.all_special_tokens)
    counts = {"tool_valid": 0, "tool_exact": 0, "grounded_valid": 0, "grounded_exact": 0}
    examples = {}
    model.eval()
    for i in range(n):
        rng = np.random.default_rng([seed, 11, i])
        for kind, case in (("tool", heldout_sampler.tool_case(rng)), ("grounded", heldout_sampler.grounded_case(rng))):
            messages, tools, documents, mode, expected = case
            prompt = build_prompt(ptok, messages, tools, documents, mode)
            with torch.no_grad():
                out = model.generate(torch.tensor([prompt.ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=[EOT_ID, EOS_DOC_ID], pad_token_id=PAD_ID)
            new = out[0, len(prompt.ids):].tolist()
            if new and new[-1] in (EOT_ID, EOS_DOC_ID):
                new = new[:-1]
            raw = ptok.decode(new, skip_special_tokens=False)
            answer = read_answer(raw, prompt, special)
            if kind == "tool":
                names = {t["function"]["name"] for t in tools}
                calls = [(c["name"], json.loads(c["arguments"])) for c in answer.tool_calls]
                ok = bool(calls) and all(name in names and isinstance(a, dict) for name, a in calls)
                want = json.loads(expected.split("```json", 1)[1].rsplit("```", 1)[0])
                exact = calls == [(c["tool_name"], c["parameters"]) for c in want]
            else:
                cites = answer.citations or []
                ids = {f"doc_{k}" for k in range(len(documents))}
                ok = bool(cites) and all(set(c["document_ids"]) <= ids and c["document_ids"]
                                         and answer.content[c["start"]:c["end"]] == c["text"] for c in cites)
                k = expected.split("\n", 1)[0].split(": ")[1]
                exact = ok and all(c["document_ids"] == [f"doc_{k}"] for c in cites)
            counts[f"{kind}_valid"] += ok
            counts[f"{kind}_exact"] += exact
            examples.setdefault(kind, {"user": messages[-1]["content"], "answer": raw})
    model.train()
    return {**counts, "n": n, "max_new_tokens": max_new_tokens, "examples": examples}


def heldout_perplexity(model, windows: list[list[int]], batch_size: int = 16) -> tuple[float, int]:
    """exp(mean NLL) over every predicted token of `windows`. Windows are batched, right-padded
    with <PAD>; padded positions are excluded from the loss and, being later in the sequence,
    cannot influence the real ones under the causal mask."""
    import torch
    import torch.nn.functional as F

    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for b in range(0, len(windows), batch_size):
            chunk = windows[b:b + batch_size]
            width = max(map(len, chunk))
            x = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
            for i, w in enumerate(chunk):
                x[i, :len(w)] = torch.tensor(w)
            logits = model(input_ids=x).logits[:, :-1].float()
            target = x[:, 1:].clone()
            for i, w in enumerate(chunk):
                target[i, len(w) - 1:] = -100  # ignore_index: padding
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                   ignore_index=-100, reduction="sum").item()
            count += sum(len(w) - 1 for w in chunk)
    model.train()
    return math.exp(nll / count), count


# ----------------------------------------------------------------------------- training
def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine from peak to floor*peak at `total` (warm-up is independent
    of `total`, which is what lets --minutes pick `total` after timing the first steps)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, lr: float, weight_decay: float):
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if "norm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


# Arguments that change the result: a checkpoint only resumes a run that used the same ones.
RUN_ARGS = ("seed", "batch_size", "seq_len", "lr", "warmup", "weight_decay", "clip",
            "chat_fraction", "max_positions", "threads", "tool_every", "tool_batch", "tool_weight",
            "tool_max_len", "init", "tokenizer_tool_samples", "copy_fraction", "tool_drills")


def load_init(folder: Path, tok, model, log) -> dict:
    """Copy the weights of an earlier demo model into `model` (bf16 widened to float32)."""
    from safetensors.torch import load_file

    if json.loads(tok.to_str()) != json.loads((folder / "tokenizer.json").read_text()):
        raise SystemExit(f"{folder}/tokenizer.json differs from the tokenizer rebuilt from the corpus")
    weights = folder / "model.safetensors"
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"lm_head.weight"}:
        raise SystemExit(f"{weights}: missing {missing}, unexpected {unexpected}")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    base = json.loads((folder / "provenance.json").read_text())
    digest = sha256(weights)
    if base["files"]["model.safetensors"]["sha256"] != digest:
        raise SystemExit(f"{weights} is not the file its provenance.json describes")
    command = base["command"].replace(f"--out {base['command'].split('--out ')[1].split()[0]}",
                                      f"--out {folder}")
    log(f"initialised from {weights} (sha256 {digest[:12]}..., held-out perplexity "
        f"{base['results']['heldout_ppl_bf16']:.3f})")
    return init_record(folder, base, digest, command)


def init_record(folder: Path, base: dict, digest: str, command: str) -> dict:
    """What a run started from: the folder's model (its sha256, the command that made it, its results)
    and, as ``stages``, every run of the chain that led to it, first (from scratch) to last."""
    this = {"folder": str(folder), "sha256": digest, "command": command,
            "heldout_ppl_bf16": base["results"]["heldout_ppl_bf16"],
            "steps": base["results"]["steps"], "tokens_seen": base["results"]["tokens_seen"],
            "train_seconds": base["results"]["train_seconds"]}
    prior = base.get("init")
    earlier = (prior.get("stages") or [{k: v for k, v in prior.items() if k != "stages"}]) if prior else []
    return {**this, "stages": earlier + [this]}


def save_checkpoint(path: Path, model, opt, state: dict, args):
    """Atomic checkpoint, so a killed run (the machine is shared) can continue exactly."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                "run_args": {k: getattr(args, k) for k in RUN_ARGS}}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, opt, args) -> dict:
    import torch

    ckpt = torch.load(path, weights_only=False)
    mine = {k: getattr(args, k) for k in RUN_ARGS}
    if ckpt["run_args"] != mine:
        raise SystemExit(f"{path} was written by a run with {ckpt['run_args']}, not {mine}; "
                         "delete it or pass matching arguments")
    if args.steps is not None and ckpt["state"]["total"] not in (None, args.steps):
        raise SystemExit(f"{path} belongs to a {ckpt['state']['total']}-step run, not {args.steps}")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    return ckpt["state"]


def train(args, model, corpus: Corpus, log) -> dict:
    import torch
    import torch.nn.functional as F

    opt = make_optimizer(model, args.lr, args.weight_decay)
    eval_windows = corpus.eval_windows()
    st = {"step": 0, "total": args.steps, "tokens_seen": 0, "history": [], "train_seconds": 0.0,
          "epoch": 0, "loss": float("nan"), "resumed_at": []}
    if args.checkpoint and args.checkpoint.exists():
        st = load_checkpoint(args.checkpoint, model, opt, args)
        st["resumed_at"].append(st["step"])
        log(f"resumed from {args.checkpoint} at step {st['step']}/{st['total']}")
    t0 = time.time() - st["train_seconds"]
    calib_from, calib_to = 10, min(80, args.warmup)
    batches = corpus.batches(args.batch_size, start_step=st["step"])
    while st["total"] is None or st["step"] < st["total"]:
        st["epoch"], batch = next(batches)
        lr = lr_at(st["step"], st["total"] or 10**9, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        x = torch.from_numpy(batch[:, :-1])
        y = torch.from_numpy(batch[:, 1:])
        logits = model(input_ids=x).logits
        lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss = lm_loss
        if args.tool_every and st["step"] % args.tool_every == 0:
            seqs = corpus.tool_batch(st["step"], args.tool_batch)
            tool = answer_loss(model, seqs)
            st["tool_loss"] = tool.item()
            st["tool_sequences"] = st.get("tool_sequences", 0) + len(seqs)
            st["tool_tokens"] = st.get("tool_tokens", 0) + sum(len(ids) for ids, _ in seqs)
            st["tool_answer_tokens"] = st.get("tool_answer_tokens", 0) + sum(len(i) - p for i, p in seqs)
            if args.tool_drills:
                drill = answer_loss(model, corpus.drill_batch(st["step"], args.tool_drills))
                st["drill_loss"] = drill.item()
                tool = tool + drill
            loss = loss + args.tool_weight * tool
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        st["tokens_seen"] += x.numel()
        st["step"] += 1
        st["loss"] = lm_loss.item()
        step, total = st["step"], st["total"]
        if step == calib_from:
            t_calib = time.time()
        if total is None and step == calib_to:
            per_step = (time.time() - t_calib) / (calib_to - calib_from)
            remaining = args.minutes * 60 - (time.time() - t0)
            # ~4% of the budget goes to the periodic held-out evaluations.
            st["total"] = total = max(args.warmup + 1, step + int(0.96 * remaining / per_step))
            log(f"timing: {per_step:.3f} s/step -> total steps {total}")
        st["train_seconds"] = time.time() - t0
        if step % args.log_every == 0 or step == total:
            log(f"step {step}/{total} epoch {st['epoch']} loss {st['loss']:.4f} "
                f"tool loss {st.get('tool_loss', float('nan')):.4f} "
                f"drill loss {st.get('drill_loss', float('nan')):.4f} lr {lr:.2e} "
                f"tokens {st['tokens_seen']} elapsed {st['train_seconds']:.0f}s "
                f"tok/s {st['tokens_seen'] / st['train_seconds']:.0f}")
        if step % args.eval_every == 0 or step == total:
            ppl, _ = heldout_perplexity(model, eval_windows)
            entry = {"step": step, "train_loss": round(st["loss"], 4), "heldout_ppl": round(ppl, 3)}
            if args.tool_every:
                rates = tool_rates(model, corpus.ptok, corpus.heldout_tools, n=10, seed=args.seed)
                entry.update({k: rates[k] for k in ("tool_valid", "tool_exact", "grounded_valid",
                                                    "grounded_exact")}, tool_n=10)
                entry["tool_loss"] = round(st.get("tool_loss", float("nan")), 4)
            entry["elapsed_s"] = round(time.time() - t0, 1)
            st["history"].append(entry)
            log(f"eval step {step}: held-out perplexity {ppl:.3f}; {entry}")
        if args.checkpoint and total is not None and (step % args.checkpoint_every == 0
                                                      or step == total):
            st["train_seconds"] = time.time() - t0
            save_checkpoint(args.checkpoint, model, opt, st, args)
            if args.stop_after == step:
                raise SystemExit(f"stopped after step {step} (--stop-after)")
    return {"steps": st["total"], "tokens_seen": st["tokens_seen"],
            "tool_sequences": st.get("tool_sequences", 0), "tool_tokens": st.get("tool_tokens", 0),
            "tool_answer_tokens": st.get("tool_answer_tokens", 0),
            "epochs_started": st["epoch"] + 1, "train_seconds": round(time.time() - t0, 1),
            "history": st["history"], "final_train_loss": round(st["loss"], 4),
            "resumed_at_steps": st["resumed_at"]}


# ----------------------------------------------------------------------------- saving
def save_artifacts(out: Path, model, tok, cfg: dict, heldout: str):
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # Tied embeddings: like real Command-R checkpoints, no lm_head.weight is stored.
    state = {k: v.detach().to(torch.bfloat16).contiguous()
             for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)  # save_file creates it 0600
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tok.save(str(out / "tokenizer.json"))
    for name, content in tokenizer_files(cfg["max_position_embeddings"]).items():
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    (out / "heldout.txt").write_text(heldout, encoding="utf-8")


# ----------------------------------------------------------------------------- evaluation
PROMPTS = ["In the beginning", "And the LORD said unto Moses"]
CHAT_PROMPTS = [[{"role": "user", "content": "Hello"}],
                [{"role": "user", "content": "Tell me a proverb."}]]


def continuations(model, tok, sampler, seed: int) -> list[dict]:
    """Greedy and sampled continuations (transformers generate) of the plain and chat prompts."""
    import torch

    results = []
    cases = [(p, tok.encode(p).ids, "text") for p in PROMPTS]
    for msgs in CHAT_PROMPTS:
        text = sampler.render(msgs, add_generation_prompt=True)
        cases.append((text, tok.encode(text, add_special_tokens=False).ids, "chat"))
    for prompt, ids, kind in cases:
        for mode in ("greedy", "sampled"):
            torch.manual_seed(seed)
            kwargs = (dict(do_sample=False) if mode == "greedy" else
                      dict(do_sample=True, temperature=0.7, top_k=40, top_p=0.9))
            out = model.generate(torch.tensor([ids]), max_new_tokens=60 if kind == "text" else 80,
                                 eos_token_id=[EOT_ID, EOS_DOC_ID], pad_token_id=PAD_ID, **kwargs)
            new = out[0, len(ids):].tolist()
            results.append({
                "prompt": prompt, "kind": kind, "mode": mode,
                "sampling": None if mode == "greedy" else "temperature 0.7, top_k 40, top_p 0.9, "
                                                          f"torch.manual_seed({seed})",
                "completion": tok.decode(new, skip_special_tokens=False),
                "ended_with": tok.id_to_token(new[-1]) if new and new[-1] in (EOT_ID, EOS_DOC_ID)
                else None,
                "new_tokens": len(new),
            })
    return results


END_RATE_PROMPTS = ["Hello", "Hi", "Who are you?", "What is love?", "Tell me my fortune.",
                    "How do I bake bread?"]


def chat_end_rate(model, tok, sampler, seeds=range(1, 5), max_new_tokens: int = 128) -> dict:
    """How often a chat answer ends with <|END_OF_TURN_TOKEN|> within max_new_tokens: greedy
    once per prompt, and sampled (temperature 0.7, top_k 40, top_p 0.9) once per seed."""
    import torch

    def ends(ids, **kwargs) -> bool:
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                             eos_token_id=[EOT_ID, EOS_DOC_ID], pad_token_id=PAD_ID, **kwargs)
        return out[0, -1].item() == EOT_ID

    greedy, sampled = {}, 0
    for prompt in END_RATE_PROMPTS:
        text = sampler.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False).ids
        greedy[prompt] = ends(ids, do_sample=False)
        for seed in seeds:
            torch.manual_seed(seed)
            sampled += ends(ids, do_sample=True, temperature=0.7, top_k=40, top_p=0.9)
    return {"prompts": END_RATE_PROMPTS, "max_new_tokens": max_new_tokens,
            "greedy_ended": greedy, "sampled_ended": sampled,
            "sampled_total": len(END_RATE_PROMPTS) * len(seeds),
            "sampling": f"temperature 0.7, top_k 40, top_p 0.9, torch.manual_seed in {list(seeds)}"}


def check_saved(out: Path, eval_windows, reference_ppl: float, log) -> dict:
    """Reload the shipped files the way users will and confirm the perplexity is unchanged."""
    import torch
    from safetensors import safe_open
    from transformers import CohereForCausalLM

    checks = {}
    try:  # NumPy has no bfloat16, so safetensors.numpy refuses BF16 files (pycohere parses them).
        from safetensors.numpy import load_file
        load_file(str(out / "model.safetensors"))
        checks["safetensors_numpy_load_file"] = "ok"
    except TypeError as exc:
        checks["safetensors_numpy_load_file"] = f"TypeError: {exc}"
    checks["bf16_header_numpy"] = read_bf16_with_numpy(out / "model.safetensors")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        checks["tensor_names"] = sorted(f.keys())
    loaded = CohereForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    rope = loaded.config.rope_parameters
    checks["loaded_rope_theta"] = rope["rope_theta"]
    checks["loaded_tied"] = (loaded.lm_head.weight.data_ptr()
                             == loaded.model.embed_tokens.weight.data_ptr())
    ppl, n = heldout_perplexity(loaded, eval_windows)
    checks["reloaded_heldout_ppl"] = ppl
    checks["reloaded_matches"] = abs(ppl - reference_ppl) < 1e-3 * reference_ppl
    log(f"reloaded from {out}: rope_theta {rope['rope_theta']}, perplexity {ppl:.4f} "
        f"(in-memory bf16 {reference_ppl:.4f})")
    return checks


def read_bf16_with_numpy(path: Path) -> str:
    """Parse the safetensors header by hand and widen every BF16 tensor with NumPy."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    total = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "BF16", (name, meta["dtype"])
        a, b = meta["data_offsets"]
        bits = np.frombuffer(raw, dtype="<u2", count=(b - a) // 2, offset=8 + n + a)
        vals = (bits.astype(np.uint32) << 16).view(np.float32).reshape(meta["shape"])
        assert np.isfinite(vals).all(), name
        total += vals.size
    return f"ok: {len(header) - 1} BF16 tensors, {total} values, all finite"


# ----------------------------------------------------------------------------- provenance
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def debian_version(pkg: str) -> str:
    import subprocess

    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() or "not installed"


def write_provenance(out: Path, info: dict):
    (out / "provenance.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    r = info["results"]
    lines = [
        "# pycohere demo model: provenance",
        "",
        "A tiny Cohere-architecture language model trained from scratch by pycohere's own"
        if not info.get("init") else
        "A tiny Cohere-architecture language model trained (from scratch, then fine-tuned) by pycohere's own",
        "`tools/train_demo_model.py`, shipped so that `pycohere generate` and `pycohere chat` work",
        "offline. It is a toy: it writes King-James-style English and answers chat turns with a",
        "verse, a fortune-cookie line or a Spanish proverb"
        + ("; it was also trained on Command-R's tool-use and grounded-answer formats (see below)."
           if info.get("tool_training") else ". It knows nothing else."),
        "",
        "## Reproduce",
        "",
        "```sh",
        "apt-get install -y " + " ".join(info["corpus"]["debian_packages"]),
    ]
    ini = info.get("init")
    stages = (ini.get("stages") or [ini]) if ini else []
    for n, stage in enumerate(stages, 1):
        lines += [
            f"# {n}. {stage['folder']} ({'from scratch' if n == 1 else 'continued from ' + stages[n - 2]['folder']}; "
            f"model.safetensors sha256 {stage['sha256']}):",
            stage["command"],
        ]
    if stages:
        lines.append(f"# {len(stages) + 1}. this model, continued from {stages[-1]['folder']}:")
    lines += [
        info["command"],
        "```",
        "",
        f"Training wall time: {r['train_seconds'] / 60:.1f} min for {r['steps']} steps on "
        f"{info['machine']['threads']} CPU threads ({info['machine']['cpu']}), `nice -n 10` on a "
        "2-core machine shared with other jobs, so the throughput varied "
        f"({r['tokens_seen'] / r['train_seconds']:.0f} tokens/s on average)"
        + (f"; the run was killed and resumed from its checkpoint at step(s) "
           f"{', '.join(map(str, r['resumed_at_steps']))} (exact continuation: same batches, "
           "optimizer state restored; time while stopped not counted)." if r["resumed_at_steps"]
           else "."),
    ]
    if ini:
        lines += [
            "",
            "Trained in stages, each continuing from the weights of the one before: "
            + "; ".join(f"{s['steps']} steps ({s['tokens_seen']:,} tokens, {s['train_seconds'] / 60:.1f} min, "
                        f"held-out perplexity {s['heldout_ppl_bf16']:.2f} after it)" for s in stages)
            + f"; then this run's {r['steps']}. Every stage keeps the language-model batches (same corpus "
            "and chat samples) beside its tool batches, so the King James text is not forgotten.",
        ]
    lines += [
        "",
        "## Model",
        "",
        f"- `CohereForCausalLM` (model_type `cohere`), {info['model']['parameters']:,} parameters "
        f"({info['model']['parameters_without_embedding']:,} without the tied embedding).",
        "- hidden 256, 4 layers, 8 query heads / 2 key-value heads (GQA), head dim 32, "
        "intermediate 768, qk-norm on, tied embeddings, `logit_scale` 1.0, `rope_theta` 10000.",
        f"- Weights: bf16 safetensors, {info['files']['model.safetensors']['bytes']:,} bytes, "
        "no `lm_head.weight` (tied, as in Command-R checkpoints). config.json uses the 4.x keys "
        "(`rope_theta`, no `rope_parameters`).",
        "- `logit_scale` 1.0, not Command-R's 0.0625: with tied embeddings at this size 0.0625 "
        "trained far worse (measured: perplexity 287 vs 51 after 3 minutes).",
        f"- Trained context: {info['training']['seq_len']} tokens"
        + (f" for text and chat, up to {info['tool_training']['max_len']} for the tool-use and "
           "grounded-answer sequences" if info.get("tool_training") else "")
        + f" (`max_position_embeddings` {info['model']['max_position_embeddings']} is only the RoPE "
        "table size; quality drops beyond the trained context).",
        "",
        "## Tokenizer",
        "",
        f"Byte-level BPE, {VOCAB_SIZE} tokens, trained with `tokenizers` on the training split "
        "only. Layout as Command-R's tokenizer.json: NFC normaliser, `Digits(individual_digits=True)` "
        "then `ByteLevel(add_prefix_space=False)` pre-tokenizer, ByteLevel decoder, "
        "TemplateProcessing that prepends `<BOS_TOKEN>` (no EOS).",
        "",
        "| id | token | | id | token |",
        "|---|---|---|---|---|",
    ]
    half = (len(SPECIAL_TOKENS) + 1) // 2
    for i in range(half):
        j = i + half
        right = f"{j} | `{SPECIAL_TOKENS[j]}`" if j < len(SPECIAL_TOKENS) else " | "
        lines.append(f"| {i} | `{SPECIAL_TOKENS[i]}` | | {right} |")
    lines += [
        "",
        "bos `<BOS_TOKEN>` (5), eos `<|END_OF_TURN_TOKEN|>` (9, Command-R's chat eos; also "
        "config.json `eos_token_id`), pad `<PAD>` (0). generation_config.json stops on [9, 6]: "
        "`<EOS_TOKEN>` (6) ends each plain-text training document. Ids 13-20 (R7B tool/RAG "
        "markers) are reserved and were never trained.",
        "",
        "`chat_template` is Command-R's default template, verbatim, from llama.cpp "
        "`tests/test-chat-template.cpp` (case `CohereForAI/c4ai-command-r-plus`, commit "
        "03f94f19a2c4c9d039fa1a84838fe3e2110cc28d), the same text transformers 4.x "
        "`CohereTokenizerFast.default_chat_template` produced.",
        "",
        "## Corpus and licences",
        "",
    ]
    for src in info["corpus"]["sources"]:
        lines.append(f"- **{src['name']}** (Debian `{src['package']}` {src['version']}): "
                     f"{src['use']}. Licence: {src['licence']}")
    c = info["corpus"]
    lines += [
        "",
        f"Training split: {c['train_chapters']} chapters, {c['train_kjv_tokens']:,} tokens per "
        f"pass (with <BOS_TOKEN>/<EOS_TOKEN> per chapter); chat samples, drawn afresh every epoch, "
        f"add {c['chat_fraction']:.0%} of tokens (Command-R template, 15% with a system turn, 20% "
        "with two exchanges).",
    ]
    t = info.get("tool_training")
    if t:
        lines += [
            "",
            f"Tool use and grounded answers: every {t['every']} steps a batch of {t['batch']} "
            f"sequences ({t['sequences']:,} in all, {t['tokens']:,} tokens, {t['answer_tokens']:,} of "
            "them answers), alternately tool requests and document requests drawn by "
            "`tools/demo_corpus.py` `ToolSampler`: OpenAI-style tools (1-3 functions named "
            "verb_noun, 1-2 parameters, e.g. `search_verses(query)`) with a user turn that names "
            "one and quotes a value, answered with Command-R's `Action: ```json [...]``` ` block "
            "(8% greetings answered with `directly_answer`); or 1-4 documents (training-split verses "
            "or fortune lines, 70% with a title) with a question about a word found in one of them, "
            "answered `Relevant Documents: k` / `Cited Documents: k` / `Answer:` (accurate mode, "
            "70%; fast mode 30%) / `Grounded answer: <co: k>the sentence</co: k>`. The prompts are "
            "rendered by `pycohere.serve.prompts.build_prompt` (Command-R's built-in `tool_use` and "
            f"`rag` templates, {t['tokens'] / max(1, t['sequences']):.0f} tokens per sequence on average) "
            "with the freshly trained tokenizer: exactly what "
            "`pycohere serve` runs at inference. Loss on the answer tokens only (weight "
            f"{t['weight']}, added to the language-model loss of the same step): the prompt is mostly "
            "the templates' fixed preamble, nothing the model has to write; the batch's shared prefix "
            "runs once without gradients as a KV cache (the same forward). Tool "
            f"names in `HELDOUT_TOOL_NAMES` ({t['heldout_names']} of the verb_noun pairs) are never "
            "trained on.",
        ]
        if t.get("tokenizer_samples"):
            lines += ["", f"The tokenizer's second pass also saw {t['tokenizer_samples']} rendered training cases "
                      "and every training tool name (`--tokenizer-tool-samples`), so the templates' English and "
                      "the names are short token runs (a held-out tool prompt ~600 tokens instead of ~950)."]
        if t.get("copy_fraction"):
            lines += ["", f"In {t['copy_fraction']:.0%} of the language-model windows a span of 8-48 tokens is "
                      "repeated later in the window (`--copy-fraction`): copying from the context, which the "
                      "tool and document answers need, is then learned early."]
        if t.get("drills"):
            lines += ["", f"With every tool batch, {t['drills']} short drills (`--tool-drills`): a tool case's "
                      "definitions and user turn without the template's preamble and instructions, then its "
                      "answer. A name's first token follows `def ` in the spec (`Ġsearch`) and a quote in the "
                      "answer (`search`), so the answer cannot copy it token for token; the drills teach "
                      "that pairing a few lines apart instead of ~300 tokens."]
    lines += [
        "",
        f"Held out (never trained on, not used for the tokenizer): KJV chapters with index "
        f"i % {demo_corpus.HELDOUT_EVERY} == {demo_corpus.HELDOUT_OFFSET} in canonical order "
        f"({len(c['heldout_chapters'])} chapters: {', '.join(c['heldout_chapters'])}). "
        "`heldout.txt` holds them: chapters separated by a blank line, verses one per line, no "
        "numbers.",
        "",
        "## Results",
        "",
        f"- Held-out perplexity **{r['heldout_ppl_bf16']:.2f}** (bf16 weights evaluated in float32; "
        f"{r['heldout_tokens']:,} tokens; float32 weights before rounding: "
        f"{r['heldout_ppl_fp32']:.2f}; reloaded with `CohereForCausalLM.from_pretrained`: "
        f"{info['checks']['reloaded_heldout_ppl']:.2f}).",
        "  Definition: each held-out chapter is encoded without special tokens and cut into "
        f"pieces of {info['training']['seq_len']} tokens; each piece is scored as "
        "`[<BOS_TOKEN>] + piece` with no carried context; perplexity = exp(total NLL / number of "
        "text tokens).",
        f"- Tokens seen: {r['tokens_seen']:,} ({r['tokens_seen'] / c['train_kjv_tokens']:.1f} "
        f"passes over the training split), {r['steps']} steps of "
        f"{info['training']['batch_size']}x{info['training']['seq_len']} tokens, final train loss "
        f"{r['final_train_loss']}.",
    ]
    tr = info.get("tool_rates")
    if tr:
        lines += [
            f"- Held-out tool requests (tool names never trained on, argument words from held-out "
            f"chapters), greedy, read back by `pycohere.serve.prompts.read_answer`: a valid call of "
            f"the request's tools in **{tr['tool_valid']} of {tr['n']}**, the expected call exactly "
            f"(name and arguments) in {tr['tool_exact']}. Held-out document requests (held-out "
            f"verses): valid citations (existing documents, spans that index the text) in "
            f"**{tr['grounded_valid']} of {tr['n']}**, citing exactly the right document in "
            f"{tr['grounded_exact']}.",
        ]
        for kind, v in tr["examples"].items():
            lines += ["", f"First held-out {kind} request, `{v['user']}`, answered:", "", "```",
                      v["answer"], "```"]
    lines += [
        "",
        "Continuations (transformers `generate`, max 60/80 new tokens, stop on ids 9/6):",
        "",
    ]
    for g in info["continuations"]:
        prompt = g["prompt"] if g["kind"] == "text" else "chat: " + g["prompt"]
        lines += [f"**{g['mode']}** — `{prompt}`", "", "```", g["completion"], "```", ""]
    ce = info.get("chat_end_rate")
    if ce:
        greedy_ok = [p for p, ok in ce["greedy_ended"].items() if ok]
        lines += [
            "## Limitations",
            "",
            "- Greedy decoding falls into repetition loops (see above); sampling works far better. "
            "generation_config.json therefore asks for sampling (temperature 0.7, top_k 40, "
            "top_p 0.9, at most 128 new tokens).",
            f"- Chat answers end with `<|END_OF_TURN_TOKEN|>` within {ce['max_new_tokens']} tokens "
            f"in {ce['sampled_ended']} of {ce['sampled_total']} sampled runs "
            f"(prompts {', '.join(repr(p) for p in ce['prompts'])}; {ce['sampling']}); greedy "
            f"ends for {len(greedy_ok)} of {len(ce['prompts'])} prompts "
            f"({', '.join(repr(p) for p in greedy_ok) or 'none'}). A chat front end must still "
            "cap the answer length.",
            "- Fortune-cookie and Spanish answers are mostly garbled: together they are about 2% "
            "of the training tokens, too little for a 4M-parameter model. English KJV prose is "
            "what it does well.",
            f"- Trained on {info['training']['seq_len']}-token windows only"
            + (" (tool and document sequences longer)." if info.get("tool_training") else "."),
            "",
        ]
    lines += [
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + f"; seed {info['seed']}.",
        "",
        "Training curve (held-out perplexity): " + ", ".join(
            f"{h['step']}: {h['heldout_ppl']}" for h in r["history"]) + ".",
        "",
    ]
    (out / "PROVENANCE.md").write_text("\n".join(lines), encoding="utf-8")


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="number of optimiser steps (reproducible)")
    budget.add_argument("--minutes", type=float, default=25.0,
                        help="training budget; picks --steps after timing the first steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("pycohere/demo"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--chat-fraction", type=float, default=0.08)
    p.add_argument("--max-positions", type=int, default=2048)
    p.add_argument("--tool-every", type=int, default=0,
                   help="every this many steps, add a batch of tool-use / grounded-answer sequences "
                        "(0: none)")
    p.add_argument("--tool-batch", type=int, default=3, help="sequences in such a batch")
    p.add_argument("--tool-weight", type=float, default=1.0,
                   help="weight of their answer loss beside the language-model loss")
    p.add_argument("--tool-max-len", type=int, default=1536,
                   help="longest tool/document sequence (prompt + answer), in tokens")
    p.add_argument("--tokenizer-tool-samples", type=int, default=0,
                   help="also train the BPE on this many rendered tool-use / grounded-answer training "
                        "cases (prompt and answer) and on the tool names, so the templates' English "
                        "and the names are short token runs (0: corpus text only)")
    p.add_argument("--copy-fraction", type=float, default=0.0,
                   help="fraction of language-model windows in which a span of 8-48 tokens is repeated "
                        "later in the window (teaches copying from the context early)")
    p.add_argument("--tool-drills", type=int, default=0,
                   help="also, with every tool batch, this many short tool drills (answer loss): a tool case's "
                        "definitions, user turn and answer without the template's preamble and instructions, "
                        "so that the answer copies a name from a few lines up")
    p.add_argument("--init", type=Path,
                   help="start from the weights of this demo model folder (trained by this script: "
                        "its tokenizer must be the one rebuilt here) instead of random ones")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--log", type=Path, help="also append the log to this file")
    p.add_argument("--checkpoint", type=Path, default=Path("/tmp/pycohere-demo-train.pt"),
                   help="resume from / save to this file (deleted after a finished run); "
                        "'' disables")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests resuming
    p.add_argument("--evaluate-only", action="store_true",
                   help="no training: reload the artifacts in --out, check their held-out "
                        "perplexity against provenance.json, redo the generations and rewrite "
                        "provenance.json / PROVENANCE.md")
    args = p.parse_args(argv)
    if args.steps is not None:
        args.minutes = None
    if args.checkpoint is not None and str(args.checkpoint) in ("", "."):
        args.checkpoint = None
    return args


def main(argv=None):
    args = parse_args(argv)
    import tokenizers
    import torch
    import transformers
    from transformers import CohereConfig, CohereForCausalLM

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if args.log:
            with open(args.log, "a") as fh:
                fh.write(line + "\n")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    wall0 = time.time()

    chapters = demo_corpus.read_kjv()
    train_ch, heldout_ch = demo_corpus.split_chapters(chapters)
    fortunes_en = demo_corpus.read_fortune_file(demo_corpus.FORTUNES_EN, 200)
    refranes_es = demo_corpus.read_fortune_file(demo_corpus.REFRANES_ES, 150)
    sampler = demo_corpus.ChatSampler(train_ch, fortunes_en, refranes_es)
    log(f"corpus: {len(train_ch)} train / {len(heldout_ch)} held-out chapters, "
        f"{len(fortunes_en)} fortunes, {len(refranes_es)} refranes")

    prompt_texts = (demo_corpus.GREETINGS + demo_corpus.VERSE_ASKS + demo_corpus.PROVERB_ASKS
                    + demo_corpus.FORTUNE_ASKS + demo_corpus.SPANISH_ASKS
                    + demo_corpus.IDENTITY_ASKS + demo_corpus.IDENTITY_ANSWERS
                    + demo_corpus.OTHER_ASKS + demo_corpus.SYSTEM_PROMPTS)
    texts = [c.text for c in train_ch] + fortunes_en + refranes_es + prompt_texts
    tok = build_tokenizer(texts)
    ptok = pycohere_tokenizer(tok, args.max_positions, Path(f"/tmp/pycohere-demo-tokenizer-{os.getpid()}"))
    tool_sampler = demo_corpus.ToolSampler(train_ch, fortunes_en)
    if args.tokenizer_tool_samples:
        tok = build_tokenizer(texts + tool_texts(ptok, tool_sampler, args.tokenizer_tool_samples, args.seed))
        ptok = pycohere_tokenizer(tok, args.max_positions,
                                  Path(f"/tmp/pycohere-demo-tokenizer-{os.getpid()}"))
    corpus = Corpus(tok, train_ch, heldout_ch, sampler, args.chat_fraction, args.seq_len, args.seed,
                    ptok, tool_sampler, args.tool_every, args.tool_max_len, args.copy_fraction)
    corpus.heldout_tools = demo_corpus.ToolSampler(heldout_ch, fortunes_en, heldout=True, direct_p=0.0)
    log(f"tokenizer: {tok.get_vocab_size()} tokens; KJV train tokens {corpus.kjv_tokens}, "
        f"chat tokens per epoch >= {corpus.chat_target}")

    if args.evaluate_only:
        return evaluate_only(args, tok, corpus, sampler, log)

    cfg = model_config(args.max_positions)
    config = CohereConfig(**{k: v for k, v in cfg.items()
                             if k not in ("architectures", "torch_dtype", "dtype",
                                          "transformers_version", "model_type")})
    assert config.rope_parameters["rope_theta"] == cfg["rope_theta"], config.rope_parameters
    # Eager attention: on this 2-core CPU it ran ~20% faster than SDPA (measured).
    config._attn_implementation = "eager"
    torch.manual_seed(args.seed)
    model = CohereForCausalLM(config).float()
    init = load_init(args.init, tok, model, log) if args.init else None
    n_params = sum(p.numel() for p in model.parameters())  # tied weight counted once
    log(f"model: {n_params} parameters")

    result = train(args, model, corpus, log)
    eval_windows = corpus.eval_windows()
    ppl_fp32, n_eval = heldout_perplexity(model, eval_windows)
    with torch.no_grad():  # evaluate exactly the shipped (bf16-rounded) weights
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ppl_bf16, _ = heldout_perplexity(model, eval_windows)
    log(f"held-out perplexity: fp32 {ppl_fp32:.4f}, bf16 weights {ppl_bf16:.4f}")

    save_artifacts(args.out, model, tok, cfg, demo_corpus.heldout_text(heldout_ch))
    checks = check_saved(args.out, eval_windows, ppl_bf16, log)
    gens = continuations(model, tok, sampler, args.seed)
    for g in gens:
        log(f"{g['mode']} {g['prompt']!r} -> {g['completion']!r}")
    end_rate = chat_end_rate(model, tok, sampler)
    log(f"chat end rate: {end_rate}")
    rates = tool_rates(model, ptok, corpus.heldout_tools, seed=args.seed) if args.tool_every else None
    log(f"held-out tool / document requests: {rates}")

    command = ("nice -n 10 python tools/train_demo_model.py "
               f"--steps {result['steps']} --seed {args.seed} --out {args.out}")
    defaults = parse_args([])
    for name in ("threads", "batch_size", "seq_len", "lr", "warmup", "weight_decay", "clip",
                 "chat_fraction", "max_positions", "eval_every", "tool_every", "tool_batch",
                 "tool_weight", "tool_max_len", "init", "tokenizer_tool_samples", "copy_fraction", "tool_drills"):
        if getattr(args, name) != getattr(defaults, name):
            command += f" --{name.replace('_', '-')} {getattr(args, name)}"
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(args.out.iterdir()) if p.is_file() and not p.name.startswith("PROV")
             and p.name != "provenance.json"}
    info = {
        "command": command,
        "invocation": " ".join(sys.argv),
        "seed": args.seed,
        "machine": {"threads": args.threads, "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "model": {"parameters": n_params,
                  "parameters_without_embedding": n_params - model.model.embed_tokens.weight.numel(),
                  "max_position_embeddings": cfg["max_position_embeddings"], "config": cfg},
        "training": {"batch_size": args.batch_size, "seq_len": args.seq_len, "peak_lr": args.lr,
                     "warmup_steps": args.warmup, "schedule": "linear warm-up, cosine to 0.1x peak",
                     "optimizer": "AdamW betas (0.9, 0.95) eps 1e-8, weight decay "
                                  f"{args.weight_decay} (not on norms), grad clip {args.clip}",
                     "dtype": "float32 (weights rounded to bf16 once at the end)",
                     "torch_threads": args.threads, "tool_max_len": args.tool_max_len},
        "tokenizer": {"vocab_size": VOCAB_SIZE,
                      "special_tokens": {t: i for i, t in enumerate(SPECIAL_TOKENS)},
                      "bos_token_id": BOS_ID, "eos_token_id": EOT_ID, "pad_token_id": PAD_ID,
                      "chat_template_source": "llama.cpp tests/test-chat-template.cpp, case "
                      "CohereForAI/c4ai-command-r-plus (ggml-org/llama.cpp commit "
                      "03f94f19a2c4c9d039fa1a84838fe3e2110cc28d)"},
        "corpus": {
            "debian_packages": ["bible-kjv", "bible-kjv-text", "fortunes-min", "fortunes-es"],
            "sources": corpus_sources(len(fortunes_en), len(refranes_es)),
            "train_chapters": len(train_ch),
            "heldout_chapters": [c.name for c in heldout_ch],
            "heldout_rule": f"chapter index i (0..1188, canonical order) with i % "
                            f"{demo_corpus.HELDOUT_EVERY} == {demo_corpus.HELDOUT_OFFSET}",
            "train_kjv_tokens": corpus.kjv_tokens,
            "chat_fraction": args.chat_fraction,
        },
        "results": {**result, "heldout_ppl_fp32": ppl_fp32, "heldout_ppl_bf16": ppl_bf16,
                    "heldout_tokens": n_eval,
                    "total_wall_seconds": round(time.time() - wall0, 1)},
        "checks": checks,
        "continuations": gens,
        "chat_end_rate": end_rate,
        "init": init,
        "tool_training": {"every": args.tool_every, "batch": args.tool_batch, "weight": args.tool_weight,
                          "max_len": args.tool_max_len, "sequences": result["tool_sequences"],
                          "tokens": result["tool_tokens"], "answer_tokens": result["tool_answer_tokens"],
                          "heldout_names": len(demo_corpus.HELDOUT_TOOL_NAMES),
                          "tokenizer_samples": args.tokenizer_tool_samples, "copy_fraction": args.copy_fraction,
                          "drills": args.tool_drills,
                          "loss": "answer tokens only"} if args.tool_every else None,
        "tool_rates": rates,
        "files": files,
    }
    write_provenance(args.out, info)
    if args.checkpoint and args.checkpoint.exists():
        args.checkpoint.unlink()  # finished: a later run must start from scratch
    log(f"done: {args.out} ({files['model.safetensors']['bytes']} bytes of weights)")


def evaluate_only(args, tok, corpus: Corpus, sampler, log):
    """Re-run the evaluations on the shipped files (the tokenizer rebuilt from the corpus must be
    the shipped one, which also checks that tokenizer training is deterministic)."""
    import torch
    from transformers import CohereForCausalLM

    info = json.loads((args.out / "provenance.json").read_text())
    if json.loads(tok.to_str()) != json.loads((args.out / "tokenizer.json").read_text()):
        raise SystemExit("the rebuilt tokenizer differs from the shipped tokenizer.json")
    torch.manual_seed(args.seed)
    model = CohereForCausalLM.from_pretrained(str(args.out), dtype=torch.float32).eval()
    ppl, _ = heldout_perplexity(model, corpus.eval_windows())
    shipped = info["results"]["heldout_ppl_bf16"]
    log(f"held-out perplexity of the shipped weights: {ppl:.4f} (provenance.json: {shipped:.4f})")
    if abs(ppl - shipped) > 1e-3 * shipped:
        raise SystemExit("perplexity of the shipped weights does not match provenance.json")
    info["continuations"] = continuations(model, tok, sampler, args.seed)
    info["chat_end_rate"] = chat_end_rate(model, tok, sampler)
    log(f"chat end rate: {info['chat_end_rate']}")
    if info.get("tool_training"):
        info["tool_rates"] = tool_rates(model, corpus.ptok, corpus.heldout_tools, seed=args.seed)
        log(f"held-out tool / document requests: {info['tool_rates']}")
    info["reevaluated"] = {"invocation": " ".join(sys.argv), "heldout_ppl": ppl,
                           "note": "generations recomputed on the weights reloaded with "
                                   "CohereForCausalLM.from_pretrained"}
    write_provenance(args.out, info)


def corpus_sources(n_fortunes: int, n_refranes: int) -> list[dict]:
    return [
        {"name": "King James Version of the Bible (1611)", "package": "bible-kjv-text",
         "version": debian_version("bible-kjv-text"),
         "use": "language-model text (all of it except the held-out chapters) and chat answers; "
                "extracted with the `bible` reader from package `bible-kjv` "
                f"({debian_version('bible-kjv')}, GPL-2+, a tool only, not shipped)",
         "licence": "public domain (the package's copyright file: the copyright of the 1611 "
                    "translation has expired; the Debian packaging/compression is GPL-2+)."},
        {"name": "fortune-cookie lines, /usr/share/games/fortunes/fortunes", "package": "fortunes-min",
         "version": debian_version("fortunes-min"),
         "use": f"chat answers only ({n_fortunes} anonymous one-liners, no attributed quotations)",
         "licence": "BSD fortune collection (BSD licence per /usr/share/doc/fortunes-min/copyright); "
                    "the copyright of individual cookies is not stated. Used sparingly for that "
                    "reason; about 1% of training tokens."},
        {"name": "Spanish refranes, /usr/share/games/fortunes/es/refranes.fortunes",
         "package": "fortunes-es", "version": debian_version("fortunes-es"),
         "use": f"chat answers only ({n_refranes} traditional proverbs)",
         "licence": "traditional folk proverbs; /usr/share/doc/fortunes-es/copyright: \"All "
                    "fortunes' text and quotes are presumed to be in the public domain\" (the "
                    "collecting scripts are GPL)."},
    ]


if __name__ == "__main__":
    main()
