"""final under hostile conditions: poison jobs, misbehaving handlers, odd values, reentrant
calls, forks, and races on a new store. Each test here failed before the fix it checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

POISON_CHILD = str(Path(__file__).with_name("poison_child.py"))


def run_poison_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, POISON_CHILD, *args], capture_output=True,
                          text=True, timeout=30)


class TestPoisonJobs:
    @pytest.mark.parametrize("how", ["exit", "sigkill"])
    def test_a_job_that_kills_its_process_ends_failed_and_the_others_run(
        self, tmp_path: Path, how: str
    ) -> None:
        store, runlog = str(tmp_path / "jobs"), str(tmp_path / "runs")
        others = 300
        seeded = run_poison_child("seed", store, runlog, how, str(others))
        assert seeded.returncode != 0, seeded.stderr  # the poison job killed it
        # max_retries=2: three attempts kill three processes; the fourth start counts the
        # third death, fails the job, and runs what is left.
        restarts = []
        for _ in range(6):
            restarted = run_poison_child("restart", store, runlog, how)
            restarts.append(restarted.returncode)
            if restarted.returncode == 0:
                break
        assert restarts[-1] == 0, restarts
        assert len(restarts) == 3, restarts  # deaths 2 and 3, then the end
        status, attempts, error = restarted.stdout.split(" ", 2)
        assert (status, attempts) == ("failed", "3")
        assert "the process died while running it" in error
        ran = Path(runlog).read_text().split()
        assert set(ran) == {f"job-{i}" for i in range(others)}
