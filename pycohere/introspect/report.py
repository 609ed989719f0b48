"""One self-contained HTML report of a prompt's forward pass (``pycohere explain --html report.html``).

The page holds the prompt's tokens, the next-token prediction, the logit lens (a layer x position table
and the final answer's probability per layer), attention heatmaps per layer and head (Cohere2's sliding
and full layers labelled), residual / attention / MLP norms, attention entropy, direct logit attribution,
optionally an activation-patching sweep, and every ``COHERE:`` difference linked to the source of the
function implementing it (embedded in the page, so the links work offline). CSS, SVG and the few lines of
JavaScript (layer / head filters; the page is complete without them) are inline; a Content-Security-Policy
forbids any fetch. The same figures render in Jupyter (``Report._repr_html_``, ``pycohere.introspect.figures``).
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..version import __version__
from . import analysis as A
from . import figures as F
from .explain import PACKAGE, Note, cohere_notes

# The page's only script: filters for the attention section (``#attn=LAYER`` or ``#attn=LAYER.HEAD`` in the
# address preselects them) and a note's link opening the source it points at. It marks the page ready when
# done (the browser test reads that).
SCRIPT = """(function(){
var L=document.getElementById('pc-attn-layer'),H=document.getElementById('pc-attn-head');
function apply(){
 document.querySelectorAll('#attention .pc-layer').forEach(function(d){d.hidden=L.value!=='all'&&d.dataset.layer!==L.value;});
 document.querySelectorAll('#attention .pc-head').forEach(function(d){
  d.hidden=H.value!=='all'&&d.dataset.head!==H.value&&d.dataset.head!=='mean';});
}
if(L&&H){L.addEventListener('change',apply);H.addEventListener('change',apply);
 var m=/attn=(\\w+)(?:\\.(\\w+))?/.exec(location.hash);if(m){L.value=m[1];if(m[2])H.value=m[2];}apply();}
function openSource(id){var d=document.getElementById(id);if(d&&d.tagName==='DETAILS')d.open=true;}
document.querySelectorAll('a[href^="#src-"]').forEach(function(a){
 a.addEventListener('click',function(){openSource(a.getAttribute('href').slice(1));});});
if(location.hash.indexOf('#src-')===0)openSource(location.hash.slice(1));
document.documentElement.setAttribute('data-ready','1');
})();"""

EXTRA_CSS = """
[hidden]{display:none!important}
body.pc{max-width:1200px;margin:0 auto;padding:8px 20px 40px}
.pc h1{font-size:20px;margin:12px 0 4px}.pc h2{font-size:16px;margin:24px 0 6px;border-bottom:2px solid #333}
.pc nav a{margin-right:12px}.pc .pc-meta{color:#555}
.pc table.pc-top{border-collapse:collapse}.pc-top td,.pc-top th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.pc details{margin:4px 0}.pc summary{cursor:pointer;font-family:ui-monospace,Menlo,Consolas,monospace}
"""


# --- COHERE notes and the source they point at -----------------------------------------------------
def function_source(file: str, function: str) -> tuple[int, list[str]]:
    """(first line, source lines) of the function ``function`` in package file ``file`` (its first
    definition, methods included)."""
    source = (PACKAGE / file).read_text(encoding="utf-8")
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return start, lines[start - 1:node.end_lineno]
    raise InputError(f"{file} has no function {function!r}")  # pragma: no cover - notes come from the same files


def source_anchor(note: Note) -> str:
    return "src-" + note.file.replace("/", "-").replace(".py", "") + "-" + (note.function or "module")


def notes_html(notes: list[Note]) -> str:
    """Every note with a link to the embedded source of the function that implements it."""
    items, sources, seen = [], [], set()
    for note in notes:
        anchor = source_anchor(note)
        where = f"{note.file}:{note.line}"
        target = f"{note.function}()" if note.function else "module level"
        items.append(f'<li><b>COHERE:</b> {F.esc(note.text)} <a href="#{anchor}">{F.esc(target)}</a> '
                     f'<span class="pc-meta">pycohere/{F.esc(where)}</span></li>')
        if anchor in seen or not note.function:
            continue
        seen.add(anchor)
        start, lines = function_source(note.file, note.function)
        marked = {n.line for n in notes if source_anchor(n) == anchor}
        body = "\n".join(f'<span class="pc-hl">{k:4d}  {F.esc(s)}</span>' if k in marked else f"{k:4d}  {F.esc(s)}"
                         for k, s in enumerate(lines, start))
        sources.append(f'<details id="{anchor}"><summary>pycohere/{F.esc(note.file)}: {F.esc(note.function)} '
                       f'(line {start})</summary><pre class="pc-src">{body}</pre></details>')
    return (f'<ul class="pc-notes">{"".join(items)}</ul><h3>The functions, as the package runs them</h3>'
            f'{"".join(sources)}')


# --- the report ------------------------------------------------------------------------------------
class Report(F.Figure):
    """Sections (id, heading, html) of one page; ``document()`` is the standalone page, ``save(path)``
    writes it, and ``_repr_html_`` shows the same sections in a notebook."""

    def __init__(self, title: str, header: str, sections: list[tuple[str, str, str]]):
        self.title, self.header, self.sections = title, header, sections

    def html(self) -> str:
        nav = "".join(f'<a href="#{sid}">{F.esc(head)}</a>' for sid, head, _ in self.sections)
        body = "".join(f'<section id="{sid}"><h2>{F.esc(head)}</h2>{content}</section>'
                       for sid, head, content in self.sections)
        return f"{self.header}<nav>{nav}</nav>{body}"

    def document(self) -> str:
        return F.document(self.title, f"<style>{EXTRA_CSS}</style>{self.html()}", SCRIPT)

    def _repr_html_(self) -> str:
        return f'<div class="pc"><style>{F.CSS}{EXTRA_CSS}</style>{self.html()}</div>'

    def save(self, path) -> Path:
        """Write the page to ``path`` (through a temporary file beside it, so a failed write leaves nothing)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise InputError(f"cannot write the report to {path}: the folder {path.parent} does not exist; create "
                             "it or choose another path")
        tmp = path.with_name(path.name + ".part")
        try:
            tmp.write_text(self.document(), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise InputError(f"cannot write the report to {path}: {e.strerror or e}; nothing was written") from None
        return path


def _prediction_html(logits: np.ndarray, tokenizer, k: int) -> str:
    ids, probs = A.top_tokens(logits, k)
    rows = "".join(f"<tr><td>{r + 1}</td><td><span class='pc-tok'>{F.esc(F.piece(int(i), tokenizer))}</span></td>"
                   f"<td>{int(i)}</td><td>{p:.4f}</td><td>{float(logits[i]):+.4f}</td></tr>"
                   for r, (i, p) in enumerate(zip(ids, probs)))
    return ("<table class='pc-top'><tr><th>rank</th><th>token</th><th>id</th><th>probability</th><th>logit</th></tr>"
            f"{rows}</table>")


def _attention_controls(layers: list[int], heads: list[int]) -> str:
    lo = "".join(f'<option value="{i}">layer {i}</option>' for i in layers)
    ho = "".join(f'<option value="{h}">head {h}</option>' for h in heads)
    return (f'<p><label>show <select id="pc-attn-layer"><option value="all">all layers</option>{lo}</select></label> '
            f'<label><select id="pc-attn-head"><option value="all">all heads</option>{ho}</select></label> '
            '<span class="pc-meta">(hover a cell for query, key and weight)</span></p>')


def build_report(model, ids, tokenizer=None, *, layers=None, heads=None, top_k: int = 5, corrupted_ids=None,
                 name: str | None = None, max_cells: int = 300_000) -> Report:
    """The report of one prompt ``ids`` (token ids, (T,) or (1, T)) through ``model`` (a CausalLM).

    layers / heads: which attention maps to draw (default all; past ``max_cells`` cells the mean over
    heads is drawn). corrupted_ids: a prompt of the same length for an activation-patching sweep of the
    residual stream (len(layers) x T extra forward passes). The logit lens always covers every layer.
    """
    ids = A.single_prompt(ids, "ids")
    cfg = model.config
    n = cfg.num_hidden_layers
    layers = list(range(n)) if layers is None else list(layers)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise InputError(f"layers {bad} out of range: this model has layers 0..{n - 1}")
    bad = [h for h in (heads or []) if not 0 <= h < cfg.num_attention_heads]
    if bad:
        raise InputError(f"heads {bad} out of range: this model has heads 0..{cfg.num_attention_heads - 1}")
    out, cache = model.run_with_cache(ids)
    labels = F.token_labels(ids[0], tokenizer)
    name = name or str(getattr(getattr(model, "probe", None), "path", "") or "model")
    dtype = np.dtype(model.dtype).name
    prompt = tokenizer.decode(ids[0].tolist()) if tokenizer is not None else " ".join(map(str, ids[0]))
    kinds = [F.layer_kind(model, i)[1] for i in range(n)]
    summary = ", ".join(f"{k}: {kinds.count(k)}" for k in dict.fromkeys(kinds))
    header = (f"<h1>pycohere report: {F.esc(Path(name).name or name)}</h1>"
              f"<p class='pc-meta'>{F.esc(name)} · {cfg.model_type}, {n} layers, D {cfg.hidden_size}, H "
              f"{cfg.num_attention_heads} / K {cfg.num_key_value_heads} heads of Dh {cfg.get_head_dim()}, V "
              f"{cfg.vocab_size}, logit_scale {cfg.logit_scale} · {dtype}, backend {model.backend} · layers: "
              f"{F.esc(summary)} · pycohere {__version__}</p>")
    sections = [
        ("tokens", "Prompt", f"<p>{F.esc(prompt)}</p>" + F.Tokens(labels, ids[0]).html()),
        ("prediction", "Next token", f"<p>After position {ids.shape[1] - 1}:</p>"
         + _prediction_html(out.logits[0, -1], tokenizer, top_k)),
        ("logit-lens", "Logit lens", F.lens_figure(model, cache, labels, tokenizer, ids[0], top_k).html()
         + F.lens_answer_figure(model, cache, tokenizer).html()),
        ("attention", "Attention", _attention_controls(layers, heads if heads is not None else
                                                      list(range(cfg.num_attention_heads)))
         + F.attention_figure(model, cache, labels, layers, heads, max_cells=max_cells).html()
         + F.entropy_figure(model, cache).html()),
        ("norms", "Norms", F.norms_figure(cache).html()),
        ("attribution", "Direct logit attribution", F.attribution_figure(model, cache, tokenizer).html()),
    ]
    if corrupted_ids is not None:
        result = A.activation_patching(model, ids, corrupted_ids)
        corrupted = F.Tokens(F.token_labels(A.single_prompt(corrupted_ids, "corrupted_ids")[0], tokenizer))
        sections.append(("patching", "Activation patching", "<p>Corrupted prompt:</p>" + corrupted.html()
                         + F.patching_figure(result, labels, tokenizer).html()))
    sections.append(("cohere", "Where Cohere differs from Llama", notes_html(cohere_notes())))
    return Report(f"pycohere report: {Path(name).name or name}", header, sections)


def write_report(model, ids, path, tokenizer=None, **options) -> Path:
    """``build_report(model, ids, tokenizer, **options).save(path)``."""
    return build_report(model, ids, tokenizer, **options).save(path)
