"""The README's Python examples run as written and print what their comments say."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 4


#: Blocks that are files of the quickstart (their first line names them): run together, by
#: test_the_quickstart_runs_as_written, not one by one.
FILES = {match.group(1): block for block in BLOCKS
         if (match := re.match(r"# (\w+\.py)\n", block))}
SCRIPTS = [block for block in BLOCKS if block not in FILES.values()]


@pytest.mark.parametrize("source", SCRIPTS, ids=[f"block{i}" for i in range(len(SCRIPTS))])
def test_example_runs(source: str, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if "DATABASE_URL" in source:  # the Scaling out example: a database of its own
        env["DATABASE_URL"] = request.getfixturevalue("database_url")
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=30, env=env
    )
    assert done.returncode == 0, done.stderr
    _promises_kept(source, done.stdout)


def _promises_kept(source: str, stdout: str) -> None:
    """Lines ending in "# value" promise what they print: each promise, whole, is a line of
    what the example printed, in the order of the prints."""
    printed = stdout.splitlines()
    for promise in re.findall(r"print\(.*\)\s+# (\S.*)$", source, flags=re.MULTILINE):
        assert promise in printed, f"expected the line {promise!r} in {printed!r}"
        printed = printed[printed.index(promise) + 1:]


@pytest.mark.timeout(120)
def test_the_quickstart_runs_as_written(tmp_path: Path, database_url: str) -> None:
    """tasks.py and producer.py as the README has them; the workers started by the very
    command lines it shows, in two processes; SIGTERM stops them cleanly."""
    assert set(FILES) == {"tasks.py", "producer.py"}
    for name, source in FILES.items():
        (tmp_path / name).write_text(source)
    text = README.read_text()
    commands = re.findall(r"^jobqueue (worker [^#\n]*?)\s*(?:#.*)?$", text, flags=re.M)
    assert len(commands) >= 2
    env = dict(os.environ, DATABASE_URL=database_url)
    workers = [subprocess.Popen([sys.executable, "-m", "jobqueue", *command.split()],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for command in commands[:2]]
    try:
        for worker in workers:
            assert "ready" in worker.stdout.readline()  # type: ignore[union-attr]
        done = subprocess.run([sys.executable, "producer.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        _promises_kept(FILES["producer.py"], done.stdout)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "every accepted job finished" in err
