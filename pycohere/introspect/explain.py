"""``pycohere explain``: walk the last token of a prompt through the network, one operation a line.

For every operation it prints the formula, the shape of that token's values and their summary
statistics (mean, std, min, max, L2 norm); attention lines show which positions the token attends to.
Where Cohere differs from Llama, the ``COHERE:`` note of the function implementing it (read from the
docstrings and ``# COHERE:`` comments of ``pycohere/spec/layers.py`` and ``pycohere/model/modeling.py``, so the
walkthrough and the code cannot drift apart) is printed under the first line it concerns.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..spec.cache import layer_windows
from ..spec.taps import GLOBAL_AFTER, GLOBAL_BEFORE, LAYER_OPS
from ..spec.taps import Recorder

PACKAGE = Path(__file__).resolve().parents[1]
# The files whose docstrings and ``# COHERE:`` comments the walkthrough quotes, relative to the package.
NOTE_SOURCES = ("spec/layers.py", "model/params.py", "model/modeling.py")


# --- COHERE notes from the source --------------------------------------------------------------------
@dataclass
class Note:
    file: str        # "layers.py"
    line: int
    function: str    # innermost enclosing function, "" at module level
    text: str        # first sentence after "COHERE:", whitespace-normalised


def _first_sentence(text: str) -> str:
    """Up to the first '.' followed by a space or the end, outside parentheses."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "." and depth <= 0 and (i + 1 == len(text) or text[i + 1] == " "):
            return text[:i + 1]
    return text


def _note_text(lines: list[str], i: int) -> str:
    """The note starting on line index i: a comment block, or a docstring paragraph."""
    first = lines[i].strip()
    is_comment = first.startswith("#")
    parts = [first.split("COHERE:", 1)[1]]
    for line in lines[i + 1:]:
        s = line.strip()
        if is_comment:
            if not s.startswith("#") or "COHERE:" in s:
                break
            parts.append(s.lstrip("# "))
        else:
            if not s or s.startswith('"""') or "COHERE:" in s:
                break
            parts.append(s)
    text = " ".join(" ".join(parts).replace('"""', " ").split())
    return _first_sentence(text)


