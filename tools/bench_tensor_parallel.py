#!/usr/bin/env python
"""Per-rank decode time of one Command R+ layer shard, and the bytes a tensor-parallel token exchanges.

    NUMBA_NUM_THREADS=2 python tools/bench_tensor_parallel.py [N ...]    (default 2 4 8)

For each group size N, builds rank 0's shard of one Command R+ layer (hidden 12288, 96 heads / 8 kv heads
of 128, FFN 33792; bf16 weights in RAM, random values) with pycohere.parallel's plan and times
``rank_layer`` (the numba path) for one decode token with 512 tokens in the cache: median and spread of
repeats. The weights are tiled from a small random block (timing does not depend on the values).
Prints one JSON object per N.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from pycohere.config import config_from_dict
from pycohere.kernels.dispatch import fast_weight
from pycohere.parallel.model import rank_layer
from pycohere.parallel.shard import ShardPlan
from pycohere.spec.cache import LayerCache
from pycohere.spec.params import Dims, ForwardState, LayerParams
from pycohere.spec.weights import DenseWeight

COMMAND_R_PLUS = dict(model_type="cohere", hidden_size=12288, num_attention_heads=96, num_key_value_heads=8,
                      intermediate_size=33792, vocab_size=256000, num_hidden_layers=64, use_qk_norm=True,
                      layer_norm_eps=1e-5, logit_scale=0.8333333333333334, max_position_embeddings=131072)
BLOCK = (np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32) * 0.02).view(np.uint32) >> 16


def bf16(rows: int, cols: int) -> DenseWeight:
    return fast_weight(DenseWeight(np.resize(BLOCK.astype(np.uint16), (rows, cols)), "BF16"))


def shard_layer(d: Dims) -> LayerParams:
    D, Dh = d.D, d.Dh
    return LayerParams(input_layernorm=np.ones(D, np.float32), q_proj=bf16(d.H * Dh, D), k_proj=bf16(d.K * Dh, D),
                       v_proj=bf16(d.K * Dh, D), o_proj=bf16(D, d.H * Dh), gate_proj=bf16(d.F, D),
                       up_proj=bf16(d.F, D), down_proj=bf16(D, d.F), q_norm=np.ones((d.H, Dh), np.float32),
                       k_norm=np.ones((d.K, Dh), np.float32))


def main(sizes) -> None:
    config = config_from_dict(COMMAND_R_PLUS)
    dims = Dims.from_config(config)
    past = 512
    for n in sizes:
        d = ShardPlan.for_model(config, n).dims(dims, 0)
        p = shard_layer(d)
        cache = LayerCache()
        rng = np.random.default_rng(1)
        cache.update(rng.standard_normal((1, past, d.K, d.Dh)).astype(np.float32),
                     rng.standard_normal((1, past, d.K, d.Dh)).astype(np.float32))
        h = rng.standard_normal((1, 1, d.D)).astype(np.float32)
        half = d.Dh // 2
        state = ForwardState(np.ones((1, 1, half), np.float32), np.zeros((1, 1, half), np.float32),
                             np.array([past]))
        weight_bytes = sum(w.nbytes for w in (p.q_proj, p.k_proj, p.v_proj, p.o_proj, p.gate_proj, p.up_proj,
                                              p.down_proj))
        times = []
        for i in range(12):
            cache.length = past  # (the same cache every repeat)
            t0 = time.perf_counter()
            rank_layer(h, p, d, state, cache.update, fast=True)
            times.append(time.perf_counter() - t0)
        times = np.array(times[2:])  # (the first calls compile / fault in)
        print(json.dumps({"N": n, "heads": d.H, "kv_heads": d.K, "ffn": d.F, "weight_MiB": round(weight_bytes / 2**20, 1),
                          "median_ms": round(float(np.median(times)) * 1e3, 2),
                          "min_ms": round(float(times.min()) * 1e3, 2), "max_ms": round(float(times.max()) * 1e3, 2),
                          "GB_per_s": round(weight_bytes / float(np.median(times)) / 1e9, 2),
                          "threads": os.environ.get("NUMBA_NUM_THREADS"), "load": os.getloadavg()}), flush=True)
        del p


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [2, 4, 8])
