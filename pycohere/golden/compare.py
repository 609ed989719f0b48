"""Comparing golden bundles: per tap and prompt, normwise, with the first divergence named.

Comparison rule (per tap and prompt, normwise so near-zero entries do not blow up a relative error):
``max|B - A| <= atol + rtol * max|A|`` with (atol, rtol) for the tap's operation from the reference
bundle's manifest, in the tolerance profile of the less precise of the two producers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, WeightMismatchError
from ..spec.taps import parse_tap, tap_order_key
from .bundle import INPUT_NAMES, OUTPUT_NAMES, PROFILES, TOLERANCE_RULE, TOLERANCES, Bundle, describe
from .make import model_files

@dataclass
class Row:
    """One line of the comparison table."""

    name: str
    status: str                 # "ok", "FAIL", "missing" (not in B), "empty"
    shape: tuple | None = None
    max_abs: float | None = None
    rel: float | None = None    # max_abs / max|A| of the worst prompt
    worst: str = ""             # "p{prompt} [i, j, ...]"
    ratio: float | None = None  # max_abs / (atol + rtol * max|A|); > 1 fails
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


@dataclass
class Report:
    rows: list[Row]
    profile: str
    scale: float
    title: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def first_divergence(self) -> Row | None:
        return next((r for r in self.rows if r.failed), None)

    @property
    def compared(self) -> int:
        return sum(r.status in ("ok", "FAIL") for r in self.rows)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None and self.compared > 0

    def summary(self) -> str:
        first = self.first_divergence
        if first is not None:
            where = f": max abs {first.max_abs:.3e} at {first.worst}" if first.max_abs is not None else ""
            return f"first divergence: {describe(first.name)}{where}{' (' + first.note + ')' if first.note else ''}"
        if self.compared == 0:
            return "nothing compared: the two bundles have no tap or output in common"
        return f"PASS: all {self.compared} compared taps and outputs agree within tolerance"

    def format(self, failures_only: bool = False) -> str:
        lines = [self.title] if self.title else []
        lines.append(f"tolerance profile {self.profile}" + (f" x{self.scale:g}" if self.scale != 1 else "")
                     + f": pass iff {TOLERANCE_RULE}")
        w = max([len(r.name) for r in self.rows] + [4])
        lines.append(f"{'tap':<{w}}  {'shape':<16} {'max abs':>10} {'rel':>9}  {'worst index':<22} status")
        for r in self.rows:
            if failures_only and not r.failed:
                continue
            shape = str(tuple(r.shape)) if r.shape is not None else "-"
            mabs = f"{r.max_abs:.3e}" if r.max_abs is not None else "-"
            rel = f"{r.rel:.2e}" if r.rel is not None else "-"
            note = f"  {r.note}" if r.note else ""
            lines.append(f"{r.name:<{w}}  {shape:<16} {mabs:>10} {rel:>9}  {r.worst or '-':<22} {r.status}{note}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.summary())
        return "\n".join(lines)


def tolerance_for(ref: Bundle, op: str, profile: str, scale: float) -> tuple[float, float]:
    """(atol, rtol) of an operation: the reference manifest's, else pycohere's defaults."""
    table = (ref.manifest.get("tolerances") or {}).get(profile) or {}
    entry = table.get(op)
    if isinstance(entry, dict) and "atol" in entry and "rtol" in entry:
        atol, rtol = float(entry["atol"]), float(entry["rtol"])
    else:
        atol, rtol = TOLERANCES[profile].get(op, TOLERANCES[profile]["output"])
    return atol * scale, rtol * scale


def compare_arrays(name: str, refs: list, cands: list, atol: float, rtol: float) -> Row:
    """Float comparison of one tap over prompts (``None`` entries are skipped)."""
    worst = Row(name, "ok", max_abs=0.0, rel=0.0, ratio=-1.0)
    for p, (a, b) in enumerate(zip(refs, cands)):
        if a is None or b is None:
            continue
        if worst.shape is None:
            worst.shape = a.shape
        if a.shape != b.shape:
            return Row(name, "FAIL", a.shape, worst=f"p{p}", note=f"shape {tuple(b.shape)} in B, {tuple(a.shape)} in A")
        if a.size == 0:
            continue
        finite_a, finite_b = np.isfinite(a), np.isfinite(b)
        if not np.array_equal(finite_a, finite_b) or not np.array_equal(a[~finite_a], b[~finite_b], equal_nan=True):
            idx = np.unravel_index(np.argmax(finite_a != finite_b), a.shape) if (finite_a != finite_b).any() else ()
            return Row(name, "FAIL", a.shape, worst=f"p{p} {list(map(int, idx))}", note="non-finite values differ")
        err = np.where(finite_a, np.abs(np.where(finite_a, b, 0) - np.where(finite_a, a, 0)), 0.0)
        scale = float(np.abs(a[finite_a]).max()) if finite_a.any() else 0.0
        max_abs = float(err.max())
        ratio = max_abs / (atol + rtol * scale)
        worst.max_abs = max(worst.max_abs, max_abs)
        worst.rel = max(worst.rel, max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf))
        if ratio > worst.ratio:
            worst.ratio = ratio
            worst.worst = f"p{p} {list(map(int, np.unravel_index(np.argmax(err), a.shape)))}" if max_abs else ""
    if worst.shape is None:
        worst.status = "empty"
    elif worst.ratio > 1:
        worst.status = "FAIL"
    return worst


def compare_bundles(ref: Bundle, cand: Bundle, profile: str | None = None, scale: float = 1.0,
                    title: str = "") -> Report:
    """Compare ``cand`` (B) against ``ref`` (A): taps in forward order, then the outputs."""
    _check_same_inputs(ref, cand)
    profile = profile or ("float32" if "float32" in (ref.precision, cand.precision) else "float64")
    if profile not in PROFILES:
        raise InputError(f"unknown tolerance profile {profile!r}; use one of {', '.join(PROFILES)}")
    if not (scale > 0 and math.isfinite(scale)):
        raise InputError(f"--tolerance-scale must be a positive number, got {scale}")
    report = Report([], profile, scale, title)
    cand_names = set(cand.tap_names())
    for name in ref.tap_names():
        refs = [t.get(name) for t in ref.taps]
        if name not in cand_names:
            report.rows.append(Row(name, "missing", _first_shape(refs), note="not in B"))
            continue
        atol, rtol = tolerance_for(ref, parse_tap(name)[1], profile, scale)
        report.rows.append(compare_arrays(name, refs, [t.get(name) for t in cand.taps], atol, rtol))
    extra = sorted(cand_names - set(ref.tap_names()), key=tap_order_key)
    if extra:
        report.notes.append(f"{len(extra)} tap(s) only in B, not compared: {', '.join(extra[:8])}"
                            + (" ..." if len(extra) > 8 else ""))
    for name, omitted in (ref.manifest.get("omitted_taps") or {}).items():
        report.notes.append(f"A omits {name}: {omitted}")
    report.rows += compare_outputs(ref, cand, profile, scale)
    return report


def _first_shape(arrays):
    return next((a.shape for a in arrays if a is not None), None)


def _check_same_inputs(ref: Bundle, cand: Bundle) -> None:
    if ref.num_prompts != cand.num_prompts:
        raise InputError(f"the bundles hold different numbers of prompts ({ref.num_prompts} in A, "
                         f"{cand.num_prompts} in B); compare bundles made from the same inputs")
    for p, (a, b) in enumerate(zip(ref.inputs, cand.inputs)):
        for name in INPUT_NAMES:
            if name in a and name in b and not np.array_equal(a[name], b[name]):
                raise InputError(f"prompt {p}: {name} differs between the bundles (A {a[name][:8].tolist()}..., "
                                 f"B {b[name][:8].tolist()}...); compare bundles made from the same inputs")


def compare_outputs(ref: Bundle, cand: Bundle, profile: str, scale: float) -> list[Row]:
    """Greedy continuation, then the logits/top-k rows computed from an identical prefix."""
    if not any("generated_ids" in o for o in ref.outputs) and not any("step_logits" in o for o in ref.outputs):
        return []
    lp_tol = tolerance_for(ref, "topk_logprobs", profile, scale)
    gen_row, keep = _compare_generated(ref, cand, lp_tol)
    rows = [] if gen_row is None else [gen_row]
    for name in ("step_logits", "topk_logprobs"):
        refs = [o.get(name) for o in ref.outputs]
        if all(a is None for a in refs):
            continue
        cands = [o.get(name) for o in cand.outputs]
        if all(b is None for b in cands):
            rows.append(Row(name, "missing", _first_shape(refs), note="not in B"))
            continue
        refs, cands = _trim_rows(refs, cands, keep)
        rows.append(compare_arrays(name, refs, cands, *tolerance_for(ref, name, profile, scale)))
    rows += [r for r in [_compare_topk_ids(ref, cand, keep, lp_tol)] if r is not None]
    order = list(OUTPUT_NAMES)
    return sorted(rows, key=lambda r: order.index(r.name))


def _row_tol(lp_row: np.ndarray, tol) -> float:
    atol, rtol = tol
    return atol + rtol * float(np.abs(lp_row).max())


def _compare_generated(ref: Bundle, cand: Bundle, lp_tol) -> tuple[Row | None, list[int]]:
    """Compare greedy ids step by step. A step whose reference top-2 log-probs are within twice the
    tolerance is a near tie: either token is right, and later steps are not compared. Returns the row
    and, per prompt, how many leading step rows saw identical prefixes (for the logits rows)."""
    keep, row = [], Row("generated_ids", "ok")
    for p, (a, b) in enumerate(zip(ref.outputs, cand.outputs)):
        ga, gb = a.get("generated_ids"), b.get("generated_ids")
        if ga is None or gb is None:
            keep.append(1)
            if ga is not None and len(ga):
                row.status, row.note = "missing", "not in B"
            continue
        row.shape = row.shape or ga.shape
        n = min(len(ga), len(gb))
        lp = a.get("topk_logprobs")
        stop = n
        for j in range(n):
            if ga[j] == gb[j]:
                continue
            stop = j
            has_gap = lp is not None and lp.ndim == 2 and lp.shape[1] > 1 and j < len(lp)
            gap = float(lp[j, 0] - lp[j, 1]) if has_gap else math.inf
            if not has_gap or gap > 2 * _row_tol(lp[j], lp_tol):
                row.status, row.worst = "FAIL", f"p{p} [{j}]"
                row.note = f"step {j}: A chose {int(ga[j])}, B chose {int(gb[j])} (A's top-2 gap {gap:.2e})"
            elif row.status == "ok":
                row.note = f"p{p} step {j}: near tie in A (top-2 gap {gap:.2e}); later steps not compared"
            break
        if len(ga) != len(gb) and row.status == "ok" and not row.note:
            row.note = f"p{p}: A generated {len(ga)} tokens, B {len(gb)}; compared the first {n}"
        keep.append(stop + 1)
        if row.failed:
            break
    if row.shape is None and row.status == "ok":
        return None, keep
    return row, keep


def _trim_rows(refs, cands, keep):
    out_a, out_b = [], []
    for a, b, k in zip(refs, cands, keep + [1] * (len(refs) - len(keep))):
        if a is None or b is None:
            out_a.append(None), out_b.append(None)
            continue
        k = min(k, len(a), len(b))
        out_a.append(a[:k, :b.shape[1]] if a.ndim == 2 else a[:k])
        out_b.append(b[:k, :a.shape[1]] if b.ndim == 2 else b[:k])
    return out_a, out_b


def _compare_topk_ids(ref: Bundle, cand: Bundle, keep, lp_tol) -> Row | None:
    """Top-k ids must agree where A's log-probs are not near-tied with a neighbour (ties may reorder)."""
    row = Row("topk_ids", "ok")
    for p, (a, b) in enumerate(zip(ref.outputs, cand.outputs)):
        ia, ib, lp = a.get("topk_ids"), b.get("topk_ids"), a.get("topk_logprobs")
        if ia is None:
            continue
        if ib is None:
            return Row("topk_ids", "missing", ia.shape, note="not in B")
        row.shape = row.shape or ia.shape
        rows = min(keep[p] if p < len(keep) else 1, len(ia), len(ib), len(lp) if lp is not None else len(ia))
        k = min(ia.shape[1], ib.shape[1])
        for j in range(rows):
            tol = 2 * _row_tol(lp[j], lp_tol) if lp is not None else 0.0
            for c in range(k):
                if ia[j, c] == ib[j, c]:
                    continue
                # rank c is decided when its log-prob is clear of both neighbours; the last stored rank
                # never is (the unstored next entry may tie with it)
                left = lp is None or c == 0 or lp[j, c - 1] - lp[j, c] > tol
                right = lp is None or (c + 1 < lp.shape[1] and lp[j, c] - lp[j, c + 1] > tol)
                if left and right:
                    row.status, row.worst = "FAIL", f"p{p} [{j}, {c}]"
                    row.note = f"rank {c} of step {j}: A {int(ia[j, c])}, B {int(ib[j, c])}"
                    return row
    return row if row.shape is not None else None


def verify_model(bundle: Bundle, model_dir: Path) -> None:
    """Raise WeightMismatchError when the checkpoint's config/weight hashes differ from the manifest's."""
    recorded = (bundle.manifest.get("model") or {}).get("files") or {}
    if not recorded:
        return
    actual = model_files(model_dir)
    problems = []
    for name, info in sorted(recorded.items()):
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "chat_template.jinja",
                                                    "generation_config.json"):
            continue  # the forward pass does not read them
        if name not in actual:
            problems.append(f"{name} is missing")
        elif actual[name]["sha256"] != info.get("sha256"):
            problems.append(f"{name} sha256 {actual[name]['sha256'][:12]}... != bundle's {str(info.get('sha256'))[:12]}...")
    if problems:
        made_from = (bundle.manifest.get("model") or {}).get("name", "?")
        raise WeightMismatchError(f"{model_dir} is not the checkpoint this bundle was made from ({made_from}): "
                                  + "; ".join(problems) + ". Pass that checkpoint, or --allow-model-mismatch "
                                  "to compare anyway (e.g. a re-saved or converted copy).")
