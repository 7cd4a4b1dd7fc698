"""A type checker holds task calls to the function's signature (``Task[P, R]``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jobqueue

pytestmark = pytest.mark.timeout(120)

CHECKED = '''
from jobqueue import final

app = final.App()


@app.task(kind="email")
def send_email(to: str, subject: str = "") -> int:
    return len(to)


handle = send_email.enqueue("ada@example.com", subject="hi")
count: int = handle.result(timeout=5)
send_email.options(id="welcome-42", delay=5, priority="high").enqueue(to="ada@example.com")
job: final.Job = send_email.job("grace@example.com")
sent: int = send_email("direct call")
'''

WRONG = {
    'send_email.enqueue(to=1)':
        'Argument "to" to "enqueue" of "Task" has incompatible type "int"; expected "str"',
    'send_email.enqueue()': 'Missing positional argument "to" in call to "enqueue"',
    'send_email.job("a", cc="b")': 'Unexpected keyword argument "cc" for "job"',
    'send_email.options(delay=5).enqueue(1)':
        'Argument 1 to "enqueue" of "TaskCall" has incompatible type "int"; expected "str"',
    'text: str = handle.result()':
        'Incompatible types in assignment (expression has type "int", variable has type "str")',
}


def mypy(tmp_path: Path, source: str) -> list[str]:
    """The errors ``mypy --strict`` finds in ``source`` (not in jobqueue itself)."""
    (tmp_path / "snippet.py").write_text(source)
    package_root = Path(jobqueue.__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--no-incremental", "--hide-error-context", "--no-error-summary", "snippet.py"],
        cwd=tmp_path, env=dict(os.environ, MYPYPATH=str(package_root)),
        capture_output=True, text=True, check=False,
    )
    return [line for line in result.stdout.splitlines() if ": error:" in line]


def test_a_right_call_passes_and_each_wrong_one_is_caught(tmp_path: Path) -> None:
    assert mypy(tmp_path, CHECKED) == []
    wrong = CHECKED + "\n".join(WRONG) + "\n"
    errors = mypy(tmp_path, wrong)
    first = len(CHECKED.splitlines()) + 1
    for line, (call, message) in enumerate(WRONG.items(), start=first):
        assert any(f"snippet.py:{line}: error: {message}" in e for e in errors), (call, errors)
    assert len(errors) == len(WRONG), errors


def test_the_snippet_runs(tmp_path: Path) -> None:
    """What the checker passed is what the library does (eager, in memory)."""
    source = CHECKED.replace("final.App()", "final.App(final.Config(eager=True))")
    source = textwrap.dedent('''
        import sys
        sys.path.insert(0, sys.argv[1])
    ''') + source.replace("handle = ", "queue = app.open()\nhandle = ") + "queue.close()\n"
    (tmp_path / "run.py").write_text(source)
    package_root = Path(jobqueue.__file__).parent.parent
    subprocess.run([sys.executable, "run.py", str(package_root)], cwd=tmp_path, check=True,
                   timeout=60)


def test_the_package_passes_mypy_strict() -> None:
    """The package ships py.typed: its own types must hold, as pyproject's [tool.mypy]
    checks them (strict, at the oldest Python it supports), in this checkout."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--no-error-summary"],
        cwd=root, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
