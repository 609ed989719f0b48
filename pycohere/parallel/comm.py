"""Communicators: how the ranks of a tensor-parallel group exchange arrays and small messages.

A group has ``size`` ranks; a process computes the shards of its ``local_ranks``: all of them in
``LocalGroup`` (the N shards run one after another in this one process: the test suite's group, and
the reference the MPI run must agree with), one in ``pycohere.parallel.mpi.MPICommunicator`` (a process
per rank under ``mpiexec``). Every collective takes the list of this process's local arrays, in rank
order, so the model code is the same for both:

* ``allgather(local, shapes)`` -> every rank's array, in rank order, on every process;
* ``gather(local, shapes)`` -> the same on the root process (rank 0), None elsewhere;
* ``bcast_obj`` / ``allgather_obj``: small plain-data objects (``parallel.wire``: JSON and arrays, never
  pickle) between *processes* (commands of the
  decode loop, load status, checkpoint fingerprints).

Sums are built on top: :func:`sum_in_rank_order` adds the gathered arrays rank 0 first. ``MPI_Allreduce``
would be one call, but the MPI standard leaves the order of a reduction to the library (it only advises
the same result for the same arguments); its algorithm changes with message size and rank count, so
the last bits of the logits could change between runs of different shapes. All-gather and a local sum
in a fixed order give the same bits every run, on every rank, for ``LocalGroup`` and MPI alike (the
approach of distributed-llama: gather the partial vectors, merge locally).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod

import numpy as np

from ..errors import RankFailedError


def sum_in_rank_order(parts: list[np.ndarray]) -> np.ndarray:
    """parts[0] + parts[1] + ... evaluated left to right (a fixed order: reproducible bits)."""
    total = np.array(parts[0], copy=True)
    for p in parts[1:]:
        total += p
    return total


class Communicator(ABC):
    """The collectives the tensor-parallel model needs (see the module docstring)."""

    size: int                       # ranks in the group (the tensor-parallel degree N)
    local_ranks: tuple[int, ...]    # the ranks whose shards this process computes
    poisoned: bool = False          # a rank failed mid-collective: the group cannot be used again

    @property
    def is_root(self) -> bool:
        """Whether this process holds rank 0 (it samples, prints and drives the decode loop)."""
        return 0 in self.local_ranks

    @property
    def has_peers(self) -> bool:
        """Whether other processes hold some of the ranks (then rank 0 drives them with commands)."""
        return len(self.local_ranks) < self.size

    @property
    def processes(self) -> int:
        return self.size // len(self.local_ranks)

    @abstractmethod
    def allgather(self, local: list[np.ndarray], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        """Every rank's array (``shapes[r]`` is rank r's shape; one dtype), in rank order."""

    @abstractmethod
    def gather(self, local: list[np.ndarray], shapes: list[tuple[int, ...]]) -> list[np.ndarray] | None:
        """As ``allgather``, delivered to the root process only (None on the others)."""

    @abstractmethod
    def bcast_obj(self, obj=None, wait: bool = True):
        """The root's ``obj`` on every process. ``wait=False``: no timeout (an idle rank waiting for work)."""

    @abstractmethod
    def allgather_obj(self, obj) -> list:
        """One object per process, in process (rank) order."""

    def fail(self, exc: BaseException) -> None:
        """Tell the other processes that this one failed with ``exc`` (they raise RankFailedError)."""

    @contextlib.contextmanager
    def guard(self):
        """Around work between collectives: a failure here is sent to the other ranks before it is
        raised, so they stop with a named error instead of waiting for this rank forever."""
        try:
            yield
        except RankFailedError:
            raise  # (the peers know already: it came from one of them)
        except BaseException as e:
            self.fail(e)
            raise

    def agree(self, fn, what: str):
        """``fn()`` on every process, then every process learns whether all succeeded: the failing ones
        raise their own error, the others RankFailedError naming the first failing rank. Returns the
        results of every process (a list) when all succeeded."""
        try:
            result, error = fn(), None
        except Exception as e:
            result, error = None, e
        status = self.allgather_obj((error is None, result if error is None else f"{type(error).__name__}: {error}"))
        if error is not None:
            raise error
        failed = [(p, msg) for p, (ok, msg) in enumerate(status) if not ok]
        if failed:
            p, msg = failed[0]
            raise RankFailedError(f"rank {p * len(self.local_ranks)} failed while {what}: {msg}")
        return [r for _, r in status]


class LocalGroup(Communicator):
    """``size`` ranks in this one process, computed one after another: what ``allgather`` returns is the
    local list itself. The reference for the MPI run (same shards, same reduction order)."""

    def __init__(self, size: int):
        from ..errors import ShardingError
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ShardingError(f"a tensor-parallel group needs a size >= 1, got {size!r}")
        self.size = int(size)
        self.local_ranks = tuple(range(self.size))

    def allgather(self, local, shapes):
        return list(local)

    def gather(self, local, shapes):
        return list(local)

    def bcast_obj(self, obj=None, wait: bool = True):
        return obj

    def allgather_obj(self, obj):
        return [obj]

    def __repr__(self) -> str:
        return f"LocalGroup({self.size})"
