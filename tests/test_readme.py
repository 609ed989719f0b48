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
