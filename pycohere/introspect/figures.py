"""Figures of a forward pass as plain HTML and inline SVG: no plotting library, no JavaScript, no network.

Each figure is an object with ``html()`` (a fragment), ``_repr_html_()`` (the fragment with its CSS, which
is what Jupyter displays; pycohere does not depend on Jupyter) and ``save(path)`` (a standalone page).
The builders at the end (``attention_figure``, ``lens_figure``, ...) make them from a model and the cache
of ``model.run_with_cache``; ``pycohere.introspect.report`` puts them on one page.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from . import analysis as A

# One stylesheet for every figure (class names start with pc- so they do not clash inside a notebook).
CSS = """
.pc{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222}
.pc h3{font-size:14px;margin:12px 0 4px}
.pc figure{margin:8px 0 16px}
.pc figcaption{color:#555;font-size:12px;max-width:60em}
.pc-tok{display:inline-block;margin:2px;padding:1px 4px;border:1px solid #bbb;border-radius:3px;
 font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
.pc-tok sub{color:#888;font-size:9px;margin-left:2px}
.pc-grid{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:flex-start}
.pc-layer{border-top:1px solid #ddd;padding-top:6px;margin-top:6px}
.pc-kind{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;margin-left:6px}
.pc-sliding{background:#e3f0fb;color:#0b4f8a}.pc-full{background:#fdebd3;color:#8a4b0b}
.pc-causal{background:#eee;color:#444}
.pc table.pc-lens{border-collapse:collapse;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px}
.pc-lens th,.pc-lens td{border:1px solid #ddd;padding:2px 4px;text-align:center;white-space:pre}
.pc-lens th{background:#f6f6f6;font-weight:600}
.pc-lens td.pc-final{outline:2px solid #d62728;outline-offset:-2px}
.pc svg text{font:10px ui-monospace,Menlo,Consolas,monospace;fill:#333}
.pc svg .pc-title{font:600 11px system-ui,sans-serif}
.pc-notes li{margin:4px 0}
.pc-src{font:11px/1.35 ui-monospace,Menlo,Consolas,monospace;background:#f7f7f7;padding:6px;overflow:auto}
.pc-src .pc-hl{background:#fff3b0}
"""
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def document(title: str, body: str, script: str = "") -> str:
    """A standalone page. The Content-Security-Policy forbids every fetch (scripts, styles, images, fonts,
    frames) except the inline ones and data: images, so the page cannot reach the network even by mistake."""
    csp = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
    js = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
            f'<body class="pc">\n{body}\n{js}</body></html>\n')


class Figure:
    """Base class: subclasses implement ``html()``."""

    title = "pycohere figure"

    def html(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return f'<div class="pc"><style>{CSS}</style>{self.html()}</div>'

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(document(self.title, self.html()), encoding="utf-8")
        return path


# --- colours ---------------------------------------------------------------------------------------
def sequential(v: float) -> str:
    """0 -> white, 1 -> dark blue (ColorBrewer Blues end points)."""
    v = min(1.0, max(0.0, float(v))) if np.isfinite(v) else 0.0
    r, g, b = (round(255 + (c - 255) * v) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def diverging(v: float) -> str:
    """-1 -> red, 0 -> white, +1 -> blue (ColorBrewer RdBu end points)."""
    v = min(1.0, max(-1.0, float(v))) if np.isfinite(v) else 0.0
    end = (33, 102, 172) if v >= 0 else (178, 24, 43)
    r, g, b = (round(255 + (c - 255) * abs(v)) for c in end)
    return f"#{r:02x}{g:02x}{b:02x}"


def text_colour(fill: str) -> str:
    r, g, b = (int(fill[i:i + 2], 16) for i in (1, 3, 5))
    return "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#222"


# --- SVG primitives --------------------------------------------------------------------------------
def _short(label: str, n: int = 10) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


def svg_heatmap(values: np.ndarray, rows: list[str], cols: list[str], *, title: str = "", cell: int = 14,
                vmin: float = 0.0, vmax: float = 1.0, diverge: bool = False, tips=None, fmt: str = "{:.3f}",
                row_labels: bool = True, col_labels: bool = True) -> str:
    """values (R, C) as coloured cells with row and column labels; hovering a cell shows ``tips[i][j]``
    (default: 'row -> col: value'). NaN cells are left empty."""
    values = np.asarray(values, dtype=np.float64)
    R, C = values.shape
    left = 8 + 6.2 * max([len(_short(r)) for r in rows] + [0]) if row_labels else 4
    # column labels rotated by 65 degrees: sin 65 of their length above the cells, cos 65 to the right
    longest = 6.2 * max([len(_short(c)) for c in cols] + [0]) if col_labels else 0
    top = (20 if title else 4) + (0.91 * longest + 6 if col_labels else 0)
    right = 4 + 0.42 * longest
    width, height = max(left + C * cell + right, left + 6.6 * len(title)), top + R * cell + 4
    out = [f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img">']
    if title:
        out.append(f'<text class="pc-title" x="{left:.0f}" y="13">{esc(title)}</text>')
    if col_labels:
        for j, c in enumerate(cols):
            x, y = left + j * cell + cell / 2 + 3, top - 4
            out.append(f'<text x="{x:.1f}" y="{y:.1f}" transform="rotate(-65 {x:.1f} {y:.1f})">{esc(_short(c))}</text>')
    if row_labels:
        for i, r in enumerate(rows):
            out.append(f'<text x="{left - 4:.0f}" y="{top + i * cell + cell * 0.72:.1f}" text-anchor="end">'
                       f"{esc(_short(r))}</text>")
    span = (vmax - vmin) or 1.0
    for i in range(R):
        for j in range(C):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            fill = diverging(v / max(abs(vmin), abs(vmax), 1e-30)) if diverge else sequential((v - vmin) / span)
            tip = tips[i][j] if tips is not None else f"{rows[i]} \u2192 {cols[j]}: {fmt.format(v)}"
            out.append(f'<rect x="{left + j * cell:.0f}" y="{top + i * cell:.0f}" width="{cell}" height="{cell}" '
                       f'fill="{fill}"><title>{esc(tip)}</title></rect>')
    out.append(f'<rect x="{left:.0f}" y="{top:.0f}" width="{C * cell}" height="{R * cell}" fill="none" '
               'stroke="#999" stroke-width="0.5"/></svg>')
    return "".join(out)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not np.isfinite(lo) or not np.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** np.floor(np.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = np.floor(lo / step) * step
    return [float(round(first + k * step, 12)) for k in range(int(np.ceil((hi - first) / step + 1e-9)) + 1)]


def _axes(ticks, x0, x1, y_of, y_label) -> list[str]:
    out = []
    for t in ticks:
        y = y_of(t)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{x0 - 4}" y="{y + 3:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="12" y="{(y_of(ticks[0]) + y_of(ticks[-1])) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 12 {(y_of(ticks[0]) + y_of(ticks[-1])) / 2:.0f})">{esc(y_label)}</text>')
    return out


def _chart(series: dict, width: int, height: int, title: str, y_label: str):
    """The frame of a chart whose y range covers every series and 0: (svg parts so far, plot box
    (x0, x1, y0, y1), value -> y)."""
    x0, x1, y0, y1 = 58, width - 12, 24, height - 58
    values = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in series.values()] + [np.zeros(0)])
    values = values[np.isfinite(values)]
    ticks = nice_ticks(float(min(values.min(), 0.0)) if values.size else 0.0,
                       float(max(values.max(), 0.0)) if values.size else 1.0)
    lo, hi = ticks[0], ticks[-1]

    def y_of(v):
        return y1 - (y1 - y0) * (v - lo) / ((hi - lo) or 1.0)
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    if title:
        out.append(f'<text class="pc-title" x="{x0}" y="14">{esc(title)}</text>')
    return out + _axes(ticks, x0, x1, y_of, y_label), (x0, x1, y0, y1), y_of


def svg_lines(series: dict[str, np.ndarray], x_labels: list[str], *, title: str = "", y_label: str = "",
              width: int = 440, height: int = 230, fmt: str = "{:.3f}") -> str:
    """Line chart of each series (name -> values over x_labels), with points that show their value on hover."""
    out, (x0, x1, _, y1), y_of = _chart(series, width, height, title, y_label)
    n = max(1, len(x_labels) - 1)
    x_of = lambda k: x0 + (x1 - x0) * k / n                                          # noqa: E731
    for k, label in enumerate(x_labels):
        out.append(f'<text x="{x_of(k):.1f}" y="{y1 + 14}" text-anchor="middle">{esc(_short(label, 8))}</text>')
    for s, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        pts = [(x_of(k), y_of(v), v) for k, v in enumerate(np.asarray(values, dtype=np.float64)) if np.isfinite(v)]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                   f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts)}"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>{esc(name)} at '
                f'{esc(x_labels[k])}: {fmt.format(v)}</title></circle>' for k, (x, y, v) in enumerate(pts)]
        ly = y1 + 30 + 12 * (s // 3)
        lx = x0 + 130 * (s % 3)
        out.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{lx + 14}" y="{ly + 1}">{esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_bars(groups: list[str], series: dict[str, np.ndarray], *, title: str = "", y_label: str = "",
             width: int = 520, height: int = 240, fmt: str = "{:+.4f}") -> str:
    """Grouped bars (one group per label, one bar per series) around a zero line."""
    out, (x0, x1, _, y1), y_of = _chart(series, width, height, title, y_label)
    gw = (x1 - x0) / max(1, len(groups))
    bw = gw * 0.8 / max(1, len(series))
    for g, label in enumerate(groups):
        out.append(f'<text x="{x0 + gw * (g + 0.5):.1f}" y="{y1 + 14}" text-anchor="middle">{esc(_short(label, 9))}</text>')
    for s, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        for g, v in enumerate(np.asarray(values, dtype=np.float64)):
            if not np.isfinite(v):
                continue
            x = x0 + gw * g + gw * 0.1 + bw * s
            top, bottom = sorted((y_of(v), y_of(0.0)))
            out.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{bw:.1f}" height="{max(bottom - top, 0.5):.1f}" '
                       f'fill="{colour}"><title>{esc(name)}, {esc(groups[g])}: {fmt.format(v)}</title></rect>')
        lx = x0 + 130 * s
        out.append(f'<rect x="{lx}" y="{y1 + 22}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{lx + 14}" y="{y1 + 31}">{esc(name)}</text>')
    out.append(f'<line x1="{x0}" y1="{y_of(0.0):.1f}" x2="{x1}" y2="{y_of(0.0):.1f}" stroke="#666"/></svg>')
    return "".join(out)


# --- figures ---------------------------------------------------------------------------------------
def _caption(text: str) -> str:
    return f"<figcaption>{esc(text)}</figcaption>" if text else ""


class Tokens(Figure):
    """The prompt's tokens, each with its position."""

    title = "tokens"

    def __init__(self, labels: list[str], ids=None):
        self.labels, self.ids = list(labels), None if ids is None else [int(i) for i in ids]

    def html(self) -> str:
        spans = []
        for t, label in enumerate(self.labels):
            tip = f"position {t}" + (f", id {self.ids[t]}" if self.ids is not None else "")
            spans.append(f'<span class="pc-tok" title="{esc(tip)}">{esc(label)}<sub>{t}</sub></span>')
        return f'<div class="pc-tokens">{"".join(spans)}</div>'


class Heatmap(Figure):
    """A matrix as a heatmap (``svg_heatmap``) with a caption."""

    def __init__(self, values, rows, cols, title: str = "", caption: str = "", **options):
        self.values, self.rows, self.cols, self.title = np.asarray(values), list(rows), list(cols), title or "heatmap"
        self.caption, self.options = caption, options

    def html(self) -> str:
        return (f"<figure>{svg_heatmap(self.values, self.rows, self.cols, title=self.title, **self.options)}"
                f"{_caption(self.caption)}</figure>")


class LinePlot(Figure):
    def __init__(self, series: dict, x_labels, title: str = "", y_label: str = "", caption: str = "", **options):
        self.series, self.x_labels, self.title, self.y_label = series, list(x_labels), title or "plot", y_label
        self.caption, self.options = caption, options

    def html(self) -> str:
        return (f"<figure>{svg_lines(self.series, self.x_labels, title=self.title, y_label=self.y_label, **self.options)}"
                f"{_caption(self.caption)}</figure>")


class BarPlot(Figure):
    def __init__(self, groups, series: dict, title: str = "", y_label: str = "", caption: str = "", **options):
        self.groups, self.series, self.title, self.y_label = list(groups), series, title or "bars", y_label
        self.caption, self.options = caption, options

    def html(self) -> str:
        return (f"<figure>{svg_bars(self.groups, self.series, title=self.title, y_label=self.y_label, **self.options)}"
                f"{_caption(self.caption)}</figure>")


class Group(Figure):
    """Several figures side by side."""

    def __init__(self, figures: list[Figure], title: str = ""):
        self.figures, self.title = list(figures), title or "figures"

    def html(self) -> str:
        return f'<div class="pc-grid">{"".join(f.html() for f in self.figures)}</div>'


def layer_kind(model, layer: int) -> tuple[str, str]:
    """(css class, label) of a layer's attention, from the flags the forward itself reads
    (``LayerParams.sliding_window`` / ``use_rope``, set by the model from the config)."""
    p = model.params.layers[layer]
    if p.sliding_window is not None:
        return "pc-sliding", f"sliding window {p.sliding_window}, RoPE"
    if getattr(model.config, "layer_types", None):
        return "pc-full", "full attention, " + ("RoPE" if p.use_rope else "NoPE (no positional encoding)")
    return "pc-causal", "causal attention, RoPE" if p.use_rope else "causal attention, no RoPE"


class AttentionMaps(Figure):
    """Attention probabilities per layer and head: row = query position, column = key position.

    probs: {layer: (H, T, S)} for one prompt; kinds: {layer: (css class, label)}; heads: which heads
    (default all); ``mean_only`` shows the mean over heads instead (large models, long prompts)."""

    title = "attention"

    def __init__(self, probs: dict, labels: list[str], kinds: dict, heads=None, mean_only: bool = False):
        self.probs, self.labels, self.kinds, self.heads, self.mean_only = probs, list(labels), kinds, heads, mean_only

    def html(self) -> str:
        out = []
        for layer, p in self.probs.items():
            cls, label = self.kinds[layer]
            T, S = p.shape[1:]
            cell = int(max(5, min(16, 300 // max(T, S))))
            keys = self.labels[-S:] if S <= len(self.labels) else [str(s) for s in range(S)]
            panels = []
            heads = [("mean over heads", p.mean(0))] if self.mean_only else \
                [(f"head {h}", p[h]) for h in (range(p.shape[0]) if self.heads is None else self.heads)]
            for h, (name, m) in enumerate(heads):
                head_id = "mean" if self.mean_only else str(list(range(p.shape[0]) if self.heads is None else self.heads)[h])
                tips = [[f"layer {layer} {name}: {self.labels[t]!s} [{t}] \u2192 {keys[s]!s} [{s}]: {m[t, s]:.3f}"
                         for s in range(S)] for t in range(T)]
                svg = svg_heatmap(m, self.labels, keys, title=name, cell=cell, tips=tips, row_labels=h == 0,
                                  col_labels=True)
                panels.append(f'<div class="pc-head" data-layer="{layer}" data-head="{head_id}">{svg}</div>')
            out.append(f'<div class="pc-layer" data-layer="{layer}"><h3>layer {layer}'
                       f'<span class="pc-kind {cls}">{esc(label)}</span></h3>'
                       f'<div class="pc-grid">{"".join(panels)}</div></div>')
        return "".join(out)


class LensTable(Figure):
    """The logit lens as a table: a row per residual x(l) (the embeddings, then after each layer), a column
    per position; each cell the lens's top token (shaded by its probability; hover: the top k). Cells whose
    top token is the model's final prediction at that position are outlined."""

    title = "logit lens"

    def __init__(self, ids: np.ndarray, probs: np.ndarray, labels: list[str], pieces, rows: list[str],
                 truth=None):
        # ids, probs (R, T, k); pieces: id -> display string; truth (T,) the prompt's next token or -1
        self.ids, self.probs, self.labels, self.pieces, self.rows = ids, probs, list(labels), pieces, list(rows)
        self.truth = truth

    def html(self) -> str:
        R, T, k = self.ids.shape
        final = self.ids[-1, :, 0]
        head = "".join(f"<th title='position {t}'>{esc(self.labels[t])}<br><small>{t}</small></th>" for t in range(T))
        body = []
        for r in range(R):
            cells = []
            for t in range(T):
                top, p = int(self.ids[r, t, 0]), float(self.probs[r, t, 0])
                fill = sequential(p)
                tip = f"{self.rows[r]}, position {t}: " + ", ".join(
                    f"{self.pieces(int(i))} {q:.3f}" for i, q in zip(self.ids[r, t], self.probs[r, t]))
                cls = ' class="pc-final"' if top == final[t] else ""
                cells.append(f'<td{cls} style="background:{fill};color:{text_colour(fill)}" title="{esc(tip)}">'
                             f"{esc(_short(self.pieces(top), 12))}</td>")
            body.append(f"<tr><th>{esc(self.rows[r])}</th>{''.join(cells)}</tr>")
        if self.truth is not None:
            nxt = "".join(f"<td>{esc(_short(self.pieces(int(i)), 12)) if i >= 0 else ''}</td>" for i in self.truth)
            body.append(f"<tr><th>next in prompt</th>{nxt}</tr>")
        return (f'<figure><table class="pc-lens"><thead><tr><th>residual \\ position</th>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table>"
                "<figcaption>Each cell: the most likely next token if the residual stream stopped at that row, put "
                "through the final LayerNorm and the tied head times logit_scale (once). Shade: its probability. "
                "Outlined: the model's final prediction at that position. Hover a cell for the top "
                f"{k}.</figcaption></figure>")


# --- builders from a model and a cache -------------------------------------------------------------
def token_labels(ids, tokenizer=None) -> list[str]:
    """Readable token pieces: spaces as '\u2423', newlines as '\u21b5', tabs as '\u21e5' ('#id' without a tokenizer)."""
    return [piece(int(i), tokenizer) for i in np.asarray(ids).ravel()]


def piece(token_id: int, tokenizer=None) -> str:
    if tokenizer is None:
        return f"#{token_id}"
    try:
        text = tokenizer.decode([int(token_id)])
    except Exception:  # a display nicety only: never fail a figure on an undecodable id
        return f"#{token_id}"
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or f"#{token_id}"


def attention_figure(model, cache: dict, labels: list[str], layers=None, heads=None, batch: int = 0,
                     max_cells: int = 300_000) -> AttentionMaps:
    """Heatmaps of ``layers.{l}.attn_probs``; past ``max_cells`` drawn cells the mean over heads is shown."""
    n = A.n_layers(cache)
    layers = list(range(n)) if layers is None else list(layers)
    probs = {i: A.require(cache, f"layers.{i}.attn_probs")[batch] for i in layers}
    shown = len(heads) if heads is not None else model.config.num_attention_heads
    cells = sum(shown * p.shape[1] * p.shape[2] for p in probs.values())
    return AttentionMaps(probs, labels, {i: layer_kind(model, i) for i in layers}, heads, mean_only=cells > max_cells)


def lens_figure(model, cache: dict, labels: list[str], tokenizer=None, ids=None, k: int = 5,
                batch: int = 0) -> LensTable:
    """The logit-lens table of every residual row (one layer at a time: a 256000-token vocabulary never
    needs more than one (T, V) array)."""
    rows = A.residual_stream(cache, model)
    top = [A.top_tokens(A.lens_logits(model, x[batch:batch + 1])[0], k) for x in rows]
    truth = None
    if ids is not None:
        ids = np.asarray(ids).ravel()
        truth = np.append(ids[1:], -1)
    names = ["embeddings"] + [f"after layer {i}" for i in range(len(rows) - 1)]
    return LensTable(np.stack([t[0] for t in top]), np.stack([t[1] for t in top]), labels,
                     lambda i: piece(i, tokenizer), names, truth)


def lens_answer_figure(model, cache: dict, tokenizer=None, position: int = -1, batch: int = 0) -> LinePlot:
    """Probability and rank of the model's final prediction at ``position``, read through the lens at
    each residual row: where the answer emerges."""
    rows = A.residual_stream(cache, model)
    lens = np.stack([A.lens_logits(model, x[batch, position]) for x in rows])   # (L+1, V)
    answer = int(cache["logits"][batch, position].argmax())
    logp = A.log_softmax(lens)
    rank = A.token_rank(lens, np.full(len(rows), answer))
    x = ["emb"] + [f"L{i}" for i in range(len(rows) - 1)]
    return LinePlot({"P(final answer)": np.exp(logp[:, answer]), "P(lens top token)": np.exp(logp.max(-1))}, x,
                    title=f"final answer {piece(answer, tokenizer)} through the lens", y_label="probability",
                    caption="At the last position: the lens probability of the model's final next token after the "
                    "embeddings (emb) and after each layer (Lk), and that of whatever token the lens ranks first "
                    "there. The answer's rank (0 = top): " +
                    ", ".join(f"{name} {int(r)}" for name, r in zip(x, rank)) + ".")


def norms_figure(cache: dict, batch: int = 0) -> Group:
    """Residual, attention and MLP norms per layer: at the last position, and the mean over positions."""
    n = A.norms(cache)
    L = n["attn_out"].shape[0]
    x = [f"L{i}" for i in range(L)]
    last = {"residual in": n["residual"][:-1, batch, -1], "attn_out": n["attn_out"][:, batch, -1],
            "mlp_out": n["mlp_out"][:, batch, -1], "residual out": n["residual"][1:, batch, -1]}
    mean = {k: v for k, v in zip(last, (n["residual"][:-1, batch].mean(-1), n["attn_out"][:, batch].mean(-1),
                                        n["mlp_out"][:, batch].mean(-1), n["residual"][1:, batch].mean(-1)))}
    return Group([LinePlot(last, x, "L2 norms at the last position", "norm",
                           "What each layer reads (residual in), what its two parallel branches add, and what it "
                           "passes on (residual out)."),
                  LinePlot(mean, x, "L2 norms, mean over positions", "norm")], "norms")


def entropy_figure(model, cache: dict, batch: int = 0) -> Heatmap:
    """Attention entropy (nats) per layer and head at the last position."""
    e = A.attention_entropy(cache)[:, batch, :, -1]                            # (L, H)
    T = cache["embed_tokens"].shape[1]
    return Heatmap(e, [f"layer {i}" for i in range(e.shape[0])], [f"h{h}" for h in range(e.shape[1])],
                   title="attention entropy at the last position (nats)", cell=18, vmin=0.0,
                   vmax=float(np.log(T)) if T > 1 else 1.0, fmt="{:.3f}",
                   caption=f"0: the head looks at one key; log({T}) = {np.log(T):.3f}: evenly at every key.")


def attribution_figure(model, cache: dict, tokenizer=None, position: int = -1, batch: int = 0) -> BarPlot:
    """Direct logit attribution of the final prediction at ``position``, per layer: attention vs MLP."""
    att = A.direct_logit_attribution(model, cache)
    attn, mlp = att.layer_terms()
    token = int(att.tokens[batch, position, 0])
    total = float(att.terms[:, batch, position, 0].sum())
    logit = float(att.logits[batch, position, 0])
    x = [f"L{i}" for i in range(attn.shape[0])]
    return BarPlot(["emb"] + x, {"attention": np.r_[np.nan, attn[:, batch, position, 0]],
                                 "MLP": np.r_[np.nan, mlp[:, batch, position, 0]],
                                 "embeddings": np.r_[att.terms[0, batch, position, 0], [np.nan] * len(x)]},
                   title=f"direct logit attribution of {piece(token, tokenizer)}", y_label="logit",
                   caption="Each bar: what that component writes along the token's unembedding direction, through "
                   "the final LayerNorm with its scale frozen at this run (exact: the terms sum to the logit). "
                   f"Sum of the terms {total:.6f}; the model's logit {logit:.6f}.")


def patching_figure(result: A.Patching, labels: list[str], tokenizer=None) -> Heatmap:
    """An activation-patching sweep as a layer x position heatmap of the normalised effect."""
    L = result.effect.shape[0]
    return Heatmap(result.effect, [f"layer {i}" for i in range(L)], labels,
                   title=f"activation patching of layers.*.{result.site}", cell=20, vmin=-1.0, vmax=1.0,
                   diverge=True, fmt="{:+.3f}",
                   caption=f"Corrupted prompt, with one activation (layer, position) taken from the clean run. "
                   f"1: restores the clean logit difference {piece(result.answer, tokenizer)} vs "
                   f"{piece(result.foil, tokenizer)} ({result.clean:.3f}); 0: leaves the corrupted one "
                   f"({result.corrupted:.3f}).")
