#!/usr/bin/env python
"""Record oracle outputs for pycohere's quantization tests (tests/data/quant/).

The tests compare pycohere.quant against the real libraries when they are installed; these
small committed fixtures keep the comparison alive when they are not. This script never
imports pycohere: every output comes from the oracle library.

* ``gguf_oracle.npz`` (needs ``pip install gguf``): float32 inputs and gguf-py's Q8_0 / Q4_0 /
  Q4_1 quantized bytes and dequantized floats; random Q4_K / Q6_K blocks and their dequantization.
* ``bnb_nf4.npz`` (needs bitsandbytes + torch, optional): inputs, bitsandbytes' NF4 packed bytes
  (flat, high nibble first), absmax and dequantized floats (CPU backend, blocksize 64).

Each .npz has a .json beside it with the library versions and the seed.

    python tools/make_quant_fixtures.py [--out tests/data/quant] [--seed 20240611]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def gguf_inputs(rng: np.random.Generator) -> np.ndarray:
    """[8, 256] float32: random rows plus blocks of 32 built to hit the edge cases."""
    w = (rng.standard_normal((8, 256)) * 0.05).astype(np.float32)
    special = np.zeros((2, 8, 32), np.float32)
    special[0, 0] = 0.0                                            # all-zero block: d = 0
    special[0, 1] = 0.25                                           # constant block
    special[0, 2] = rng.uniform(-0.1, 0.1, 32); special[0, 2, 5] = -0.3   # max magnitude negative
    special[0, 3] = rng.uniform(-0.1, 0.1, 32); special[0, 3, [4, 9]] = [0.5, -0.5]  # |max| tie: first wins
    # Exact ties with power-of-two scales (product w * id exact, so no FMA sensitivity):
    # q8_0: absmax 127/64 -> d = 1/64, values (k + 1/2) / 64 -> roundf rounds away from zero.
    special[0, 4] = (np.arange(32) - 16 + 0.5) / 64; special[0, 4, 0] = 127 / 64
    # q4_0: max -8/16 -> d = 1/16, values (k + 1/2) / 16 -> trunc(x * id + 8.5) boundaries.
    special[0, 5] = (np.arange(32) % 16 - 8 + 0.5) / 16; special[0, 5, 0] = -0.5
    special[0, 6] = rng.uniform(-1, 1, 32) * 1e-6                 # float16 d underflows (subnormal)
    special[0, 7] = rng.uniform(-1, 1, 32) * 1000                 # large values
    special[1] = rng.standard_normal((8, 32)) * np.logspace(-3, 1, 8)[:, None]
    w[6:] = special.reshape(2, 256)
    return w


def random_kquant_blocks(rng, type_size: int, d_offsets: tuple[int, ...], n: int = 4) -> np.ndarray:
    """Random block bytes whose float16 fields hold sane values (random bytes can be NaN/inf)."""
    blocks = rng.integers(0, 256, (n, type_size), dtype=np.uint8)
    for off in d_offsets:
        d = (rng.uniform(-1, 1, n) * 0.01).astype(np.float16)
        blocks[:, off:off + 2] = d.view(np.uint8).reshape(n, 2)
    return blocks


def make_gguf(out: Path, seed: int) -> None:
    from gguf import GGMLQuantizationType as T
    from gguf import quants
    rng = np.random.default_rng(seed)
    w = gguf_inputs(rng)
    arrays = {"w": w}
    for name, qtype in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)):
        packed = quants.quantize(w, qtype)
        arrays[f"{name}_bytes"] = packed
        arrays[f"{name}_deq"] = quants.dequantize(packed, qtype)
    for name, qtype, size, d_offsets in (("q4_k", T.Q4_K, 144, (0, 2)), ("q6_k", T.Q6_K, 210, (208,))):
        blocks = random_kquant_blocks(rng, size, d_offsets)
        arrays[f"{name}_bytes"] = blocks.reshape(2, -1)  # 2 rows of 512 values
        arrays[f"{name}_deq"] = quants.dequantize(arrays[f"{name}_bytes"], qtype)
    np.savez_compressed(out / "gguf_oracle.npz", **arrays)
    meta = {"oracle": "gguf", "gguf_version": _version("gguf"), "numpy_version": np.__version__,
            "seed": seed, "generated_by": "tools/make_quant_fixtures.py"}
    (out / "gguf_oracle.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out / 'gguf_oracle.npz'} with gguf {meta['gguf_version']}")


def nf4_inputs(rng) -> np.ndarray:
    """[4, 128] float32; row 3 puts values exactly on (and one ulp above) NF4 midpoints."""
    from_table = np.array([
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
    mid = (from_table[:-1] + from_table[1:]) / np.float32(2)
    w = (rng.standard_normal((4, 128)) * 0.05).astype(np.float32)
    ties = np.zeros(128, np.float32)
    ties[0] = 2.0                                     # absmax 2: w * (1/2) is exact
    ties[1:16] = 2 * mid                              # exactly on each midpoint
    ties[16:31] = np.nextafter(2 * mid, np.float32(np.inf))  # one ulp above
    ties[64:128] = 0.0                                # an all-zero block
    w[3] = ties
    return w


def make_bnb(out: Path, seed: int) -> None:
    try:
        import bitsandbytes.functional as F
        import torch
    except ImportError as e:  # optional oracle
        print(f"skipping bitsandbytes fixtures: {e}")
        return
    rng = np.random.default_rng(seed + 1)
    w = nf4_inputs(rng)
    packed, state = F.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4")
    deq = F.dequantize_4bit(packed, state).numpy()
    np.savez_compressed(out / "bnb_nf4.npz", w=w, packed=packed.numpy().reshape(-1),
                        absmax=state.absmax.numpy(), deq=deq)
    meta = {"oracle": "bitsandbytes", "bitsandbytes_version": _version("bitsandbytes"),
            "torch_version": torch.__version__, "device": "cpu", "blocksize": 64,
            "quant_type": "nf4", "numpy_version": np.__version__, "seed": seed + 1,
            "generated_by": "tools/make_quant_fixtures.py"}
    (out / "bnb_nf4.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out / 'bnb_nf4.npz'} with bitsandbytes {meta['bitsandbytes_version']}")


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "quant")
    parser.add_argument("--seed", type=int, default=20240611)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make_gguf(args.out, args.seed)
    make_bnb(args.out, args.seed)


if __name__ == "__main__":
    main()
