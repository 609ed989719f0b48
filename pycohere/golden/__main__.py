"""``python -m pycohere.golden make|check|diff ...``: the same as ``pycohere golden ...``."""
from ..cli.golden import main

raise SystemExit(main())
