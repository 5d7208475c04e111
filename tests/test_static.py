"""The code reads as the style guide says: mypy-clean kernel and gclasses, ruff-clean tree.

These run the real tools on the repository as it is, so a change that breaks typing or
formatting fails the suite, not a reviewer's eye. mypy's cache goes to a temporary
directory (a cold run takes seconds).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON_DIRS = ("yuneta", "gclasses", "tests", "scripts", "bench")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=280
    )


def test_mypy_is_clean_on_the_kernel_and_the_gclasses(tmp_path: Path) -> None:
    proc = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"), "yuneta", "gclasses")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_check_and_format_are_clean() -> None:
    check = _run("ruff", "check", "--no-cache", *PYTHON_DIRS)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _run("ruff", "format", "--no-cache", "--check", *PYTHON_DIRS)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
