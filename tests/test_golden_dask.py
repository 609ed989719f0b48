"""Golden bundles as a batch job (pycohere.golden.job, pycohere.parallel.golden_dask): several checkpoints x a
prompts file, serial or on a local Dask cluster, byte-identical to one `golden make` per checkpoint; finished
tasks found again on a rerun; a worker that dies has its task run again. Needs the ``pycohere[dask]`` extra."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import pycohere
from pycohere import errors, golden
from pycohere.cli import golden as golden_cli
from pycohere.golden.job import GoldenJob, SerialExecutor, TaskStore

from helpers import write_chat_model

PROMPTS = "In the beginning\nAnd the LORD said\nHello\nThe end of days\nfive loaves\n"
OPTIONS = ["--generate", "2", "--taps", "layers.0.*,norm,logits"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("gjob")
    (root / "p.txt").write_text(PROMPTS)
    models = [shutil.copytree(pycohere.DEMO_MODEL, root / "demo"), write_chat_model(root / "tiny", use_qk_norm=True)]
    serial = {}
    for m in models:  # today's command, one checkpoint at a time: the reference bytes
        assert golden_cli.main(["make", str(m), "--prompts", str(root / "p.txt"), "-o", str(root / "one" / m.name),
                                *OPTIONS]) == 0
        serial[m.name] = root / "one" / m.name
    return root, models, serial


def same_bytes(a: Path, b: Path) -> None:
    for name in golden.BUNDLE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), (a, name)


def test_several_checkpoints_in_one_serial_job_equal_one_make_each(job, capsys):
    root, models, serial = job
    assert golden_cli.main(["make", *map(str, models), "--prompts", str(root / "p.txt"), "-o", str(root / "multi"),
                            "--chunk", "2", *OPTIONS]) == 0
    for m in models:
        same_bytes(root / "multi" / m.name, serial[m.name])
    assert "wrote" in capsys.readouterr().out


class LastFirst(SerialExecutor):
    """Tasks complete in the reverse of the order they were submitted (as on a cluster, any order)."""

    @staticmethod
    def as_completed(futures):
        return reversed(list(futures))


def test_the_order_tasks_finish_in_changes_nothing(job, tmp_path):
    root, models, serial = job
    texts = golden_cli.read_prompts_file(root / "p.txt")
    g = GoldenJob([str(m) for m in models], tmp_path / "out", texts, None, ["layers.0.*", "norm", "logits"], 2,
                  chunk=2)
    for path, _, ran, found in g.run(LastFirst):
        assert (ran, found) == (3, 0)
        same_bytes(path, serial[path.name])


def test_a_local_dask_cluster_gives_the_same_bytes_and_a_rerun_finds_every_task(job, capsys):
    pytest.importorskip("distributed")
    root, models, serial = job
    args = ["make", *map(str, models), "--prompts", str(root / "p.txt"), "-o", str(root / "dask"), "--chunk", "2",
            *OPTIONS]
    assert golden_cli.main(args + ["--scheduler", "local", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("3 task(s) run, 0 found") == 2, out  # 5 prompts in chunks of 2, per checkpoint
    for m in models:
        same_bytes(root / "dask" / m.name, serial[m.name])
    store = root / "dask.tasks"
    assert len([p for p in store.iterdir() if not p.name.startswith(".")]) == 6
    # a rerun (here in this process, on the same store) runs nothing; one task lost is run again
    shutil.rmtree(sorted(store.iterdir())[0])
    assert golden_cli.main(args + ["--cache", str(store)]) == 0
    out = capsys.readouterr().out
    assert "1 task(s) run, 2 found" in out and "0 task(s) run, 3 found" in out, out
    for m in models:
        same_bytes(root / "dask" / m.name, serial[m.name])


def test_a_worker_that_dies_has_its_task_run_again(job, tmp_path):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    import golden_faults
    from pycohere.parallel.golden_dask import dask_executor
    cloudpickle.register_pickle_by_value(golden_faults)
    root, models, serial = job
    texts = golden_cli.read_prompts_file(root / "p.txt")
    marker = tmp_path / "died"
    g = GoldenJob([str(models[0])], tmp_path / "out", texts, None, ["layers.0.*", "norm", "logits"], 2, chunk=5,
                  store=TaskStore(tmp_path / "store"), task=golden_faults.dies_once(str(marker)))
    with dask_executor("local", 1) as executor:
        (path, bundle, ran, found), = g.run(executor)
    assert marker.read_text() == "died" and ran == 1 and found == 0
    same_bytes(path, serial[models[0].name])
    assert distributed  # (imported for the skip above)


def test_job_errors_are_named(job, tmp_path):
    root, models, _ = job
    with pytest.raises(errors.InputError, match="two checkpoints are named 'demo'"):
        golden_cli.cmd_make(_args([models[0], models[0]], root, tmp_path))
    with pytest.raises(errors.InputError, match="--scheduler 'nowhere'"):
        golden_cli.cmd_make(_args(models, root, tmp_path, scheduler="nowhere"))
    with pytest.raises(errors.ParallelError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        pytest.importorskip("distributed")
        golden_cli.cmd_make(_args(models, root, tmp_path, scheduler="tcp://127.0.0.1:9"))


def _args(models, root, tmp_path, scheduler=None):
    import argparse
    return argparse.Namespace(model=[str(m) for m in models], ids=None, prompts=str(root / "p.txt"),
                              output=str(tmp_path / "o"), taps=None, generate=0, top_k=5,
                              max_attn_bytes=golden.DEFAULT_MAX_ATTN_BYTES, timestamp=False, scheduler=scheduler,
                              workers=1, chunk=4, cache=None)