def cohere_notes(files=NOTE_SOURCES) -> list[Note]:
    """Every ``COHERE:`` note that starts a docstring or a comment in the given package files."""
    notes = []
    for name in files:
        source = (PACKAGE / name).read_text(encoding="utf-8")
        lines = source.splitlines()
        funcs = [(n.lineno, n.end_lineno, n.name) for n in ast.walk(ast.parse(source))
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for i, line in enumerate(lines):
            if not re.match(r'\s*(#\s*|"""|)COHERE:', line):
                continue
            inside = [f for f in funcs if f[0] <= i + 1 <= f[1]]
            func = max(inside, key=lambda f: f[0])[2] if inside else ""
            notes.append(Note(name, i + 1, func, _note_text(lines, i)))
    return notes


def note_anchor(note: Note) -> str:
    """Where a note is printed: an op name, 'nope' (a layer without RoPE) or '' (the closing list)."""
    text, func = note.text, note.function
    if "NoPE" in text:
        return "nope"
    if "q/k" in text or "qk" in text.lower().replace("-", ""):
        return "q_normed"
    if func == "layer_norm":
        return "input_layernorm"
    if func == "apply_rope":
        return "q_rope"
    if func == "decoder_layer":
        return "output"
    if func == "lm_head" or "output head" in text:
        return "logits"
    return ""


# --- the walkthrough --------------------------------------------------------------------------------
FORMULAS = {
    "embed_tokens": "x = E[id]",
    "rope_cos": "cos(pos * inv_freq_i)",
    "rope_sin": "sin(pos * inv_freq_i)",
    "input_layernorm": "h = LN(x) * w",
    "q": "q = h Wq^T",
    "k": "k = h Wk^T",
    "v": "v = h Wv^T",
    "q_normed": "q = LN_Dh(q) per head",
    "k_normed": "k = LN_Dh(k) per head",
    "q_rope": "q = rot(q, pos)",
    "k_rope": "k = rot(k, pos)",
    "attn_probs": "p = softmax(q.k/sqrt(Dh)+mask)",
    "attn_context": "c = sum_s p_s v_s",
    "attn_out": "a = c Wo^T",
    "mlp_gate": "g = h Wg^T",
    "mlp_up": "u = h Wu^T",
    "mlp_act": "act(g) * u",
    "mlp_out": "m = (act(g)*u) Wd^T",
    "output": "x = x + a + m",
    "norm": "h = LN(x) * w",
    "logits": "(h E^T) * logit_scale",
}


# Default layout: one line per operation, k and v beside q (--full: one line per tensor).
LAYER_GROUPS = [["input_layernorm"], ["q", "k", "v"], ["q_normed", "k_normed"], ["q_rope", "k_rope"],
                ["attn_probs"], ["attn_context"], ["attn_out"], ["mlp_gate", "mlp_up"], ["mlp_act"], ["mlp_out"],
                ["output"]]


def stats(a: np.ndarray) -> str:
    a = np.asarray(a, dtype=np.float64)
    return (f"mean {a.mean():+.4f}  std {a.std():.4f}  min {a.min():+.4f}  max {a.max():+.4f}  "
            f"norm {np.linalg.norm(a):.4f}")


def last_token(name: str, value: np.ndarray) -> np.ndarray:
    """The last token's slice of a tap (batch axis already dropped): attn_probs (H, T, S) -> (H, S),
    everything else (T, ...) -> (...)."""
    return value[:, -1] if name.endswith("attn_probs") else value[-1]


def attention_summary(p: np.ndarray, n: int = 3) -> str:
    """p (H, S): the key positions with the highest weight, averaged over heads."""
    mean = p.mean(0)
    top = np.argsort(-mean, kind="stable")[:n]
    return "attends to " + ", ".join(f"pos {int(s)} ({mean[s]:.2f})" for s in top) + \
        f"  [mean over {p.shape[0]} heads; each row sums to 1]"


class Walkthrough:
    """Runs the prompt once with a Recorder (only the shown layers' taps are kept) and renders the text."""

    def __init__(self, model, ids, layers=None, tokenizer=None, top_k: int = 5, name: str = "model",
                 full: bool = False):
        self.model, self.cfg, self.tok, self.top_k, self.name = model, model.config, tokenizer, top_k, name
        self.full = full
        self.ids = np.asarray(ids, dtype=np.int64)
        L = self.cfg.num_hidden_layers
        self.layers = list(range(L)) if layers is None else list(layers)
        bad = [i for i in self.layers if not 0 <= i < L]
        if bad:
            raise InputError(f"--layers {bad} out of range: this model has layers 0..{L - 1}")
        rec = Recorder(["embed_tokens", "rope_*", "norm", "logits"] + [f"layers.{i}.*" for i in self.layers])
        self.logits = model(self.ids[None], recorder=rec).logits[0, -1]
        self.taps = {k: v[0] for k, v in rec.records.items()}  # drop the batch axis
        self.notes = cohere_notes()
        self.shown: set[int] = set()
        self.lines: list[str] = []

    # -- output helpers -------------------------------------------------------------------------
    def emit(self, text: str = "") -> None:
        self.lines.append(text)

    def emit_notes(self, anchor: str, indent: str = "      ") -> None:
        for k, note in enumerate(self.notes):
            if k not in self.shown and note_anchor(note) == anchor:
                self.shown.add(k)
                self.emit(f"{indent}^ COHERE: {note.text}  [{note.file}:{note.line}]")

    def op_line(self, names: list[str], indent: str = "  ") -> None:
        """One line: full statistics of the first tap; the others of the group (k, v next to q) by
        shape and norm."""
        ops = [n.rsplit(".", 1)[-1] for n in names]
        value = last_token(names[0], self.taps[names[0]])
        formula = FORMULAS.get(ops[0], "")
        if ops[0] == "mlp_act":
            formula = f"{self.cfg.hidden_act}(g) * u"
        summary = attention_summary(value) if ops[0] == "attn_probs" else stats(value)
        others = [f"{op} {last_token(n, self.taps[n]).shape} norm {np.linalg.norm(last_token(n, self.taps[n])):.4f}"
                  for op, n in zip(ops[1:], names[1:])]
        label = " | ".join(ops)
        tail = ("   | " + ", ".join(others)) if others else ""
        self.emit(f"{indent}{label:<20} {formula:<30} {str(value.shape):<9} {summary}{tail}")
        for op in ops:
            self.emit_notes(op)

    # -- sections -------------------------------------------------------------------------------
    def header(self) -> None:
        c = self.cfg
        self.emit(f"{self.name}: {c.model_type}, {c.num_hidden_layers} layers, D {c.hidden_size}, "
                  f"H {c.num_attention_heads} / K {c.num_key_value_heads} heads of Dh {c.get_head_dim()}, "
                  f"F {c.intermediate_size} ({c.hidden_act}), V {c.vocab_size}, logit_scale {c.logit_scale}, "
                  f"{np.dtype(self.model.dtype).name}")
        T = len(self.ids)
        shown = " ".join(map(str, self.ids[:32])) + (" ..." if T > 32 else "")
        last = int(self.ids[-1])
        piece = f" {self._piece(last)!r}" if self.tok is not None else ""
        self.emit(f"tokens ({T}): {shown}")
        self.emit(f"following the last token: id {last}{piece} at position {T - 1}; each line shows that token's "
                  "values (shape) and their mean, std, min, max and L2 norm")
        self.emit()

    def _piece(self, token_id: int) -> str:
        try:
            return self.tok.decode([token_id])
        except Exception:  # a display nicety only; never fail the walkthrough on it
            return "?"

    def layer(self, i: int) -> None:
        window = layer_windows(self.cfg)[i]
        rope = self.model.model.layer_uses_rope(i)
        kind = "causal attention" if window is None else f"sliding-window attention (window {window})"
        if getattr(self.cfg, "layer_types", None) and window is None:
            kind = "full causal attention"
        self.emit(f"layer {i}: {kind}, {'RoPE' if rope else 'no positional encoding (NoPE)'}; "
                  "attention and MLP both read h (parallel block)")
        if not rope:
            self.emit_notes("nope", "    ")
        groups = [[op] for op in LAYER_OPS] if self.full else LAYER_GROUPS
        for group in groups:
            names = [f"layers.{i}.{op}" for op in group if f"layers.{i}.{op}" in self.taps]
            if names:
                self.op_line(names, "    ")

    def closing(self) -> None:
        lp = self.logits.astype(np.float64)
        lp = lp - lp.max() - np.log(np.exp(lp - lp.max()).sum())
        top = np.argsort(-lp, kind="stable")[: self.top_k]
        parts = []
        for t in top:
            piece = f" {self._piece(int(t))!r}" if self.tok is not None else ""
            parts.append(f"{int(t)}{piece} p={np.exp(lp[t]):.3f}")
        self.emit(f"next token (top {len(top)}): " + ", ".join(parts))
        rest = [n for k, n in enumerate(self.notes) if k not in self.shown]
        if rest:
            self.emit()
            self.emit("other COHERE differences (not exercised by this model or these layers):")
            for n in rest:
                self.emit(f"  - {n.text}  [{n.file}:{n.line}]")

    def render(self) -> str:
        self.header()
        for name in GLOBAL_BEFORE:
            if name in self.taps:
                self.op_line([name])
        self.emit()
        for i in self.layers:
            self.layer(i)
            self.emit()
        skipped = self.cfg.num_hidden_layers - len(self.layers)
        if skipped:
            self.emit(f"({skipped} layer(s) not shown; --layers chooses)")
            self.emit()
        for name in GLOBAL_AFTER:
            self.op_line([name])
        self.closing()
        return "\n".join(self.lines)


def explain(model, ids, layers=None, tokenizer=None, top_k: int = 5, name: str = "model", full: bool = False) -> str:
    """The walkthrough text for ``ids`` (a list of token ids)."""
    return Walkthrough(model, ids, layers, tokenizer, top_k, name, full).render()
