"""Under CI=true a skipped test fails (tests/conftest.py): CI installs every oracle, so a skip means a broken
install. Checked on a throwaway test folder that uses this suite's conftest."""
import os
import shutil
import subprocess
import sys

from conftest import ROOT

SAMPLE = '''
import pytest

def test_skips():
    pytest.skip("the oracle is missing")

@pytest.mark.skipif(True, reason="a condition")
def test_skipif():
    pass

@pytest.mark.ci_may_skip("declared legitimate")
def test_declared():
    pytest.skip("allowed")

def test_passes():
    pass
'''


def _run(tmp_path, **env):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    full = {k: v for k, v in os.environ.items() if k not in ("CI", "NUMBA_DISABLE_JIT")}
    full.update(env)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
                       cwd=tmp_path, env=full, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout.splitlines()[-1], r.stdout


def test_skips_fail_under_ci_unless_declared(tmp_path):
    rc, summary, out = _run(tmp_path, CI="true")
    assert rc == 1, out
    assert "1 failed, 1 passed, 1 skipped, 1 error" in summary, out  # skipif is reported at set-up
    assert "test_skips was skipped under CI=true (Skipped: the oracle is missing)" in out
    assert "SKIPPED" in out and "allowed" in out  # the declared one stays a skip


def test_skips_are_skips_outside_ci_and_in_the_plain_python_run(tmp_path):
    for env in ({}, {"CI": "false"}, {"CI": "true", "NUMBA_DISABLE_JIT": "1"}):
        rc, summary, out = _run(tmp_path, **env)
        assert rc == 0 and "1 passed, 3 skipped" in summary, (env, out)


def test_a_module_level_importorskip_fails_under_ci(tmp_path):
    (tmp_path / "test_module.py").write_text('import pytest\npytest.importorskip("no_such_oracle_xyz")\n'
                                             'def test_a():\n    pass\n')
    rc, summary, out = _run(tmp_path, CI="true")
    assert rc != 0 and "test_module.py was skipped under CI=true" in out, out
