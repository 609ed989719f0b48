"""Time from process start to the first generated token (run it with `time`, or read its own report).

    python tools/first_token.py [--ckpt /tmp/pycohere-bench-ckpt] [--prompt-tokens 8]

Prints seconds since interpreter start (import + load + prefill + one token). Run twice: the first run
after a change of pycohere/kernels.py also pays Numba's compile (cache=True stores it for later runs).
"""
import time

T0 = time.perf_counter()
import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="/tmp/pycohere-bench-ckpt")
    ap.add_argument("--prompt-tokens", type=int, default=8)
    a = ap.parse_args()
    import pycohere
    t_import = time.perf_counter() - T0
    model = pycohere.AutoModelForCausalLM.from_pretrained(a.ckpt)
    t_load = time.perf_counter() - T0
    ids = np.random.default_rng(0).integers(10, model.config.vocab_size, size=(1, a.prompt_tokens))
    model.generate(ids, max_new_tokens=1)
    print(json.dumps({"import_s": round(t_import, 2), "loaded_s": round(t_load, 2),
                      "first_token_s": round(time.perf_counter() - T0, 2)}))


if __name__ == "__main__":
    main()
