"""The HTML report and figures (pycohere.introspect.report / figures): well-formed, self-contained (no URL
that could be fetched), every section present, and the numbers on the page the model's own: the lens table
against the model cut short by hooks, the heatmap cells against the cached attention, the attribution sum
against the logit. The page is also opened in headless Chromium (Debian's package): no console message,
the script ran, a screenshot."""
import re
import shutil
from collections import Counter
from html import unescape
from html.parser import HTMLParser

import numpy as np
import pytest

import pycohere
from pycohere.cli import explain as explain_cli
from pycohere.errors import InputError
from pycohere.introspect import analysis as A
from pycohere.introspect import figures as F
from pycohere.introspect.report import build_report, write_report

from conftest import DATA, ROOT
import report_screenshot  # tools/

QK = DATA / "parity" / "qk_norm"
C2 = DATA / "parity" / "cohere2_pattern4x"       # 4 layers: sliding (window 6), full, sliding, full
IDS = [5, 17, 33, 40, 9, 12, 8, 44]
SECTIONS = {"tokens", "prediction", "logit-lens", "attention", "norms", "attribution", "cohere"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
BLOCK = {"div", "p", "table", "figure", "section", "ul", "ol", "pre", "details", "h1", "h2", "h3", "nav", "svg"}
URL_ATTRS = {"href", "src", "action", "formaction", "poster", "xlink:href", "srcset", "data"}


class Page(HTMLParser):
    """Parses a page and records what the tests look at; ``problems`` lists every well-formedness error:
    a closing tag that closes nothing open, an element left open, a block inside a <p> (HTML would close
    the paragraph there), a duplicate id."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.problems, self.ids, self.elements = [], [], Counter(), []
        self.feed(text)
        self.close()
        self.problems += [f"<{t}> never closed" for t in self.stack]
        self.problems += [f"id {i!r} used {n} times" for i, n in self.ids.items() if n > 1]

    def _open(self, tag, attrs, push):
        a = dict(attrs)
        if tag in BLOCK and "p" in self.stack:
            self.problems.append(f"<{tag}> inside <p>")
        if "id" in a:
            self.ids[a["id"]] += 1
        self.elements.append((tag, a, list(self.stack)))
        if push and tag not in VOID:
            self.stack.append(tag)

    def handle_starttag(self, tag, attrs):
        self._open(tag, attrs, True)

    def handle_startendtag(self, tag, attrs):
        self._open(tag, attrs, False)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def find(self, tag, **attrs):
        return [a for t, a, _ in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def assert_self_contained(text: str) -> Page:
    page = Page(text)
    assert not page.problems, page.problems[:10]
    for tag, attrs, _ in page.elements:
        for name, value in attrs.items():
            if name in URL_ATTRS:
                assert value.startswith("#") or value.startswith("data:"), (tag, name, value)
    assert not re.search(r"(?i)https?:|//[a-z0-9.-]+\.[a-z]{2,}/|url\(|@import|<link|<iframe|<object|<embed", text)
    return page


def text_of(html: str, element_id: str) -> str:
    """The raw HTML of the element with ``id`` (up to its matching close tag)."""
    m = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"', html)
    assert m, element_id
    tag, depth, i = m.group(1), 0, m.start()
    for t in re.finditer(rf"<(/?){tag}\b[^>]*>", html[m.start():]):
        depth += -1 if t.group(1) else 1
        if depth == 0:
            return html[i:m.start() + t.end()]
    raise AssertionError(f"#{element_id} is not closed")


@pytest.fixture(scope="module")
def qk():
    return pycohere.AutoModelForCausalLM.from_pretrained(QK, dtype="float64")


@pytest.fixture(scope="module")
def c2():
    return pycohere.AutoModelForCausalLM.from_pretrained(C2, dtype="float32", backend="numba")


@pytest.fixture(scope="module")
def qk_page(qk):
    return build_report(qk, IDS, corrupted_ids=[5, 17, 33, 40, 9, 70, 8, 44]).document()


def test_report_is_well_formed_self_contained_and_complete(qk_page):
    page = assert_self_contained(qk_page)
    sections = {a["id"] for a in page.find("section")}
    assert sections == SECTIONS | {"patching"}
    assert {a["href"][1:] for a in page.find("a") if a["href"][1:] in sections} == sections  # the nav
    for a in page.find("a"):
        assert page.ids[a["href"][1:]] == 1, a   # every link lands on an element of the page
    csp = page.find("meta", **{"http-equiv": "Content-Security-Policy"})
    assert csp and "default-src 'none'" in csp[0]["content"]
    assert qk_page.count("<script>") == 1


def test_same_input_same_bytes(qk):
    assert build_report(qk, IDS).document() == build_report(qk, IDS).document()


def test_tokens_and_prediction(qk):
    html = build_report(qk, IDS, top_k=3).document()
    tokens = re.findall(r'<span class="pc-tok"[^>]*>([^<]*)<sub>(\d+)</sub>', text_of(html, "tokens"))
    assert tokens == [(f"#{i}", str(t)) for t, i in enumerate(IDS)]
    logits = qk(np.array([IDS])).logits[0, -1]
    rows = re.findall(r"<tr><td>(\d)</td><td><span class='pc-tok'>#(\d+)</span></td><td>\d+</td><td>([\d.]+)</td>",
                      text_of(html, "prediction"))
    want = np.argsort(-logits, kind="stable")[:3]
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [int(r[1]) for r in rows] == want.tolist()
    np.testing.assert_allclose([float(r[2]) for r in rows], p[want], atol=5e-5)


def test_lens_table_is_the_model_cut_short(qk):
    """Row 'after layer l', column t: the top token of the model whose later layers are silenced by hooks."""
    html = build_report(qk, IDS).document()
    table = text_of(html, "logit-lens")
    rows = re.findall(r"<tr><th>([^<]+)</th>(.*?)</tr>", table.split("<tbody>")[1])
    n = qk.config.num_hidden_layers
    names = [r[0] for r in rows]
    assert names == ["embeddings"] + [f"after layer {i}" for i in range(n)] + ["next in prompt"]
    ids = np.array([IDS])
    for r, (name, cells) in enumerate(rows[:-1]):
        zero = lambda a, nm: np.zeros_like(a)  # noqa: E731
        hooks = {f"layers.{i}.{op}": zero for i in range(r, n) for op in ("attn_out", "mlp_out")}
        cut = qk.run_with_cache(ids, names=["logits"], hooks=hooks)[0].logits[0]
        shown = [int(c) for c in re.findall(r">#(\d+)</td>", cells)]
        assert shown == cut.argmax(-1).tolist(), name
        outlined = re.findall(r'<td( class="pc-final")?', cells)
        final = qk(ids).logits[0].argmax(-1)
        assert [bool(o) for o in outlined] == (cut.argmax(-1) == final).tolist()
    assert re.findall(r"<td>#(\d+)</td>", rows[-1][1]) == [str(i) for i in IDS[1:]]


def test_attention_cells_are_the_cached_probabilities_and_cohere2_layers_are_labelled(c2):
    html = build_report(c2, IDS + [3, 70, 61, 23, 9, 12]).document()
    T = len(IDS) + 6
    _, cache = c2.run_with_cache(np.array([IDS + [3, 70, 61, 23, 9, 12]]))
    attention = text_of(html, "attention")
    pattern = 2  # config.json: sliding_window_pattern 2, sliding_window 6 -> layer i full iff (i + 1) % 2 == 0
    for i in range(4):
        label = re.search(rf'data-layer="{i}"><h3>layer {i}<span class="pc-kind [\w-]+">([^<]+)</span>', attention)
        want = "full attention, NoPE (no positional encoding)" if (i + 1) % pattern == 0 else "sliding window 6, RoPE"
        assert label and label.group(1) == want, (i, label and label.group(1))
        for h in (0, 3):
            block = re.search(rf'<div class="pc-head" data-layer="{i}" data-head="{h}">(.*?)</svg></div>', attention).group(1)
            cells = re.findall(r"\[(\d+)\] \u2192 [^\[]*\[(\d+)\]: ([\d.]+)</title>", block)
            assert len(cells) == T * T
            p = cache[f"layers.{i}.attn_probs"][0, h]
            for t, s, v in cells:
                assert abs(float(v) - p[int(t), int(s)]) <= 5e-4
            if (i + 1) % pattern:  # a sliding layer: keys 6 or more behind the query weigh exactly 0
                assert all(float(v) == 0 for t, s, v in cells if int(t) - int(s) >= 6)
    # the entropy heatmap, layer x head at the last position, from the same cache
    ent = A.attention_entropy(cache)[:, 0, :, -1]
    shown = re.findall(r"<title>layer (\d) \u2192 h(\d): ([\d.]+)</title>", attention)
    assert len(shown) == ent.size
    for i, h, v in shown:
        assert abs(float(v) - ent[int(i), int(h)]) <= 5e-4


def test_cohere_notes_link_to_the_source_that_implements_them(qk_page):
    """Every COHERE note of the files the walkthrough reads (found here with a regex, not with the code
    under test) is on the page, and its link opens the embedded source of a function holding that line."""
    section = text_of(qk_page, "cohere")
    found = 0
    for rel in ("spec/layers.py", "model/params.py", "model/modeling.py"):
        lines = (ROOT / "pycohere" / rel).read_text().splitlines()
        for k, line in enumerate(lines, 1):
            m = re.match(r'\s*(?:#|""")\s*COHERE:\s*(.+)', line)
            if not m:
                continue
            found += 1
            start = " ".join(m.group(1).split())[:30]
            item = re.search(rf'<li><b>COHERE:</b> ([^<]*)<a href="#([\w-]+)">(\w+)\(\)</a> '
                             rf'<span class="pc-meta">pycohere/{re.escape(rel)}:{k}</span></li>', section)
            assert item, (rel, k)
            assert " ".join(unescape(item.group(1)).split()).startswith(start), (rel, k, item.group(1))
            source = text_of(qk_page, item.group(2))
            assert source.startswith("<details") and f"def {item.group(3)}(" in source
            assert re.search(rf'<span class="pc-hl">\s*{k}  ', source), (rel, k)  # the note's line, marked
    assert found >= 8


