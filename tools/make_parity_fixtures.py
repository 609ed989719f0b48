"""Write the committed parity fixtures: tiny checkpoints + transformers' logits (run with the oracle extra).

    python tools/make_parity_fixtures.py [--out tests/data/parity] [--cases a,b,...]

Each case folder holds the checkpoint exactly as transformers saved it (config.json + safetensors) and
``expected.npz`` with input_ids, attention_mask and transformers' float32 logits; ``provenance.json`` in
the root records the tool, versions and seeds. tests/test_parity_fixtures.py checks pycohere against
them without torch.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle  # noqa: E402

FIXTURE_CASES = ["gqa", "mqa", "qk_norm", "attn_bias", "gelu", "untied", "rope_dynamic", "rope_yarn",
                 "rope_longrope", "rope_llama3", "schema4_type_linear", "bf16", "f16", "sharded", "left_padded",
                 "cohere2_layer_types", "cohere2_pattern4x"]
SEED = 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "parity"))
    ap.add_argument("--cases", default=",".join(FIXTURE_CASES))
    args = ap.parse_args(argv)
    out = Path(args.out)
    cases = args.cases.split(",")
    for name in cases:
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        hf = oracle.save_case(name, folder, seed=SEED)
        ids, mask = oracle.case_inputs(name, seed=SEED)
        padded = oracle.CASES[name][6]
        logits = oracle.hf_forward(hf, ids, mask if padded else None).logits.numpy()
        np.savez_compressed(folder / "expected.npz", input_ids=ids, attention_mask=mask,
                            use_mask=np.array(padded), logits=logits.astype(np.float32))
        print(f"{name}: logits {logits.shape}, max |logit| {np.abs(logits).max():.3f}")
    prov = {"tool": "tools/make_parity_fixtures.py", "seed": SEED, "versions": oracle.versions(),
            "cases": {n: {"model_type": oracle.CASES[n][0], "overrides": oracle.CASES[n][1],
                          "storage": oracle.CASES[n][2], "schema": oracle.CASES[n][3],
                          "sharded": oracle.CASES[n][4]} for n in cases},
            "weights": "oracle.redraw_: matrices N(0, 0.15), norms 1 + U(-0.1, 0.1), biases N(0, 0.1)"}
    (out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")


if __name__ == "__main__":
    main()
