#!/usr/bin/env python
"""Draw docs/architecture.png (Command-R / Cohere2 block diagram) and keep docs/architecture.md's code
links on the right lines.

    python tools/draw_architecture.py                 # writes docs/architecture.png
    python tools/draw_architecture.py --update-links  # re-points [`name`](../pycohere/x.py#Ln) links

Dev-only: needs matplotlib (``pip install matplotlib``); the pycohere package never imports it. The
PNG is written without a timestamp or software tag, so re-running on the same matplotlib version gives
the same bytes.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PNG = ROOT / "docs" / "architecture.png"

# colours: one per kind of operation, and red for the places Cohere differs from Llama
NORM, PROJ, ATTN, MLP, IO, COHERE = "#dbe9f6", "#fdf2d0", "#e4f3e0", "#f3e3f3", "#eeeeee", "#c0392b"


def box(ax, x, y, w, text, color, tap=None, note=None, fontsize=8.5):
    """A rounded box centred at (x, y): the formula, then the tap names (grey) and the COHERE note (red)
    as smaller lines inside it. Returns (top, bottom) y for arrows."""
    from matplotlib.patches import FancyBboxPatch
    extra = [(t, c, f) for t, c, f in ((tap, "#666666", "monospace"), (note, COHERE, None)) if t]
    h = 0.34 + 0.2 * len(extra)
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="#555555", lw=1))
    top = y + h / 2
    ax.text(x, top - 0.19, text, ha="center", va="center", fontsize=fontsize)
    for k, (t, c, f) in enumerate(extra):
        ax.text(x, top - 0.4 - 0.2 * k, t, ha="center", va="center", fontsize=6.8, color=c, family=f)
    return top + 0.02, y - h / 2 - 0.02


def arrow(ax, x0, y0, x1, y1, color="#333333"):
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1, shrinkA=0, shrinkB=0))


def chain(ax, x, boxes):
    """Boxes stacked at x with arrows between consecutive ones; returns their (top, bottom) pairs."""
    ends = [box(ax, x, *b[:-1], **b[-1]) for b in boxes]
    for (_, bottom), (top, _) in zip(ends, ends[1:]):
        arrow(ax, x, bottom, x, top)
    return ends


def draw(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(11, 13))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 13)
    ax.axis("off")
    ax.text(5.5, 12.75, "Command-R family (transformers 'cohere' / 'cohere2'): one forward pass",
            ha="center", fontsize=13, weight="bold")
    ax.text(5.5, 12.45, "grey: golden-bundle tap names     red: where Cohere differs from Llama (# COHERE: in the code)",
            ha="center", fontsize=8, color="#555555")

    cx, ax_, mx = 4.3, 2.15, 6.45
    (t_in, b_in), (t_emb, b_emb) = chain(ax, cx, [
        (12.0, 3.2, "input ids  (T,)", IO, {}),
        (11.3, 3.2, "x = E[ids]   (T, D)", IO, {"tap": "embed_tokens"})])

    ax.add_patch(Rectangle((0.05, 3.0), 8.2, 7.85, fill=False, ls="--", ec="#888888"))
    ax.text(8.15, 10.62, "decoder layer i  (x N)", fontsize=10, weight="bold", color="#444444", ha="right")
    t_ln, b_ln = box(ax, cx, 10.05, 4.0, "h = LayerNorm(x): mean-centred, no bias", NORM, tap="input_layernorm",
                     note="LayerNorm, not RMSNorm; one norm feeds both branches")
    arrow(ax, cx, b_emb, cx, t_ln)

    attn = chain(ax, ax_, [
        (9.0, 3.6, "q, k, v = h Wq^T, h Wk^T, h Wv^T", PROJ, {"tap": "q, k, v"}),
        (8.05, 3.6, "per-head LayerNorm of q, k over Dh", NORM,
         {"tap": "q_normed, k_normed", "note": "only with use_qk_norm (Command R+)"}),
        (6.95, 3.6, "RoPE: rotate pairs (2i, 2i+1)", NORM,
         {"tap": "q_rope, k_rope", "note": "interleaved, not halves; Cohere2: sliding layers only"}),
        (5.85, 3.6, "p = softmax(q k^T / sqrt(Dh) + mask)", ATTN,
         {"tap": "attn_probs   (GQA: head h reads kv head h // (H/K))"}),
        (4.85, 3.6, "a = (p v) Wo^T", PROJ, {"tap": "attn_context, attn_out"})])
    mlp = chain(ax, mx, [
        (9.0, 2.9, "g = h Wg^T,  u = h Wu^T", PROJ, {"tap": "mlp_gate, mlp_up"}),
        (6.95, 2.9, "silu(g) * u   (or exact gelu)", MLP, {"tap": "mlp_act"}),
        (4.85, 2.9, "m = (silu(g) * u) Wd^T", PROJ, {"tap": "mlp_out"})])
    arrow(ax, cx - 0.7, b_ln, ax_, attn[0][0])
    arrow(ax, cx + 0.7, b_ln, mx, mlp[0][0])

    t_out, b_out = box(ax, cx, 3.6, 3.6, "x + a + m", IO, tap="output",
                       note="parallel residual (Llama: two norms, sequential)")
    arrow(ax, ax_, attn[-1][1], cx - 0.6, t_out)
    arrow(ax, mx, mlp[-1][1], cx + 0.6, t_out)
    ax.plot([cx, 0.25, 0.25], [10.75, 10.75, 3.6], color="#999999", lw=1)
    arrow(ax, 0.25, 3.6, cx - 1.8, 3.6, color="#999999")
    ax.text(0.32, 3.8, "residual x", fontsize=7, color="#999999")

    t_n, b_n = box(ax, cx, 2.45, 3.2, "h = LayerNorm(x)", NORM, tap="norm")
    arrow(ax, cx, b_out, cx, t_n)
    t_l, b_l = box(ax, cx, 1.45, 4.0, "logits = (h E^T) x logit_scale", IO, tap="logits",
                   note="tied embedding E; logit_scale (Command-R 0.0625)")
    arrow(ax, cx, b_n, cx, t_l)
    t_v, _ = box(ax, cx, 0.55, 3.2, "(T, V)", IO)
    arrow(ax, cx, b_l, cx, t_v)

    x0, y0 = 8.55, 10.3
    ax.text(x0, y0 + 0.3, "Cohere2 layer types", fontsize=10, weight="bold")
    ax.text(x0, y0, "pattern 4: full iff (i+1) % 4 == 0", fontsize=7)
    for i in range(8):
        full = (i + 1) % 4 == 0
        y = y0 - 0.45 - i * 0.38
        ax.add_patch(Rectangle((x0, y - 0.15), 0.3, 0.3, fc="#f5b7b1" if full else "#aed6f1", ec="#555555"))
        ax.text(x0 + 0.42, y, f"{i}: " + ("full, NoPE, causal" if full else "sliding, RoPE, window"),
                fontsize=7, va="center")
    for k, line in enumerate(["sliding mask: q - kv < window", "per-layer KV caches: sliding", "layers keep window - 1 tokens"]):
        ax.text(x0, y0 - 3.65 - k * 0.2, line, fontsize=7)
    ax.text(x0, 5.9, "Shapes", fontsize=10, weight="bold")
    for k, line in enumerate(["T tokens, S keys, D hidden", "H query heads, K kv heads", "Dh head dim, F ffn, V vocab",
                              "q (T,H,Dh)  k, v (T,K,Dh)", "attn_probs (H,T,S)", "gate/up/act (T,F)"]):
        ax.text(x0, 5.6 - k * 0.22, line, fontsize=7, family="monospace")
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def update_links(doc: Path = DOC) -> int:
    """Re-point every [`name`](../pycohere/file.py#Ln) link at the current line of `def name` /
    `class name` in that file; returns how many links changed."""
    text = doc.read_text()
    changed = 0

    def fix(m):
        nonlocal changed
        name, path, line = m.group(1), m.group(2), int(m.group(3))
        short = name.split(".")[-1]
        lines = (ROOT / path).read_text().splitlines()
        hits = [i + 1 for i, s in enumerate(lines) if re.match(rf"\s*(def|class) {short}\b", s)]
        if not hits:
            sys.exit(f"{doc}: link to `{name}` but {path} has no def/class {short}")
        new = min(hits, key=lambda n: abs(n - line))
        changed += new != line
        return f"[`{name}`](../{path}#L{new})"

    text = re.sub(r"\[`([\w.]+)`\]\(\.\./(pycohere/[\w/]+\.py)#L(\d+)\)", fix, text)
    doc.write_text(text)
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update-links", action="store_true", help="fix the line anchors of docs/architecture.md")
    ap.add_argument("-o", "--output", type=Path, default=PNG)
    args = ap.parse_args(argv)
    if args.update_links:
        print(f"{update_links()} link(s) updated in {DOC}")
        return 0
    draw(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