def test_attribution_caption_sums_to_the_logit(qk):
    html = build_report(qk, IDS).document()
    m = re.search(r"Sum of the terms (-?\d+\.\d+); the model&#x27;s logit (-?\d+\.\d+)", text_of(html, "attribution"))
    logit = qk(np.array([IDS])).logits[0, -1].max()
    assert m and abs(float(m.group(1)) - logit) < 2e-6 and abs(float(m.group(2)) - logit) < 2e-6


def test_patching_section_matches_the_sweep(qk, qk_page):
    corrupt = [5, 17, 33, 40, 9, 70, 8, 44]
    sweep = A.activation_patching(qk, IDS, corrupt)
    cells = re.findall(r"<title>layer (\d) \u2192 [^:]*: ([+-][\d.]+)</title>", text_of(qk_page, "patching"))
    assert len(cells) == sweep.effect.size
    np.testing.assert_allclose([float(v) for _, v in cells], sweep.effect.ravel(), atol=5e-4)
    assert "patching" not in {a["id"] for a in Page(build_report(qk, IDS).document()).find("section")}


def test_layer_and_head_selection_and_the_size_cap(c2):
    html = build_report(c2, IDS, layers=[1, 3], heads=[2]).document()
    assert set(re.findall(r'class="pc-layer" data-layer="(\d)"', html)) == {"1", "3"}
    assert set(re.findall(r'class="pc-head" data-layer="\d" data-head="(\w+)"', html)) == {"2"}
    capped = build_report(c2, IDS, max_cells=100).document()
    assert set(re.findall(r'class="pc-head" data-layer="\d" data-head="(\w+)"', capped)) == {"mean"}
    with pytest.raises(InputError, match="layers \\[4\\] out of range"):
        build_report(c2, IDS, layers=[4])
    with pytest.raises(InputError, match="heads \\[9\\] out of range"):
        build_report(c2, IDS, heads=[9])
    with pytest.raises(InputError, match="one prompt"):
        build_report(c2, [IDS, IDS])


