"""docs/reference.md is generated from the docstrings and must match them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_reference_matches_the_docstrings() -> None:
    result = subprocess.run(
        [sys.executable, "docs/reference.py", "--check"], cwd=ROOT, check=False, timeout=120
    )
    assert result.returncode == 0, "docs/reference.md is stale: run python docs/reference.py"
