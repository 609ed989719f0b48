"""Per-token time of greedy decoding on the bundled demo model (4M parameters): the fixed cost of a step.

    python tools/demo_speed.py [numba|numpy] [N]     # N new tokens per repetition (default 200)

Prints the median per-step time over 5 repetitions (each the median of its N steps, timed between
successive tokens handed to a streamer), after one warm-up generation (JIT compile, caches).
Not a test: the numbers go to BENCHMARKS.md.
"""
import statistics, sys, time
import numpy as np
t0 = time.perf_counter()
import pycohere
backend = sys.argv[1] if len(sys.argv) > 1 else "numba"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
m = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, backend=backend)
tok = pycohere.CohereTokenizer.from_pretrained(pycohere.DEMO_MODEL)
ids = tok.encode("In the beginning")
class T:
    def __init__(s): s.t = []
    def put(s, v): s.t.append(time.perf_counter())
    def end(s): pass
m.generate([ids], max_new_tokens=8)  # warm JIT
res = []
for rep in range(5):
    st = T()
    m.generate([ids], max_new_tokens=n, streamer=st, eos_token_id=[])
    steps = np.diff(st.t[1:])
    res.append(statistics.median(steps))
print(f"{backend}: per-token median {1e3*statistics.median(res):.3f} ms (reps {', '.join(f'{1e3*r:.3f}' for r in res)}) -> {1/statistics.median(res):.0f} tok/s")
