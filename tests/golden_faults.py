"""A task for tests/test_golden_dask.py that kills its Dask worker the first time (sent to the workers by
value with cloudpickle, so they need not import the tests folder)."""
import os
from pathlib import Path

from pycohere.golden.job import run_chunk


def dies_once(marker: str):
    def task(*args):
        flag = Path(marker)
        if not flag.exists():
            flag.write_text("died")
            os._exit(1)  # the worker process ends mid-task, as a crashed or killed machine would
        return run_chunk(*args)
    return task
