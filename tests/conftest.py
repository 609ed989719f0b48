import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# tools/ holds the oracle helpers and fixture scripts that tests share.
sys.path.insert(0, str(ROOT / "tools"))
DATA = Path(__file__).resolve().parent / "data"


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Oracle tests on tiny models: torch's thread pool only adds overhead, and on a shared 2-core
    machine it makes small matmuls 10-100x slower. Restored after the module."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_passes_without_jit(test_file) -> None:
    """Re-run a kernel test file as plain Python (NUMBA_DISABLE_JIT=1): the kernels must stay debuggable."""
    import os
    import subprocess
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
