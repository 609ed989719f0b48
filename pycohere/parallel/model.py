"""The tensor-parallel model: each rank computes its heads and FFN slice of every layer with the spec's own
layer functions, and one reduction per layer joins them.

COHERE: a layer is the *parallel* block ``y = x + Attn(LN x) + MLP(LN x)``. With rank r holding query
heads H_r (and their kv heads) and FFN slice F_r, its partial output is

    p_r = Wo[:, H_r] · attn_{H_r}(LN x)  +  Wd[:, F_r] · (act(Wg[F_r] · LN x) ⊙ Wu[F_r] · LN x)
    y   = x + Σ_r p_r

Both terms are sums over disjoint index sets, so **one** all-reduce of the hidden vector per layer is
exact; Llama's sequential block needs two (its MLP reads the residual after attention). Here the
step is kept in two explicit parts: ``rank_layer`` (this rank's ``p_r``, nothing communicated) and
``reduce`` (all-gather, then the sum in rank order: identical bits every run, see ``pycohere.parallel.comm``).

Per token the group exchanges L all-gathers of the hidden vector (B, T, D), one more for the
vocabulary-parallel embedding lookup, and gathers the (B, V/N) logit slices on rank 0, which samples
with the ordinary ``GenerationMixin`` loop. With MPI the other ranks follow rank 0's commands
(``_follow``): every rank sees the same tokens because only rank 0 chooses them.
"""
from __future__ import annotations

import numpy as np

from .. import errors
from ..checkpoints.probe import Probe, probe
from ..errors import CacheError, InputError, PycohereError, RankFailedError
from ..generation.config import GenerateDecoderOnlyOutput
from ..kernels.attention import fused_attention
from ..kernels.dispatch import resolve_backend
from ..model.inputs import ACTIVATION_MODES, resolve_dtype
from ..model.modeling import HUB_ARGS, AutoModelForCausalLM, CohereForCausalLM, CohereModel
from ..spec import layers as L
from ..spec.cache import KVCache, layer_windows
from ..spec.params import Dims, ForwardState, LayerParams, ModelParams
from ..spec.weights import Weight
from .comm import Communicator, LocalGroup, sum_in_rank_order
from .shard import ShardPlan, fingerprint, load_shard, plan_for_source

ROW_PARALLEL_MODES = ("read", "view")


# --- one rank's share of a layer, and the reduction ------------------------------------------------------
def _engine_attention(h: np.ndarray, p: LayerParams, dims: Dims, state: ForwardState, cache_kv) -> np.ndarray:
    """The attention half of ``pycohere.model.engine.decoder_layer`` (bound kernels, fused attention)."""
    B, T, _ = h.shape
    q, k, v = L.qkv_projection(h, p, dims, state)                     # (B, T, H_r|K_r, Dh)
    k_all, v_all, start = cache_kv(k, v)                              # (B, S, K_r, Dh)
    kv_valid = None if state.kv_valid is None else state.kv_valid[:, start:start + k_all.shape[1]]
    o = fused_attention(q, k_all, v_all, state.q_index, start, kv_valid, p.sliding_window)  # (B, T, H_r, Dh)
    return L.linear(o.reshape(B, T, dims.H * dims.Dh), p.o_proj, p.o_bias)


def rank_layer(h: np.ndarray, p: LayerParams, dims: Dims, state: ForwardState, cache_kv, fast: bool) -> np.ndarray:
    """This rank's partial output of one parallel block: its heads' attention through its columns of
    o_proj plus its FFN slice through its columns of down_proj, row-parallel outputs *before* the
    reduction (B, T, D). h (B, T, D) is the normed input (every rank computes it); ``p`` and ``dims`` are
    this rank's slices and sizes; ``cache_kv`` its part of the layer's cache. The spec's own functions
    (``numpy``), or the engine's kernels (``fast``): the decode engine plugs in here."""
    a = _engine_attention(h, p, dims, state, cache_kv) if fast else L.attention_block(h, p, dims, state, cache_kv)
    return a + L.mlp(h, p.gate_proj, p.up_proj, p.down_proj, dims.act)


def _no_cache(k, v):
    return k, v, 0


