"""The README's Python examples run as written and print what their comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("source", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_example_runs(source: str, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if "DATABASE_URL" in source:  # the Scaling out example: a database of its own
        env["DATABASE_URL"] = request.getfixturevalue("database_url")
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=30, env=env
    )
    assert done.returncode == 0, done.stderr
    # Lines ending in "# value" promise what they print; check the printed values appear.
    for promise in re.findall(r"print\(.*\)\s+# (\S.*)$", source, flags=re.MULTILINE):
        first_word = promise.split(",")[0].split()[0]
        assert first_word in done.stdout, f"expected {first_word!r} in {done.stdout!r}"
