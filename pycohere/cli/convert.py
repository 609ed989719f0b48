"""``pycohere quantize`` (a pycohere quantized checkpoint) and ``pycohere convert`` (a GGUF file llama.cpp loads)."""
from __future__ import annotations

import argparse
import sys
import time
import warnings

from ..export.gguf import FILE_TYPES, convert_to_gguf
from ..export.quantized import DEFAULT_MAX_SHARD_SIZE, quantize_checkpoint
from ..quant.config import quantizable_schemes


def _size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '123' -> bytes (transformers' max_shard_size spelling)."""
    t = text.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, factor in units.items():
        if t.endswith(unit):
            t, mult = t[:-len(unit)], factor
            break
    else:
        mult = 1
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB, 2GiB)") from None
    return value


def cmd_quantize(args) -> int:
    t0 = time.perf_counter()
    dst = quantize_checkpoint(args.src, args.dst, scheme=args.scheme, group_size=args.group_size,
                              keep_embeddings=args.keep_embeddings, force=args.force,
                              max_shard_size=args.max_shard_size or None, progress=not args.quiet)
    size = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    print(f"wrote {dst} ({args.scheme}, {size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0


def register_quantize(subparsers) -> None:
    """Add ``pycohere quantize`` to the command line."""
    p = subparsers.add_parser(
        "quantize", help="quantize a float checkpoint (int8, int4, nf4, q8_0, q4_0, ...)",
        description="Quantize the float checkpoint SRC (folder or hub repo id) into the folder DST, tensor by "
                    "tensor. DST is written atomically; load it with from_pretrained or --model DST.")
    p.add_argument("src", help="float checkpoint folder or hub repo id")
    p.add_argument("dst", help="output folder (must not exist unless --force)")
    p.add_argument("--scheme", required=True, help=f"one of {', '.join(quantizable_schemes())}")
    p.add_argument("--group-size", type=int, default=None, metavar="N",
                   help="values per scale (default: per output channel for int8, 64 for int4/int4-asym/nf4, "
                        "32 for q8_0/q4_0/q4_1/q5_0/q5_1)")
    p.add_argument("--keep-embeddings", action="store_true",
                   help="keep the token embedding (and an untied lm_head) in its float dtype")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--max-shard-size", type=_size, default=DEFAULT_MAX_SHARD_SIZE, metavar="SIZE",
                   help="largest safetensors file, e.g. 5GB (default) or 0 for a single file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_quantize)


def cmd_convert(args) -> int:
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", UserWarning)
        dst = convert_to_gguf(args.src, args.dst, type=args.type, force=args.force,
                              token_embedding_type=args.token_embedding_type, name=args.name, progress=not args.quiet)
    for note in notes:  # one readable line instead of a warning with a source location
        print(f"pycohere: note: {note.message}", file=sys.stderr)
    size = dst.stat().st_size
    print(f"wrote {dst} ({args.type}, {size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0


def register_convert(subparsers) -> None:
    """Add ``pycohere convert`` to the command line."""
    p = subparsers.add_parser(
        "convert", help="write a checkpoint as a llama.cpp GGUF file (f32, f16, bf16, q8_0, q4_0)",
        description="Convert SRC (float or quantized safetensors, bitsandbytes/GPTQ/AWQ, GGUF; folder, file or "
                    "hub repo id) into the GGUF file DST, with the keys, vocabulary and tensor names llama.cpp's "
                    "converter writes for command-r / cohere2. Written atomically, tensor by tensor.")
    p.add_argument("src", help="checkpoint folder, .gguf file or hub repo id")
    p.add_argument("dst", help="output .gguf file (must not exist unless --force)")
    p.add_argument("--type", default="f16", metavar="TYPE",
                   help=f"weight type: {', '.join(FILE_TYPES)} (default f16, as convert_hf_to_gguf.py); norms "
                        "stay f32; rows that are not multiples of 32 fall back to f16")
    p.add_argument("--token-embedding-type", default=None, metavar="TYPE",
                   help="type of token_embd (the tied output head); default: the --type, q8_0 for q4_0")
    p.add_argument("--name", default=None, help="general.name (default: the source folder's name)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)


def register(subparsers) -> None:
    register_quantize(subparsers)
    register_convert(subparsers)