def test_tokenizer_pieces_are_shown(tmp_path):
    tok = pycohere.CohereTokenizer.from_pretrained(pycohere.DEMO_MODEL)
    model = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL)
    ids = tok.encode("And God said")
    html = build_report(model, ids, tok).document()
    shown = [unescape(t) for t in re.findall(r'<span class="pc-tok"[^>]*>([^<]*)<sub>', text_of(html, "tokens"))]
    assert shown == [tok.decode([i]).replace(" ", "\u2423") for i in ids] and shown[0] == "<BOS_TOKEN>"
    assert "And God said" in text_of(html, "tokens")


def test_figures_render_in_a_notebook_without_scripts(qk):
    _, cache = qk.run_with_cache(np.array([IDS]))
    labels = F.token_labels(IDS)
    figures = [F.Tokens(labels, IDS), F.lens_figure(qk, cache, labels), F.lens_answer_figure(qk, cache),
               F.attention_figure(qk, cache, labels), F.norms_figure(cache), F.entropy_figure(qk, cache),
               F.attribution_figure(qk, cache), F.patching_figure(A.activation_patching(qk, IDS, IDS[:5] + [70] + IDS[6:]),
                                                                  labels),
               build_report(qk, IDS)]
    for fig in figures:
        html = fig._repr_html_()
        assert html.startswith('<div class="pc"><style>') and "<script" not in html, type(fig).__name__
        assert_self_contained(html)


