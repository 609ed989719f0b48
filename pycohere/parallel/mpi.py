"""The MPI communicator: one process per rank, through mpi4py (the optional extra ``pycohere[mpi]``).

mpi4py is imported when a communicator is made, never by importing pycohere. MPICH's wheel from PyPI
(``pip install mpich mpi4py``) brings ``mpiexec``; it runs as root without flags (Open MPI refuses to
unless told ``--allow-run-as-root``).

No collective may hang. Each one is started non-blocking (``Iallgatherv``, ``Igatherv``, ``Ibcast``) and
polled, and while it waits the rank also watches for:

* a failure message from another rank (``fail``: a rank whose own work raised sends its error to every
  other rank on a reserved tag before raising it): RankFailedError naming that rank and its error;
* SIGUSR1, which MPICH's ``mpiexec -disable-auto-cleanup`` sends to the survivors when a rank dies
  (without that flag mpiexec kills the whole job itself);
* the timeout (``timeout`` seconds, default ``PYCOHERE_TP_TIMEOUT`` or 300): RankTimeoutError.

Polling spins on ``Test`` first (as fast as a blocking call: 48 KB all-gather in ~48 us on this
machine, BENCHMARKS.md), then sleeps in growing steps, so an idle rank waiting for the next prompt of a
chat costs no CPU.
"""
from __future__ import annotations

import atexit
import os
import signal
import threading
import time

import numpy as np

from ..errors import MissingExtraError, RankFailedError, RankTimeoutError
from .comm import Communicator
from .wire import decode, encode

DEFAULT_TIMEOUT = 300.0
ABORT_TAG = 31_337
ABORT_BYTES = 1 << 14  # a failure message (truncated to fit)
SPIN_SECONDS = 0.01    # busy polling before sleeping


def import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise MissingExtraError(f"tensor parallelism over MPI needs mpi4py and an MPI library ({e}): "
                                "pip install 'pycohere[mpi]' (mpi4py with the MPICH wheel), then run "
                                "mpiexec -n N pycohere generate --tp ...") from None
    return MPI


