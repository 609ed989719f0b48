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


# --- the README's lists, checked against the code (issue 13: "every claim true") ----------------------
def _backticked(after: str, until: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    return re.findall(r"`([\w.\-|]+)`", text[start:text.index(until, start)])


def _param_names(fn) -> set[str]:
    import inspect
    return set(inspect.signature(fn).parameters)


def test_the_named_exceptions_exist():
    import pycohere.errors as E
    names = [n for n in _backticked("Bad input raises a named exception", "## Quantized") if n.endswith("Error")]
    assert len(names) >= 10 and all(issubclass(getattr(E, n), E.PycohereError) for n in names), names


def test_the_forward_generate_and_from_pretrained_arguments_exist():
    from pycohere.model.modeling import CohereForCausalLM
    text = (ROOT / "README.md").read_text()
    forward = re.search(r"`model\(\.\.\.\)` takes `([^`]+)`", text).group(1)
    forward = re.sub(r"\s", "", forward).split(",")
    assert set(forward) <= _param_names(CohereForCausalLM.__call__), set(forward) - _param_names(CohereForCausalLM.__call__)
    gen = re.search(r"`generate` takes transformers' arguments: `(.*?)`\.", text, re.S).group(1)
    gen_names = {w.strip().split(" ")[0].split("=")[0] for w in re.split(r",|/", gen.replace("\n", " "))}
    assert {"max_new_tokens", "seed", "rng", "stop_strings", "cache_implementation"} <= gen_names
    assert gen_names <= _param_names(CohereForCausalLM.generate), gen_names - _param_names(CohereForCausalLM.generate)
    options = {"dtype", "backend", "materialize", "revision", "cache_dir", "local_files_only", "quantization_config",
               "load_in_8bit", "gguf_file"}
    for name in options:
        assert re.search(rf"\b{name}\b", text), name  # named in the README ...
    assert options <= _param_names(CohereForCausalLM.from_pretrained)  # ... and taken by from_pretrained


def test_the_quantize_and_convert_choices_are_the_codes():
    from pycohere.export.gguf import FILE_TYPES
    from pycohere.quant.config import quantizable_schemes
    text = (ROOT / "README.md").read_text()
    schemes = re.search(r"--scheme ([\w|\-]+)", text).group(1).split("|")
    assert sorted(schemes) == sorted(quantizable_schemes())
    types = re.search(r"DST\.gguf --type ([\w|]+)", text).group(1).split("|")
    assert sorted(types) == sorted(FILE_TYPES)


def test_the_demo_model_is_as_described():
    import json
    import math
    from safetensors import safe_open
    text = (ROOT / "README.md").read_text()
    c = json.loads((ROOT / "pycohere" / "demo" / "config.json").read_text())
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"],
            c["intermediate_size"], c["vocab_size"]) == (256, 4, 8, 2, 768, 4096)
    assert c["use_qk_norm"] and c["tie_word_embeddings"] and c["logit_scale"] == 1.0
    assert "hidden 256, 4 layers, 8 query / 2 key-value heads" in text and "intermediate 768" in text
    n = 0
    for f in (ROOT / "pycohere" / "demo").glob("*.safetensors"):
        with safe_open(str(f), "numpy") as h:
            n += sum(math.prod(h.get_slice(k).get_shape()) for k in h.keys())
    assert f"**{n:,} parameters**" in text
