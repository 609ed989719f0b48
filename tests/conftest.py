import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# tools/ holds the oracle helpers and fixture scripts that tests share.
sys.path.insert(0, str(ROOT / "tools"))
DATA = Path(__file__).resolve().parent / "data"
