"""Loading a bf16 checkpoint maps it; it does not copy it into RAM."""
import json
import subprocess
import sys

from conftest import ROOT
from make_synthetic_checkpoint import write


def test_loading_a_200mb_bf16_checkpoint_raises_rss_by_under_10_percent(tmp_path):
    folder = write(tmp_path / "ckpt", hidden=1024, intermediate=2048, layers=2, heads=8, kv_heads=2, vocab=100_000)
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "memory_probe.py"), str(folder)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    size = r["checkpoint_bytes"]
    assert size >= 200e6
    growth = r["rss_after_load"] - r["rss_before"]
    assert growth < 0.10 * size, f"loading grew RSS by {growth / 1e6:.1f} MB for a {size / 1e6:.0f} MB file"