def test_figure_save_and_report_write(qk, tmp_path):
    _, cache = qk.run_with_cache(np.array([IDS]))
    path = F.norms_figure(cache).save(tmp_path / "norms.html")
    assert_self_contained(path.read_text()).find("svg")
    out = write_report(qk, IDS, tmp_path / "r.html")
    assert out.read_text() == build_report(qk, IDS).document() and not (tmp_path / "r.html.part").exists()
    with pytest.raises(InputError, match="does not exist"):
        write_report(qk, IDS, tmp_path / "missing" / "r.html")


def test_explain_html_cli(tmp_path, capsys):
    out = tmp_path / "report.html"
    rc = explain_cli.main([str(QK), "--ids", " ".join(map(str, IDS)), "--html", str(out), "--layers", "1"])
    printed = capsys.readouterr()
    assert rc == 0 and printed.out.startswith(f"wrote {out}: 8 tokens, 2 layers")
    page = assert_self_contained(out.read_text())
    assert {a["id"] for a in page.find("section")} == SECTIONS
    assert set(re.findall(r'class="pc-layer" data-layer="(\d)"', out.read_text())) == {"1"}
    rc = explain_cli.main([str(QK), "--ids", "5 17", "--html", str(tmp_path / "no" / "r.html")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and err.count("\n") == 1


# --- in a real browser -----------------------------------------------------------------------------
needs_chromium = pytest.mark.skipif(report_screenshot.chromium() is None,
                                    reason="needs Debian's chromium (apt-get install chromium)")


@needs_chromium
def test_the_report_in_headless_chromium(tmp_path):
    tok = pycohere.CohereTokenizer.from_pretrained(pycohere.DEMO_MODEL)
    model = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL)
    ids = tok.encode(report_screenshot.PROMPT)
    path = write_report(model, ids, tmp_path / "report.html", tok,
                        corrupted_ids=tok.encode("In the beginning God created the earth and the"))
    shot = tmp_path / "report.png"
    page = report_screenshot.open_page(path, screenshot=shot)
    assert page.console == [], page.console
    assert re.search(r'<html[^>]*data-ready="1"', page.dom), page.stderr[-2000:]
    dom = Page(page.dom)
    assert {a["id"] for a in dom.find("section")} == SECTIONS | {"patching"}
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1280 and len(png) > 50_000
    # the filters: #attn=2.5 hides every other layer and head
    filtered = report_screenshot.open_page(path, "attn=2.5")
    assert filtered.console == []
    shown = [(a["data-layer"]) for t, a, _ in Page(filtered.dom).elements
             if t == "div" and a.get("class") == "pc-layer" and "hidden" not in a]
    heads = [a["data-head"] for t, a, _ in Page(filtered.dom).elements
             if t == "div" and a.get("class") == "pc-head" and "hidden" not in a]
    assert shown == ["2"] and set(heads) == {"5"}
    # a note's link opens the source it points at
    src = report_screenshot.open_page(path, "src-spec-layers-layer_norm")
    assert re.search(r'<details id="src-spec-layers-layer_norm" open=""', src.dom)


@needs_chromium
def test_the_browser_check_sees_a_fetch_and_a_script_error(tmp_path):
    """The console check can fail: a page that tries to load an image from elsewhere (blocked by the
    report's Content-Security-Policy) or throws in its script is reported."""
    model = pycohere.AutoModelForCausalLM.from_pretrained(QK, dtype="float64")
    html = build_report(model, IDS).document()
    bad = tmp_path / "bad.html"
    bad.write_text(html.replace("</body>", '<img src="http://127.0.0.1:9/x.png"><script>nope()</script></body>'))
    page = report_screenshot.open_page(bad)
    assert any("Content Security Policy" in m for m in page.console), page.console
    assert any("nope is not defined" in m for m in page.console), page.console


def test_readme_introspection_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "run_with_cache" in b)
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(block, "README.md", "exec"), ns)
    np.testing.assert_array_equal(ns["lens"][-1], ns["out"].logits)
    att = ns["att"]
    assert np.abs(att.terms.sum(0) - att.logits).max() <= 2e-5 * np.abs(att.logits).max()
    assert {a["id"] for a in assert_self_contained((tmp_path / "report.html").read_text()).find("section")} == SECTIONS
