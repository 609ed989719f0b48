"""The console script, run for real in a subprocess."""
import shutil
import subprocess
import sys

import pytest

from conftest import DATA, ROOT


def _run(*args):
    exe = shutil.which("pycohere")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "pycohere", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_inspect_cohere2_checkpoint():
    r = _run("inspect", str(DATA / "parity" / "cohere2_pattern4x"))
    assert r.returncode == 0, r.stderr
    assert "model_type cohere2" in r.stdout
    assert "2 sliding (window 6) + 2 full (NoPE) layers" in r.stdout
    assert "model.layers.0.self_attn.k_proj.weight  [8, 32]          BF16" in r.stdout
    assert "parameters 38,080" in r.stdout


@pytest.mark.parametrize("args, message", [
    (("inspect", "/nonexistent/model"), "no config.json"),
])
def test_errors_are_one_line_and_exit_2(args, message):
    r = _run(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_debug_shows_traceback():
    r = _run("--debug", "inspect", "/nonexistent/model")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_python_dash_m_prints_help():
    r = subprocess.run([sys.executable, "-m", "pycohere"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "inspect" in r.stdout