class MPICommunicator(Communicator):
    """The ranks of an MPI communicator (default: ``COMM_WORLD``), one per process; see the module docstring."""

    def __init__(self, comm=None, timeout: float | None = None):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = (comm if comm is not None else MPI.COMM_WORLD).Dup()  # our own traffic, apart from the user's
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_ranks = (self.rank,)
        env = os.environ.get("PYCOHERE_TP_TIMEOUT")
        self.timeout = float(timeout if timeout is not None else env if env else DEFAULT_TIMEOUT)
        self.poisoned = False
        self._peer_died = False
        self._abort_buf = bytearray(ABORT_BYTES)
        self._abort_req = self.comm.Irecv([self._abort_buf, MPI.BYTE], source=MPI.ANY_SOURCE, tag=ABORT_TAG)
        self._install_sigusr1()
        atexit.register(self._close)

    def __repr__(self) -> str:
        return f"MPICommunicator(rank {self.rank} of {self.size})"

    # --- failure detection ---------------------------------------------------------------------------
    def _install_sigusr1(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # (signals can only be handled in the main thread)
        previous = signal.getsignal(signal.SIGUSR1)

        def handler(signum, frame):
            self._peer_died = True
            if callable(previous):
                previous(signum, frame)
        signal.signal(signal.SIGUSR1, handler)

    def _check_peers(self, what: str) -> None:
        status = self.MPI.Status()
        if self._abort_req.Test(status):
            self.poisoned = True
            n = status.Get_count(self.MPI.BYTE)
            try:
                rank, kind, message = decode(bytes(self._abort_buf[:n]))
            except Exception:  # a truncated message: say what can be said
                rank, kind, message = status.Get_source(), "error", "(message lost)"
            raise RankFailedError(f"rank {rank} failed ({kind}: {message}); rank {self.rank} stops too "
                                  f"(it was {what})")
        if self._peer_died:
            self.poisoned = True
            raise RankFailedError(f"a rank of the group died (mpiexec reported a failed process); rank "
                                  f"{self.rank} stops too (it was {what})")

    def _wait(self, req, what: str, wait: bool = True) -> None:
        """Poll ``req`` until done; RankFailedError / RankTimeoutError instead of waiting forever."""
        if req.Test():
            return
        start = time.monotonic()
        nap = 1e-4
        while True:
            for _ in range(256):
                if req.Test():
                    return
            now = time.monotonic() - start
            self._check_peers(what)
            if wait and now > self.timeout:
                self.poisoned = True
                raise RankTimeoutError(
                    f"rank {self.rank} waited {self.timeout:.0f} s for the other ranks while {what}; a rank is "
                    "stuck or died. Raise the limit with PYCOHERE_TP_TIMEOUT=seconds if a step is that slow")
            if now > SPIN_SECONDS:
                time.sleep(nap)
                nap = min(nap * 2, 0.05)

    def fail(self, exc: BaseException) -> None:
        if self.poisoned or self.size == 1:
            return
        self.poisoned = True
        text = str(exc)
        payload = encode((self.rank, type(exc).__name__, text))
        while len(payload) > ABORT_BYTES:
            text = text[:len(text) // 2] + " [...]"
            payload = encode((self.rank, type(exc).__name__, text))
        reqs = [self.comm.Isend([payload, self.MPI.BYTE], dest=r, tag=ABORT_TAG)
                for r in range(self.size) if r != self.rank]
        deadline = time.monotonic() + 2.0  # small messages go eagerly; do not wait on a dead peer
        while not self.MPI.Request.Testall(reqs) and time.monotonic() < deadline:
            time.sleep(1e-3)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (MPI_Abort): what is left when a rank is stuck and cannot be told."""
        self.comm.Abort(code)

    def _close(self) -> None:
        try:
            if not self.MPI.Is_finalized():
                self._abort_req.Cancel()
                self._abort_req.Free()
        except Exception:  # pragma: no cover - at interpreter exit, best effort
            pass

    # --- collectives -----------------------------------------------------------------------------------
    def _vector(self, local, shapes):
        send = np.ascontiguousarray(local[0])
        counts = [int(np.prod(s)) for s in shapes]
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        recv = np.empty(sum(counts), dtype=send.dtype)
        return send, [recv, (counts, displs)], counts, displs, recv

    @staticmethod
    def _split(recv, counts, displs, shapes):
        return [recv[d:d + c].reshape(s) for c, d, s in zip(counts, displs, shapes)]

    def allgather(self, local, shapes):
        send, spec, counts, displs, recv = self._vector(local, shapes)
        self._wait(self.comm.Iallgatherv(send, spec), "exchanging partial sums")
        return self._split(recv, counts, displs, shapes)

    def gather(self, local, shapes):
        send, spec, counts, displs, recv = self._vector(local, shapes)
        self._wait(self.comm.Igatherv(send, spec if self.rank == 0 else None, root=0), "gathering logits")
        return self._split(recv, counts, displs, shapes) if self.rank == 0 else None

    def bcast_obj(self, obj=None, wait: bool = True):
        data = encode(obj) if self.rank == 0 else b""
        n = np.array([len(data)], dtype=np.int64)
        self._wait(self.comm.Ibcast(n, root=0), "waiting for rank 0", wait)
        buf = bytearray(data) if self.rank == 0 else bytearray(int(n[0]))
        self._wait(self.comm.Ibcast([buf, self.MPI.BYTE], root=0), "receiving from rank 0")
        return obj if self.rank == 0 else decode(bytes(buf))

    def allgather_obj(self, obj):
        data = np.frombuffer(encode(obj), dtype=np.uint8)
        sizes = np.empty(self.size, dtype=np.int64)
        self._wait(self.comm.Iallgather(np.array([data.size], dtype=np.int64), sizes), "agreeing with the other ranks")
        parts = self.allgather([data], [(int(s),) for s in sizes])
        return [decode(p.tobytes()) for p in parts]
