"""Run under ``mpiexec`` by tests/test_parallel_mpi.py (not a test module itself).

    tp_rank.py compare OUT.json CKPT...     every checkpoint over MPI vs the single-process spec and LocalGroup
    tp_rank.py fault MODE ARGS...           pycohere's CLI with rank 1 failing in its 5th layer call
                                            (MODE: raise | kill | hang)
    tp_rank.py memory OUT.json CKPT         VmHWM of each rank after loading and one forward
"""
import json
import os
import signal
import sys
import time

import numpy as np

IDS = np.array([[5, 17, 30, 42, 7, 9, 11, 3, 25, 8]])


def vm(field):
    return int([l for l in open("/proc/self/status") if l.startswith(field)][0].split()[1]) * 1024


def compare(out, paths):
    from pycohere.model import AutoModelForCausalLM
    from pycohere.parallel import from_pretrained
    rows = []
    for path in paths:
        model = from_pretrained(path, "mpi", backend="numba")
        comm = model.comm
        logits = model(IDS).logits
        tokens = model.generate(IDS, max_new_tokens=6, do_sample=False)
        seen = comm.allgather_obj(tokens.tolist())
        if comm.is_root:
            ref = AutoModelForCausalLM.from_pretrained(path, backend="numpy")
            want = ref(IDS).logits
            local = from_pretrained(path, comm.size, backend="numba")(IDS).logits
            rows.append({"path": str(path), "size": comm.size,
                         "rel": float(np.abs(logits - want).max() / np.abs(want).max()),
                         "same_as_local_group": bool(np.array_equal(logits, local)),
                         "tokens": tokens.tolist(), "reference_tokens": ref.generate(IDS, max_new_tokens=6).tolist(),
                         "every_rank_saw": seen})
    if rows:
        with open(out, "w") as f:
            json.dump(rows, f)


def fault(mode, argv):
    import pycohere.parallel.model as pm
    from pycohere.cli import main
    rank, calls, original = int(os.environ.get("PMI_RANK", "0")), [0], pm.rank_layer

    def faulty(*args, **kwargs):
        calls[0] += 1
        if rank == 1 and calls[0] == 5:
            if mode == "raise":
                raise MemoryError("simulated failure on rank 1")
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(600)
        return original(*args, **kwargs)
    pm.rank_layer = faulty
    sys.exit(main(argv))


def memory(out, path):
    from pycohere.parallel import from_pretrained
    model = from_pretrained(path, "mpi", backend="numba")  # (the NumPy spec's widened chunks scale with 1/N too)
    model(IDS[:, :2])
    hwm = model.comm.allgather_obj(vm("VmHWM"))
    if model.comm.is_root:
        with open(out, "w") as f:
            json.dump(hwm, f)


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "compare":
        compare(sys.argv[2], sys.argv[3:])
    elif what == "fault":
        fault(sys.argv[2], sys.argv[3:])
    elif what == "memory":
        memory(sys.argv[2], sys.argv[3])
