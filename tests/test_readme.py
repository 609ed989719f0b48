"""The README's Python example runs as written (on the bundled demo model)."""
import re

from conftest import ROOT


def test_readme_python_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["out"].logits.shape[-1] == namespace["model"].config.vocab_size
    assert namespace["rec"]["layers.0.q_rope"].ndim == 4
    assert capsys.readouterr().out.strip()  # the decoded text and the streamed answer were printed


# --- the set-up section: the two commands .ci/run runs verbatim ------------------------------------
def _setup_commands():
    import readme_commands  # tools/
    return readme_commands.setup_commands()


def test_the_readme_has_the_two_setup_commands_ci_runs():
    first, second = _setup_commands()
    assert first.startswith("pip install . ") and 'pycohere generate "In the beginning"' in first
    assert "-e " in second and second.endswith("python -m pytest -q tests")


def _extras():
    """[project.optional-dependencies] of pyproject.toml: extra -> requirement names (no tomllib on 3.10)."""
    import ast
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("[project.optional-dependencies]")[1].split("\n[")[0]
    found = {}
    for name, items in re.findall(r"^(\w+) = (\[.*?\])[ \t]*$", block, re.S | re.M):
        found[name] = {re.split(r"[<>=\[; ]", r, 1)[0].lower() for r in ast.literal_eval(items)}
    return found


# module a test imports or importorskips -> the distribution that provides it
PROVIDED_BY = {"torch": "torch", "transformers": "transformers", "gguf": "gguf", "bitsandbytes": "bitsandbytes",
               "distributed": "dask", "mpi4py": "mpi4py", "openai": "openai", "prometheus_client": "prometheus_client",
               "starlette": "starlette", "uvicorn": "uvicorn"}
NOT_PACKAGES = {"no_such_oracle_xyz"}  # tests/test_ci_skips.py's sample of a missing module


def test_the_readme_test_command_installs_everything_the_tests_import():
    second = _setup_commands()[1]
    extras = re.search(r'-e "\.\[([a-z,]+)\]"', second).group(1).split(",")
    table = _extras()
    installed = set().union(*(table[e] for e in extras)) | set(re.findall(r'"(\w+)==', second))
    wanted = set()
    for path in (ROOT / "tests").glob("*.py"):
        wanted |= {m.split(".")[0] for m in re.findall(r'importorskip\("([\w.]+)"', path.read_text())}
    assert wanted - NOT_PACKAGES <= set(PROVIDED_BY), wanted - NOT_PACKAGES - set(PROVIDED_BY)
    missing = {PROVIDED_BY[m] for m in wanted - NOT_PACKAGES} - installed
    assert not missing, f"the README's test command does not install {sorted(missing)}"
    assert "mpich" in installed  # tests/test_parallel_mpi.py runs the wheel's mpiexec
