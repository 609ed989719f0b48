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


# --- generate / chat / mask on a tiny model with the committed tiny Command-R tokenizer ------------
import json  # noqa: E402

import numpy as np  # noqa: E402

from helpers import write_chat_model  # noqa: E402


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return write_chat_model(tmp_path_factory.mktemp("chat") / "m")


@pytest.fixture(scope="module")
def chat_model2(tmp_path_factory):
    return write_chat_model(tmp_path_factory.mktemp("chat2") / "m", "cohere2", sliding_window=3, num_hidden_layers=4)


def _run_in(stdin, *args):
    exe = shutil.which("pycohere")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "pycohere", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=180)


def test_generate_json_equals_the_python_api(chat_model):
    import pycohere
    r = _run("generate", "Hello world", "--model", str(chat_model), "-n", "6", "--json", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    tok = pycohere.CohereTokenizer.from_pretrained(chat_model)
    model = pycohere.AutoModelForCausalLM.from_pretrained(chat_model, backend="numpy")
    ids = tok.encode("Hello world")
    ref = model.generate([ids], max_new_tokens=6)[0, len(ids):]
    assert out["token_ids"] == ref.tolist() and out["prompt_tokens"] == len(ids)
    assert out["completion"] == tok.decode(ref.tolist(), skip_special_tokens=True)


def test_generate_reads_piped_stdin_and_streams(chat_model):
    r = _run_in("Plants create energy through a process known as\n", "generate", "--model", str(chat_model), "-n", "5",
                "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Plants create energy through a process known as")
    assert "5 tokens in" in r.stderr and "tokens/s" in r.stderr
    same = _run("generate", "Plants create energy through a process known as", "--model", str(chat_model), "-n", "5",
                "--backend", "numpy")
    assert same.stdout == r.stdout  # greedy: the argument and the pipe give the same text


def test_sampling_flags_are_reproducible(chat_model):
    args = ("generate", "Hi", "--model", str(chat_model), "-n", "8", "--do-sample", "--temperature", "1.5",
            "--top-k", "40", "--json")
    a = json.loads(_run(*args, "--seed", "1").stdout)["token_ids"]
    b = json.loads(_run(*args, "--seed", "1").stdout)["token_ids"]
    c = json.loads(_run(*args, "--seed", "2").stdout)["token_ids"]
    assert a == b and a != c


def test_chat_piped_with_commands(chat_model):
    r = _run_in("Hello\n/system Be brief\nHi again\n/reset\n/bogus\nBye\n/exit\nnever read\n", "chat",
                "--model", str(chat_model), "-n", "4")
    assert r.returncode == 0, r.stderr
    assert "[system message set; conversation reset]" in r.stderr
    assert "[conversation reset]" in r.stderr and "[unknown command /bogus" in r.stderr
    assert r.stdout.count("\n") == 3  # three answers, each ended by the streamer's newline


def test_mask_shows_the_sliding_window_panel(chat_model2):
    r = _run("mask", str(chat_model2), "Hello world, hi", "--no-color")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "3 sliding layers (RoPE, window 3), 1 full layers (NoPE)" in lines[0]
    assert "sliding window 3" in lines[2]
    row = next(l for l in lines if l.startswith("'i'"))
    full, sliding = row.split("|")
    assert full.count("■") == 7 and sliding.count("■") == 3  # causal sees all 7; the window only 3
    assert lines[4].startswith("'<BOS_TOKEN>'")


@pytest.mark.parametrize("args, message", [
    (("generate", "x", "--model", "/nonexistent/m"), "neither an existing file"),
    (("generate", "x", "--top-p", "2", "--model", "{chat}"), "top_p"),
    (("generate", "x", "-n", "-3", "--model", "{chat}"), "max_new_tokens"),
    (("generate", "x", "-n", "100000000", "--model", "{chat}"), "lower max_new_tokens to at most"),
    (("mask", "{chat}", "x", "--no-color"), None),
])
def test_generate_errors_one_line(chat_model, args, message):
    r = _run(*[a.replace("{chat}", str(chat_model)) for a in args])
    if message is None:
        assert r.returncode == 0
        return
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


# --- the same model flags on every command (README "Command line") ------------------------------
def _subparser(*names):
    from pycohere.cli.main import build_parser
    p = build_parser()
    for name in names:
        p = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return p


def _flags(*names):
    return {s for a in _subparser(*names)._actions for s in a.option_strings}


RUNS_A_MODEL = [("generate",), ("chat",), ("serve",), ("explain",), ("golden", "check")]
READS_A_CHECKPOINT = RUNS_A_MODEL + [("inspect",), ("mask",), ("golden", "make")]


def test_the_readme_lists_the_commands_that_take_the_model_flags():
    import re
    text = (ROOT / "README.md").read_text()
    sentence = re.search(r"Every command that runs a model \((.*?)\) takes", text, re.S).group(1)
    assert sorted(re.findall(r"`([a-z ]+)`", sentence)) == sorted(" ".join(c) for c in RUNS_A_MODEL)


@pytest.mark.parametrize("command", READS_A_CHECKPOINT, ids=" ".join)
def test_every_command_that_reads_a_checkpoint_takes_the_model_flags(command):
    flags = _flags(*command)
    assert {"--model", "-m"} <= flags
    if command in RUNS_A_MODEL:
        assert {"--dtype", "--backend"} <= flags
        p = _subparser(*command)
        dtype = next(a for a in p._actions if "--dtype" in a.option_strings)
        backend = next(a for a in p._actions if "--backend" in a.option_strings)
        assert set(dtype.choices) == {"float32", "float64"} and set(backend.choices) == {"auto", "numba", "numpy"}


def test_mask_inspect_and_explain_take_model_as_a_flag_or_an_argument(chat_model2):
    by_flag = _run("mask", "--model", str(chat_model2), "Hello world, hi", "--no-color")
    by_arg = _run("mask", str(chat_model2), "Hello world, hi", "--no-color")
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout == by_arg.stdout and "sliding window 3" in by_flag.stdout
    r = _run("inspect", "--model", str(DATA / "parity" / "cohere2_pattern4x"))
    assert r.returncode == 0 and "model_type cohere2" in r.stdout, r.stderr
    both = _run("inspect", str(DATA / "parity" / "gqa"), "--model", str(DATA / "parity" / "mqa"))
    assert both.returncode == 2 and "two checkpoints given" in both.stderr
    r = _run("explain", "--model", str(DATA / "parity" / "gqa"), "--ids", "5 17 33", "--dtype", "float32",
             "--backend", "numpy", "--layers", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith("float32")  # the header names the dtype the model ran in
    r = _run("explain", "--model", str(DATA / "parity" / "gqa"), "--ids", "5 17 33", "--layers", "0")
    assert r.returncode == 0 and r.stdout.splitlines()[0].endswith("float64"), r.stderr  # explain's default


def test_generate_a_hundred_million_tokens_is_one_line_and_no_output():
    """Was a raw ArrayMemoryError traceback (a 23.8 GiB cache allocation) on the demo model."""
    r = _run("generate", "x", "-n", "100000000")
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "max_new_tokens=100000000" in r.stderr and "GiB" in r.stderr and "at most" in r.stderr
