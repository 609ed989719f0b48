"""How a checkpoint splits N ways (``ShardPlan``) and one rank's slices of it (``load_shard``).

The split is transformers' tensor-parallel plan for Cohere and Cohere2 (``CohereConfig.base_model_tp_plan``
and ``CohereForCausalLM._tp_plan``): q/k/v/gate/up column-parallel, o/down row-parallel, the head
``colwise_gather_output`` (vocabulary-parallel, logits gathered). In a matrix W [out, in]:

* column-parallel = a range of W's *rows* (output features): rank r's query heads H_r, its kv heads
  K_r, its FFN slice F_r. A row range is a zero-copy view of the memory map.
* row-parallel = a range of W's *columns* (input features): o_proj[:, H_r], down_proj[:, F_r]. A column
  range of a mapped matrix is a strided view, and a strided view still makes the kernel touch (and the
  kernel's readahead and fault-around map) whole pages of every row: measured, a view of half the
  columns of a 64 MB matrix of 16 KB rows put all 64 MB in the resident set. So by default
  (``row_parallel="read"``) each row's slice is read with ``os.preadv`` into this rank's own array:
  1/N of the bytes, nothing else mapped. ``row_parallel="view"`` keeps the strided view (zero-copy;
  the kernels read it correctly, tests/test_parallel.py). Quantized matrices split at block boundaries
  (per-channel schemes anywhere: a row's scale covers every column range).
* q/k-norm weights (H, Dh) / (K, Dh) split with their heads; q/k/v biases likewise; o_proj's bias is
  added by rank 0 only (it is added once, after the heads' sum). The input LayerNorm and the final norm
  are replicated (each rank normalises the full hidden vector itself).
* the embedding and an untied head: ranges of vocabulary rows (views).

KV heads: when N divides K each rank has K/N of them (and that part of the KV cache); when K divides N
(MQA, small K) each kv head is replicated on N/K ranks, whose query heads all read it. N must divide H.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import mmap
import os
from dataclasses import dataclass

import numpy as np

from ..checkpoints.manifest import check_manifest
from ..errors import CorruptCheckpointError, ShardingError
from ..kernels.dispatch import fast_weight
from ..quant.activations import LlamaCppActivations
from ..quant.weight import PermutedWeight, QuantizedWeight
from ..spec.params import LAYER_PARAMETERS, MATRIX, Dims, LayerParams, ModelParams, hf_name, present
from ..spec.weights import DenseWeight, Weight

ROWS, COLUMNS, WHOLE, ROOT = "rows", "columns", "whole", "root"  # how a tensor splits
HEADS, KV, FFN = "heads", "kv", "ffn"                              # along which index set

#: field of LayerParams -> (how, along which set, values per index). Matrices split by rows (column-
#: parallel) or columns (row-parallel); vectors along their only (or first) axis.
SPLITS: dict[str, tuple[str, str | None, str]] = {
    "input_layernorm": (WHOLE, None, ""),
    "q_proj": (ROWS, HEADS, "Dh"), "q_bias": (ROWS, HEADS, "Dh"), "q_norm": (ROWS, HEADS, ""),
    "k_proj": (ROWS, KV, "Dh"), "k_bias": (ROWS, KV, "Dh"), "k_norm": (ROWS, KV, ""),
    "v_proj": (ROWS, KV, "Dh"), "v_bias": (ROWS, KV, "Dh"),
    "o_proj": (COLUMNS, HEADS, "Dh"), "o_bias": (ROOT, None, ""),
    "gate_proj": (ROWS, FFN, ""), "up_proj": (ROWS, FFN, ""), "down_proj": (COLUMNS, FFN, ""),
}
#: llama.cpp's activation blocks (quant.activations): a row-parallel slice must not cut one.
ACTIVATION_BLOCK = {"q8_0": 32, "q8_k": 256}


def even_ranges(n_units: int, size: int, unit: int = 1) -> tuple[tuple[int, int], ...]:
    """[start, stop) of ``size`` near-equal parts of ``n_units`` units of ``unit`` (the first parts one larger)."""
    base, extra = divmod(n_units, size)
    out, start = [], 0
    for r in range(size):
        stop = start + base + (r < extra)
        out.append((start * unit, stop * unit))
        start = stop
    return tuple(out)


@dataclass(frozen=True)
class ShardPlan:
    """Index ranges per rank: query heads, kv heads, FFN columns, vocabulary rows."""

    size: int
    heads: tuple[tuple[int, int], ...]
    kv: tuple[tuple[int, int], ...]
    ffn: tuple[tuple[int, int], ...]
    vocab: tuple[tuple[int, int], ...]

    @classmethod
    def for_model(cls, config, size: int, ffn_unit: int = 1) -> "ShardPlan":
        """The plan for ``size`` ranks; ``ffn_unit``: the block of down_proj's columns (1 for float)."""
        d = Dims.from_config(config)
        H, K, N = d.H, d.K, size
        if H % N:
            raise ShardingError(f"{N} ranks cannot split the {H} attention heads evenly; use a group size that "
                                f"divides {H} ({_divisors(H, K)})")
        if K % N and N % K:
            raise ShardingError(f"{N} ranks cannot share the {K} key/value heads: the group size must divide "
                                f"{K} or be a multiple of it (that also divides the {H} heads): {_divisors(H, K)}")
        heads = tuple((r * H // N, (r + 1) * H // N) for r in range(N))
        if K % N == 0:
            kv = tuple((r * K // N, (r + 1) * K // N) for r in range(N))
        else:  # each kv head replicated on N / K ranks: their query heads are exactly its group
            kv = tuple((r // (N // K), r // (N // K) + 1) for r in range(N))
        if d.F % ffn_unit or d.F // ffn_unit < N:
            raise ShardingError(f"the feed-forward size {d.F} in blocks of {ffn_unit} (down_proj's quantization "
                                f"blocks) cannot be split {N} ways; use fewer ranks")
        return cls(N, heads, kv, even_ranges(d.F // ffn_unit, N, ffn_unit), even_ranges(d.V, N))

    def range(self, along: str, rank: int) -> tuple[int, int]:
        return {HEADS: self.heads, KV: self.kv, FFN: self.ffn}[along][rank]

    def dims(self, dims: Dims, rank: int) -> Dims:
        """The sizes rank ``rank`` computes with (its heads, kv heads, FFN and vocabulary slices)."""
        span = lambda r: r[1] - r[0]
        return dataclasses.replace(dims, H=span(self.heads[rank]), K=span(self.kv[rank]),
                                   F=span(self.ffn[rank]), V=span(self.vocab[rank]))


def _divisors(H: int, K: int) -> str:
    ok = [n for n in range(1, H + 1) if H % n == 0 and (K % n == 0 or n % K == 0)]
    return "possible sizes: " + ", ".join(map(str, ok))


# --- which column step a matrix allows -------------------------------------------------------------------
def input_block(w: Weight) -> int:
    """The step at which W's input columns may be split (1 for float weights; a quantized block)."""
    if isinstance(w, LlamaCppActivations):
        return math.lcm(input_block(w.weight), ACTIVATION_BLOCK.get(w.vec_dot_type, 1))
    if isinstance(w, QuantizedWeight):
        t = w.tensor
        per_channel = t.scheme_class.block_size is None and t.group_size == t.shape[1]
        return 1 if per_channel else t.group_size
    if isinstance(w, PermutedWeight):
        raise ShardingError(f"{w!r} stores its input columns permuted (GPTQ desc_act / act-order): its row-parallel "
                            "column slices are not contiguous. Tensor parallelism needs a checkpoint without "
                            "act-order (desc_act=false) or a float / GGUF one")
    return 1


def plan_for_source(source, config, size: int) -> ShardPlan:
    """The plan for ``source``: FFN blocks from every down_proj, head boundaries checked against o_proj."""
    dims = Dims.from_config(config)
    units = [input_block(source.weight(f"model.layers.{i}.mlp.down_proj.weight", np.float32))
             for i in range(dims.L)]
    plan = ShardPlan.for_model(config, size, math.lcm(*units))
    for i in range(dims.L):
        step = input_block(source.weight(f"model.layers.{i}.self_attn.o_proj.weight", np.float32))
        bad = [h0 for h0, _ in plan.heads if (h0 * dims.Dh) % step]
        if bad:
            raise ShardingError(f"model.layers.{i}.self_attn.o_proj.weight is stored in blocks of {step} inputs, "
                                f"but with {size} ranks a rank's heads start at column {bad[0] * dims.Dh}, inside a "
                                f"block (head dim {dims.Dh}); use a group size whose head share is a multiple "
                                f"of {step // math.gcd(step, dims.Dh)} heads")
    return plan


# --- slices of one weight ------------------------------------------------------------------------------
def _mapped_file(a: np.ndarray):
    """(file name, byte offset of ``a``'s first element) when ``a`` views a memory-mapped file, else None."""
    base = a
    while base is not None and not (isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap)):
        base = base.base if isinstance(base, np.ndarray) else None
    if base is None or base.filename is None:
        return None
    start = base.__array_interface__["data"][0]
    return base.filename, base.offset + (a.__array_interface__["data"][0] - start)


def read_columns(a: np.ndarray, c0: int, c1: int) -> np.ndarray:
    """``a[:, c0:c1]`` as an owned contiguous array. For a mapped file each row's slice is read with
    ``os.preadv`` straight into the result, so no page of the map enters the resident set."""
    rows = a.shape[0]
    out = np.empty((rows, c1 - c0), dtype=a.dtype)
    where = _mapped_file(a) if a.ndim == 2 and a.strides[1] == a.itemsize else None
    if where is None or rows == 0 or c1 == c0:
        out[...] = a[:, c0:c1]
        return out
    path, offset = where
    dst = out.view(np.uint8).reshape(rows, -1)
    first, stride = offset + c0 * a.itemsize, a.strides[0]
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        for r in range(rows):
            view, pos = memoryview(dst[r]), first + r * stride
            while len(view):
                got = os.preadv(fd, [view], pos)
                if got == 0:
                    raise CorruptCheckpointError(f"{path} ended at byte {pos} while reading a weight slice; the "
                                                 "file was truncated or replaced while in use")
                view, pos = view[got:], pos + got
    return out


def _rows_of(a: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """A view when ``a`` is memory-mapped (pages untouched until used); a copy of an in-memory array
    (a repacked GPTQ tensor), so the whole array can be freed."""
    view = a[r0:r1]
    return view if _mapped_file(a) is not None else view.copy()


def _columns_of(a: np.ndarray, c0: int, c1: int, read: bool) -> np.ndarray:
    if read or _mapped_file(a) is None:
        return read_columns(a, c0, c1)
    return a[:, c0:c1]


def _dense_source(w: DenseWeight) -> tuple[np.ndarray, str]:
    """The stored array of a dense weight and its storage (an F64 file widened for float32 is F32)."""
    if w.raw is not None:
        return w.raw, w.storage
    full = w.dequantize()
    return full, {4: "F32", 8: "F64"}[full.itemsize]


def weight_rows(w: Weight, r0: int, r1: int, materialize: bool = False) -> Weight:
    """Rows [r0, r1) of W (output features) as a weight of the same storage."""
    if isinstance(w, DenseWeight):
        raw, storage = _dense_source(w)
        return DenseWeight(_rows_of(raw, r0, r1), storage, compute_dtype=w.compute_dtype, materialize=materialize)
    if isinstance(w, QuantizedWeight):
        t = w.tensor
        arrays = {n: _rows_of(a, r0, r1) for n, a in t.arrays.items()}
        return QuantizedWeight(arrays, {"scheme": t.scheme, "group_size": t.group_size, "shape": [r1 - r0, t.shape[1]]},
                               compute_dtype=w.compute_dtype)
    if isinstance(w, PermutedWeight):  # the permutation acts on columns: rows split as usual
        return PermutedWeight(weight_rows(w.inner, r0, r1, materialize), w.perm)
    raise ShardingError(f"cannot split {w!r} for tensor parallelism")


def weight_columns(w: Weight, c0: int, c1: int, read: bool = True, materialize: bool = False) -> Weight:
    """Columns [c0, c1) of W (input features) as a weight of the same storage; quantized blocks whole."""
    if isinstance(w, DenseWeight):
        raw, storage = _dense_source(w)
        return DenseWeight(_columns_of(raw, c0, c1, read), storage, compute_dtype=w.compute_dtype,
                           materialize=materialize)
    if isinstance(w, QuantizedWeight):
        t = w.tensor
        cls, g, n_in = t.scheme_class, t.group_size, t.shape[1]
        layout = cls.block_layout(g)
        if cls.block_size is None and g == n_in:  # per channel: codes by column, the row's scale kept
            arrays = {n: (_columns_of(a, c0, c1, read) if layout[n][0] == g else a) for n, a in t.arrays.items()}
            g = c1 - c0
        else:
            if c0 % g or c1 % g:
                raise ShardingError(f"columns {c0}..{c1} of {w!r} cut its blocks of {g}")
            arrays = {n: _columns_of(a, c0 // g * layout[n][0], c1 // g * layout[n][0], read) for n, a in t.arrays.items()}
        return QuantizedWeight(arrays, {"scheme": t.scheme, "group_size": g, "shape": [t.shape[0], c1 - c0]},
                               compute_dtype=w.compute_dtype)
    if isinstance(w, PermutedWeight):
        input_block(w)  # raises: act-order columns are not contiguous
    raise ShardingError(f"cannot split {w!r} for tensor parallelism")


# --- one rank's parameters -------------------------------------------------------------------------------
def load_shard(source, config, plan: ShardPlan, rank: int, dtype, backend: str, materialize: bool = False,
               activations: str = "float32", row_parallel: str = "read") -> ModelParams:
    """Rank ``rank``'s slices of every tensor of ``source``, as the ``ModelParams`` the spec layers take
    (with this rank's sizes: ``plan.dims``). Mirrors ``pycohere.model.params.load_params``: matrices are
    Weight objects (wrapped in their kernels for numba/float32), vectors widened copies."""
    check_manifest(config, source.shapes, where=str(source.path), problems=source.problems)
    fast = backend == "numba" and np.dtype(dtype) == np.float32
    read = row_parallel == "read"
    dims = Dims.from_config(config)
    per = {"Dh": dims.Dh, "": 1}

    def finish(w, name):
        if activations == "llama.cpp":
            w = LlamaCppActivations(w, name)
        return fast_weight(w) if fast else w

    def tensor(param, layer):
        name = hf_name(param, layer)
        how, along, unit = SPLITS[param.field]
        if how == ROOT:
            return source.vector(name, dtype) if rank == 0 else None
        i0, i1 = (0, None) if how == WHOLE else [i * per[unit] for i in plan.range(along, rank)]
        if param.kind != MATRIX:
            return np.ascontiguousarray(source.vector(name, dtype)[i0:i1])
        w = source.weight(name, dtype, False)
        w = weight_rows(w, i0, i1, materialize) if how == ROWS else weight_columns(w, i0, i1, read, materialize)
        return finish(w, name)

    layers = [LayerParams(**{p.field: tensor(p, i) for p in LAYER_PARAMETERS if present(p, config)})
              for i in range(dims.L)]
    v0, v1 = plan.vocab[rank]
    embed = finish(weight_rows(source.weight("model.embed_tokens.weight", dtype, False), v0, v1, materialize),
                   "model.embed_tokens.weight")
    # COHERE: the head is the tied embedding unless the file has lm_head.weight (pycohere.model.params)
    head = embed if "lm_head.weight" not in source.shapes else finish(
        weight_rows(source.weight("lm_head.weight", dtype, False), v0, v1, materialize), "lm_head.weight")
    return ModelParams(embed_tokens=embed, layers=layers, norm=source.vector("model.norm.weight", dtype), lm_head=head)


def fingerprint(config, source, settings: dict) -> dict[str, str]:
    """What every rank must agree on before any computes: the config, the tensor table (names, shapes,
    storage), the norm weights (read in full by every rank anyway: two fine-tunes of one architecture
    differ there) and the load settings. Each entry a sha256."""
    def sha(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    norms = hashlib.sha256()
    for name in sorted(n for n in source.shapes if n.endswith("norm.weight")):
        norms.update(name.encode())
        norms.update(np.ascontiguousarray(source.vector(name, np.float32)).tobytes())
    return {"config": sha({k: v for k, v in vars(config).items() if not k.startswith("_")}),
            "tensors": sha(sorted((t.name, list(t.shape), t.storage) for t in source.tensor_table())),
            "norm weights": norms.hexdigest(), "settings": sha(settings)}
