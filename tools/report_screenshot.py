"""Headless Chromium (Debian's ``chromium`` package) for the HTML report: the page's DOM after its script ran,
its console messages, and a screenshot.

    python tools/report_screenshot.py [--out docs/report.png] [--height 1700]

draws the README's picture: the report of the bundled demo model on "In the beginning God created the heaven
and the" (``pycohere explain --html``), top of the page. ``tests/test_introspect_report.py`` uses ``open_page``.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "In the beginning God created the heaven and the"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    dom: str               # the serialised DOM after the page's scripts ran
    console: list[str]     # every console message (log, warning, error, CSP violation, uncaught exception)
    stderr: str


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        # root in a container needs --no-sandbox; a fresh profile keeps runs independent
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", "--disable-sync", "--mute-audio",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def open_page(path: Path, fragment: str = "", screenshot: Path | None = None, size=(1280, 1700),
              timeout: float = 120) -> Page:
    """Load ``path`` (``#fragment`` appended) in headless Chromium; ``screenshot`` also writes a PNG."""
    url = Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    r = _run(["--virtual-time-budget=3000", "--dump-dom", url], timeout)
    console = [m.group(1) for m in re.finditer(r":CONSOLE[^\]]*\] (.*)", r.stderr)]
    if screenshot is not None:
        s = _run([f"--window-size={size[0]},{size[1]}", f"--screenshot={Path(screenshot).resolve()}", url], timeout)
        console += [m.group(1) for m in re.finditer(r":CONSOLE[^\]]*\] (.*)", s.stderr)]
    return Page(r.stdout, console, r.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    p.add_argument("--height", type=int, default=1700)
    args = p.parse_args()
    if chromium() is None:
        print("needs Debian's chromium: apt-get install chromium", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    import pycohere
    from pycohere.introspect.report import write_report
    tok = pycohere.CohereTokenizer.from_pretrained(pycohere.DEMO_MODEL)
    model = pycohere.AutoModelForCausalLM.from_pretrained(pycohere.DEMO_MODEL, dtype="float64")
    with tempfile.TemporaryDirectory() as tmp:
        page = write_report(model, tok.encode(PROMPT), Path(tmp) / "report.html", tok, name="pycohere/demo")
        result = open_page(page, screenshot=args.out, size=(1280, args.height))
    print(f"wrote {args.out}; console: {result.console or 'silent'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