class ShardedKVCache(KVCache):
    """The KV caches of a process's local ranks (each holds only its kv heads): ``shards[0]`` is this
    object, the others ride along. An MPI rank has one local rank and uses a plain ``KVCache``."""

    def __init__(self, windows, max_cache_len=None, static: bool = False, n_shards: int = 1):
        super().__init__(windows, max_cache_len=max_cache_len, static=static)
        self.shards = [self] + [KVCache(windows, max_cache_len=max_cache_len, static=static) for _ in range(n_shards - 1)]

    @property
    def nbytes(self) -> int:
        return sum(KVCache.nbytes.fget(s) for s in self.shards)


class VocabParallelWeight(Weight):
    """The embedding / tied head split by vocabulary rows over the ranks (transformers' ``lm_head``
    ``colwise_gather_output``). ``rows(ids)``: each rank looks up the ids in its range and gives zeros for
    the others, summed in rank order (one non-zero term per token: exact). ``matmul(h)``: each rank's
    logit slice, all-gathered and concatenated in rank order."""

    def __init__(self, shards: list[Weight], plan: ShardPlan, comm: Communicator, hidden: int):
        self.shards, self.plan, self.comm = shards, plan, comm
        self.shape = (plan.vocab[-1][1], hidden)
        self.storage = shards[0].storage
        self.compute_dtype = shards[0].compute_dtype
        self.ranges = [plan.vocab[r] for r in comm.local_ranks]

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.shards)

    def rows(self, ids, dtype=None) -> np.ndarray:
        ids = np.asarray(ids)
        parts = []
        for w, (v0, v1) in zip(self.shards, self.ranges):
            mine = (ids >= v0) & (ids < v1)
            part = w.rows(np.where(mine, ids - v0, 0), dtype)
            part[~mine] = 0
            parts.append(part)
        return sum_in_rank_order(self.comm.allgather(parts, [parts[0].shape] * self.comm.size))

    def local_matmul(self, x: np.ndarray) -> list[np.ndarray]:
        return [w.matmul(x) for w in self.shards]

    def slice_shapes(self, lead: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [lead + (v1 - v0,) for v0, v1 in self.plan.vocab]

    def matmul(self, x: np.ndarray) -> np.ndarray:
        parts = self.comm.allgather(self.local_matmul(x), self.slice_shapes(x.shape[:-1]))
        return np.concatenate(parts, axis=-1)

    def dequantize_rows(self, index, dtype):
        raise InputError("the vocabulary-parallel embedding holds only this rank's rows; use rows() or matmul()")


# --- the model -------------------------------------------------------------------------------------------
class TensorParallelCohereModel(CohereModel):
    """``CohereModel`` whose layers run as N shards: ``_forward`` is the spec's layer loop with each layer
    split into ``rank_layer`` (per local rank) and ``reduce``. Validation, RoPE tables, caches, hidden
    states: the base class's own."""

    def __init__(self, config, shards: list[ModelParams], plan: ShardPlan, comm: Communicator, dtype=np.float32,
                 backend: str = "numpy", checkpoint=None, probe: Probe | None = None):
        self.comm, self.plan, self.shards = comm, plan, shards
        dims = Dims.from_config(config)
        embed = VocabParallelWeight([s.embed_tokens for s in shards], plan, comm, dims.D)
        tied = all(s.lm_head is s.embed_tokens for s in shards)
        head = embed if tied else VocabParallelWeight([s.lm_head for s in shards], plan, comm, dims.D)
        super().__init__(config, ModelParams(embed_tokens=embed, layers=shards[0].layers, norm=shards[0].norm,
                                             lm_head=head), dtype, backend, checkpoint, probe)
        for s in shards[1:]:  # the base class set each layer's attention kind on the first shard's layers
            for i, p in enumerate(s.layers):
                p.sliding_window, p.use_rope = self._windows[i], self.layer_uses_rope(i)
        self.shard_dims = [plan.dims(dims, r) for r in comm.local_ranks]

    def new_cache(self, max_cache_len: int | None = None, static: bool = False) -> KVCache:
        """An empty cache for this process's ranks (what ``past_key_values`` must be)."""
        n = len(self.comm.local_ranks)
        windows = layer_windows(self.config)
        return ShardedKVCache(windows, max_cache_len, static, n) if n > 1 else KVCache(windows, max_cache_len, static)

    def _run(self, input_ids, attention_mask, position_ids, past_key_values, use_cache, output_hidden_states,
             output_attentions, inputs_embeds, tap):
        if tap is not None or output_attentions:
            raise InputError("recorder, hooks and output_attentions are not available with tensor parallelism "
                             "(each rank holds only some heads); use the single-process model for them")
        if past_key_values is None and use_cache:
            past_key_values = self.new_cache()
        return super()._run(input_ids, attention_mask, position_ids, past_key_values, use_cache,
                            output_hidden_states, output_attentions, inputs_embeds, tap)

    def _local_caches(self, cache) -> list:
        n = len(self.comm.local_ranks)
        if cache is None:
            return [None] * n
        shards = getattr(cache, "shards", [cache])
        if len(shards) != n:
            raise CacheError(f"this process computes {n} ranks but past_key_values holds {len(shards)} cache "
                             "shard(s); make it with model.new_cache()")
        return shards

    def reduce(self, partials: list[np.ndarray]) -> np.ndarray:
        """Σ_r p_r over every rank of the group: all-gather, then the sum in rank order (reproducible)."""
        return sum_in_rank_order(self.comm.allgather(partials, [partials[0].shape] * self.comm.size))

    def _forward(self, x, state, cache, recorder=None, all_hidden=None, all_attn=None,
                 chunkable: bool = True) -> np.ndarray:
        # (the prompt runs in one pass here: chunked prefill is the single-process model's)
        fast = self._fast and state.segments is None
        caches = self._local_caches(cache)
        eps = self.dims.eps
        for i in range(self.dims.L):
            h = L.layer_norm(x, self.shards[0].layers[i].input_layernorm, eps)   # replicated on every rank
            partials = [rank_layer(h, s.layers[i], d, state, c.layers[i].update if c is not None else _no_cache, fast)
                        for s, d, c in zip(self.shards, self.shard_dims, caches)]
            x = x + self.reduce(partials)
            if all_hidden is not None:
                all_hidden.append(x)
        return L.layer_norm(x, self.params.norm, eps)


class _Closed:
    """What a following rank's session returns when rank 0 closes the group."""


CLOSED = _Closed()


class TensorParallelCohereForCausalLM(CohereForCausalLM):
    """A Cohere / Cohere2 causal LM split over a tensor-parallel group (``pycohere.parallel``).

    The forward ``model(input_ids, ...)`` is collective: every rank makes the same call and gets the full
    logits. ``generate(...)`` runs the ordinary loop on rank 0; with MPI the other ranks call ``generate``
    too (their arguments are not used) or ``serve()``, and follow rank 0's steps; every rank returns rank
    0's result. Rank 0 ends a ``serve()`` with ``close()`` (or a ``with model:`` block).
    """

    base_model_class = TensorParallelCohereModel

    def __init__(self, config, shards: list[ModelParams], plan: ShardPlan, comm: Communicator, dtype=np.float32,
                 backend: str = "numpy", checkpoint=None, probe: Probe | None = None):
        self.model = TensorParallelCohereModel(config, shards, plan, comm, dtype, backend, checkpoint, probe)
        self.config = config

    comm = property(lambda self: self.model.comm)
    plan = property(lambda self: self.model.plan)

    def new_cache(self, max_cache_len: int | None = None, static: bool = False) -> KVCache:
        return self.model.new_cache(max_cache_len, static)

    @classmethod
    def from_pretrained(cls, path, tensor_parallel=None, dtype="float32", backend: str = "auto",
                        materialize: bool = False, config=None, activations: str = "float32",
                        row_parallel: str = "read", timeout: float | None = None, **hub_args):
        """Load the checkpoint ``path`` split over ``tensor_parallel``: a ``Communicator``, an int N (a
        ``LocalGroup`` of N shards in this process), ``"mpi"`` (MPI's COMM_WORLD) or an mpi4py
        communicator. Each rank maps only its slices. Before anything is computed, every rank checks that
        every other opened the same checkpoint (config, tensors, norm weights, settings): a rank that fails
        to load, or one whose checkpoint differs, stops every rank with a named error.

        row_parallel: "read" (o_proj / down_proj column slices read into this rank's memory: 1/N of the
        weights resident) or "view" (strided views of the map: zero-copy, but whole pages are touched).
        Other arguments as ``CohereForCausalLM.from_pretrained`` (quantize-on-load is not offered: quantize
        the checkpoint first with ``pycohere quantize``, which keeps the 1/N-per-rank memory).
        """
        comm = communicator(tensor_parallel, timeout)
        settings = {"dtype": str(dtype), "backend": backend, "activations": activations, "materialize": materialize,
                    "row_parallel": row_parallel, "size": comm.size}
        here: dict = {}

        def open_checkpoint():
            if row_parallel not in ROW_PARALLEL_MODES:
                raise InputError(f"row_parallel={row_parallel!r} is not one of {ROW_PARALLEL_MODES}")
            if activations not in ACTIVATION_MODES:
                raise InputError(f"activations={activations!r} is not one of {ACTIVATION_MODES}")
            unknown = set(hub_args) - set(HUB_ARGS)
            if unknown:
                raise InputError(f"unexpected from_pretrained argument(s) with tensor_parallel: "
                                 f"{', '.join(sorted(unknown))} (to run quantized, quantize the checkpoint first with "
                                 "`pycohere quantize` and load that)")
            here["dtype"], here["backend"] = resolve_dtype(dtype), resolve_backend(backend)
            here["probe"] = found = probe(path, **hub_args)
            here["config"] = cfg = config or found.config
            here["source"] = source = found.open_weights(None, cfg)
            here["plan"] = plan_for_source(source, cfg, comm.size)
            return {"path": str(found.path), **fingerprint(cfg, source, settings)}

        def load_slices():
            here["shards"] = [load_shard(here["source"], here["config"], here["plan"], r, here["dtype"],
                                         here["backend"], materialize, activations, row_parallel)
                              for r in comm.local_ranks]

        _check_same_checkpoint(comm.agree(open_checkpoint, "opening the checkpoint"), len(comm.local_ranks))
        comm.agree(load_slices, "loading its slices of the checkpoint")
        return cls(here["config"], here["shards"], here["plan"], comm, dtype=here["dtype"], backend=here["backend"],
                   checkpoint=here["source"], probe=here["probe"])

    # -- the generation protocol (GenerationMixin) -----------------------------------------------------
    def _make_cache(self, gc, batch, total, past_key_values, max_cache_len):
        cache = super()._make_cache(gc, batch, total, past_key_values, max_cache_len)
        if past_key_values is None and len(self.comm.local_ranks) > 1:
            cache = self.new_cache(cache.max_cache_len, cache.static)
        if self.comm.has_peers:
            self.comm.bcast_obj(("begin", cache.max_cache_len, cache.static))
        return cache

    def _next_token_logits(self, ids, kv_valid, positions, cache):
        if self.comm.has_peers:
            self.comm.bcast_obj(("step", ids, kv_valid, positions))
        return self._step(ids, kv_valid, positions, cache)

    def _step(self, ids, kv_valid, positions, cache):
        """One trusted forward of every local rank; the last position's logits on rank 0 (None elsewhere)."""
        m = self.model
        with self.comm.guard():
            h = m._forward(m._embed(ids), m._state(positions, cache.get_seq_length(), kv_valid), cache)[:, -1]
            head = self.params.lm_head
            local = [L.lm_head(h, w, self.config.logit_scale) for w in head.shards]
            parts = self.comm.gather(local, head.slice_shapes(h.shape[:-1]))
        return None if parts is None else np.concatenate(parts, axis=-1)            # (B, V)

    def generate(self, *args, **kwargs):
        comm = self.comm
        if not comm.has_peers:
            return super().generate(*args, **kwargs)
        if not comm.is_root:
            out = self._follow(kwargs.get("past_key_values"), wait=False)
            if out is CLOSED:
                raise InputError("rank 0 closed the group while this rank was in generate(); call generate on "
                                 "every rank, or serve() on the ranks other than 0")
            return out
        try:
            out = super().generate(*args, **kwargs)
        except BaseException as e:
            if not comm.poisoned:
                comm.bcast_obj(("error", type(e).__name__, str(e)))
            raise
        comm.bcast_obj(("result", out if not isinstance(out, GenerateDecoderOnlyOutput) else
                        GenerateDecoderOnlyOutput(out.sequences, out.scores, out.logits, None)))
        return out

    def _follow(self, cache=None, wait: bool = True):
        """A rank other than 0 in one generate session: run rank 0's steps until its result arrives."""
        comm = self.comm
        session = False
        while True:
            cmd = comm.bcast_obj(None, wait=wait or session)
            kind = cmd[0]
            if kind == "begin":
                session = True
                cache = cache if cache is not None else self.new_cache(cmd[1], cmd[2])
            elif kind == "step":
                self._step(cmd[1], cmd[2], cmd[3], cache)
            elif kind == "result":
                out = cmd[1]
                if isinstance(out, GenerateDecoderOnlyOutput):
                    out.past_key_values = cache  # (this rank's part)
                return out
            elif kind == "error":
                raise _error_like(cmd[1], f"rank 0: {cmd[2]}")
            elif kind == "close":
                return CLOSED

    def serve(self) -> int:
        """On the ranks other than 0: follow rank 0's generate sessions until it closes the group (0)."""
        if self.comm.is_root:
            raise InputError("serve() runs on the ranks other than 0; rank 0 calls generate() and then close()")
        while self._follow(wait=False) is not CLOSED:
            pass
        return 0

    def close(self, error: BaseException | None = None) -> None:
        """On rank 0: end the other ranks' ``serve()`` (with ``error``: they raise it too)."""
        comm = self.comm
        if comm.has_peers and comm.is_root and not comm.poisoned:
            comm.bcast_obj(("close",) if error is None else ("error", type(error).__name__, str(error)))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)


