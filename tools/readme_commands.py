#!/usr/bin/env python
"""The README's set-up commands, read from README.md so that CI runs exactly what a newcomer pastes.

    python tools/readme_commands.py 1     # the first command (install, then generate with the demo model)
    python tools/readme_commands.py 2     # the second (install the test tools and oracles, run the tests)
    python tools/readme_commands.py       # both, one a line

The commands are the ```bash blocks of the "## Set-up" section, in order; each block must be one line.
.ci/run runs them verbatim; tests/test_readme.py checks the section still has this shape. Standard library only.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Set-up"


def setup_commands(text: str | None = None) -> list[str]:
    """The one-line ```bash blocks of the README's set-up section, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end >= 0 else len(text)]
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]
    for b in blocks:
        if "\n" in b:
            raise ValueError(f"README {SECTION!r}: a set-up block must be one command line, got {b!r}")
    return blocks


def main(argv: list[str]) -> int:
    commands = setup_commands()
    if not argv:
        print("\n".join(commands))
        return 0
    n = int(argv[0])
    if not 1 <= n <= len(commands):
        print(f"README {SECTION!r} has {len(commands)} commands; asked for number {n}", file=sys.stderr)
        return 2
    print(commands[n - 1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
