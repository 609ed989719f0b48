"""Golden jobs on Dask distributed (the optional extra ``pycohere[dask]``): ``pycohere golden make ...
--scheduler local`` starts a ``LocalCluster`` on this machine, ``--scheduler tcp://host:8786`` uses a
running scheduler (start one with ``dask scheduler`` and workers with ``dask worker tcp://host:8786
--nthreads 1`` on each machine; every worker must reach the checkpoints by the same path, or by hub id).

Workers run the task functions of ``pycohere.golden.job``; each keeps its loaded checkpoint between tasks.
Dask reschedules the task of a worker that dies (its nanny restarts the process) up to the scheduler's
``distributed.scheduler.allowed-failures`` (default 3); ``retries`` more attempts are given to tasks that
raise. Results come back to the client, which alone writes the store and the bundles, so the workers need
no shared filesystem for the output.
"""
from __future__ import annotations

import contextlib
import os

from ..errors import InputError, MissingExtraError, ParallelError

RETRIES = 2


class DaskExecutor:
    """``submit`` / ``as_completed`` (the executor protocol of ``pycohere.golden.job``) over a Dask client."""

    def __init__(self, client, retries: int = RETRIES):
        import distributed
        self.client, self.retries, self._as_completed = client, retries, distributed.as_completed

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False, retries=self.retries)

    def as_completed(self, futures):
        return self._as_completed(futures)


def blas_threads() -> dict:
    """The BLAS thread settings of this process, for workers that must compute its bytes: the variables
    as set here, else the core count (OpenBLAS's and MKL's default)."""
    n = str(os.cpu_count() or 1)
    return {k: os.environ.get(k, n) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


@contextlib.contextmanager
def dask_executor(scheduler: str, workers: int | None = None):
    """A ``DaskExecutor`` for ``scheduler`` ("local" or a scheduler address), closed on exit."""
    try:
        import distributed
    except ImportError as e:
        raise MissingExtraError(f"--scheduler runs the job on Dask distributed, which is not installed ({e}): "
                                "pip install 'pycohere[dask]'") from None
    cluster = None
    if scheduler == "local":
        n = workers or os.cpu_count() or 1
        # One task thread per worker process: the processes are the parallelism. BLAS keeps this process's
        # thread count: Dask's nanny sets OMP/MKL/OPENBLAS_NUM_THREADS=1 for its workers by default
        # (distributed.nanny.pre-spawn-environ), and OpenBLAS's float64 sums then split differently from
        # a serial run's, so the bundles were not byte-identical to `golden make` without --scheduler.
        # (set before the worker process starts: BLAS reads them when NumPy loads it, before `env` applies)
        import dask
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in blas_threads().items()}):
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                               dashboard_address=None, env={"NUMBA_NUM_THREADS": "1"})
        target = cluster
    elif "://" in scheduler:
        target = scheduler
    else:
        raise InputError(f"--scheduler {scheduler!r}: use 'local' (a cluster on this machine) or a Dask scheduler "
                         "address such as tcp://host:8786")
    try:
        client = distributed.Client(target, timeout="30s")
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise ParallelError(f"cannot reach the Dask scheduler at {scheduler} ({e}); start it with `dask scheduler` "
                            "and workers with `dask worker ADDRESS`, or use --scheduler local") from None
    try:
        yield DaskExecutor(client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