def _error_like(kind: str, message: str) -> Exception:
    """The named pycohere error rank 0 raised, re-raised here; anything else as RankFailedError."""
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, PycohereError):
        return cls(message)
    return RankFailedError(f"{message} ({kind})")


def _check_same_checkpoint(fps: list[dict], ranks_per_process: int) -> None:
    ref = fps[0]
    for p, fp in enumerate(fps[1:], 1):
        differ = [k for k in ref if k != "path" and fp.get(k) != ref[k]]
        if differ:
            raise errors.CheckpointMismatchError(
                f"rank {p * ranks_per_process} opened {fp['path']} and rank 0 {ref['path']}: their "
                f"{' and '.join(differ)} differ. Every rank must load the same checkpoint with the same settings "
                "(copy it to each machine, or use a shared filesystem)")


def communicator(tensor_parallel, timeout: float | None = None) -> Communicator:
    """A ``Communicator`` from what ``from_pretrained(tensor_parallel=...)`` accepts."""
    if isinstance(tensor_parallel, Communicator):
        return tensor_parallel
    if isinstance(tensor_parallel, (int, np.integer)) and not isinstance(tensor_parallel, bool):
        return LocalGroup(int(tensor_parallel))
    if tensor_parallel == "mpi" or hasattr(tensor_parallel, "Get_rank"):
        from .mpi import MPICommunicator
        return MPICommunicator(None if tensor_parallel == "mpi" else tensor_parallel, timeout)
    raise InputError(f"tensor_parallel must be a pycohere.parallel Communicator, a number of in-process shards, "
                     f"'mpi' or an mpi4py communicator; got {tensor_parallel!r}")


def from_pretrained(path, tensor_parallel, **kwargs) -> TensorParallelCohereForCausalLM:
    """``TensorParallelCohereForCausalLM.from_pretrained`` (cohere and cohere2 checkpoints alike)."""
    return TensorParallelCohereForCausalLM.from_pretrained(path, tensor_parallel=tensor_parallel, **kwargs)


class TensorParallelAutoModelForCausalLM(AutoModelForCausalLM):
    """``AutoModelForCausalLM`` (the facade's ``pycohere.AutoModelForCausalLM``) that also takes
    ``tensor_parallel=``: with it, the model is split over that group (``from_pretrained`` above)."""

    @staticmethod
    def from_pretrained(path, tensor_parallel=None, **kwargs):
        if tensor_parallel is None:
            return AutoModelForCausalLM.from_pretrained(path, **kwargs)
        return from_pretrained(path, tensor_parallel, **kwargs)


__all__ = ["CLOSED", "TensorParallelAutoModelForCausalLM", "ShardedKVCache", "TensorParallelCohereForCausalLM", "TensorParallelCohereModel",
           "VocabParallelWeight", "communicator", "from_pretrained", "rank_layer"]
