"""The benchmark harness cannot rot: its quick mode runs, and every adapter really runs jobs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/ runs from the repository root; it is not installed

from bench import systems  # noqa: E402


@pytest.mark.parametrize("name", sorted(n for n, cls in systems.SYSTEMS.items() if cls.adapter))
def test_adapter_runs_its_jobs(name: str) -> None:
    missing = systems.available(name)
    if missing:
        pytest.skip(missing)  # an optional peer package, not a failure
    seen: list[str] = []
    lock = threading.Lock()

    def handler(job_id: str) -> None:
        with lock:
            seen.append(job_id)

    with systems.make(name, 2, handler) as system:
        system.expect(50)
        for i in range(50):
            system.submit(f"job-{i}")
        assert system.wait(30)
        assert system.completed == 50
    assert sorted(seen) == sorted(f"job-{i}" for i in range(50))


def test_quick_mode(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output),
         "--only", "throughput,starvation,crash,shutdown",
         "--systems", "naive,improved,final-memory,final-lmdb,threadpool"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    assert report["machine"]["cpu_count"] >= 1
    assert report["packages"]["lmdb"]
    results = report["results"]
    row = results["throughput"]["1 producer"]["final-lmdb"]
    assert row["completed"] == row["jobs"] > 0
    starvation = results["starvation"]["HIGH flood"]
    assert starvation["improved"]["low_finished"] == 0  # strict priority starves LOW
    assert starvation["final-memory"]["low_finished"] > 0  # the weighted picker does not
    assert results["crash"]["SIGKILL halfway"]["final-lmdb"]["lost"] == 0
    assert results["shutdown"]["close()"]["naive"]["lost"] > 0
    assert "## throughput: 1 producer" in done.stdout
    assert any(t["target"].startswith("final-lmdb loses 0") for t in report["targets"])
    assert "PASS" not in done.stdout and "FAIL" not in done.stdout  # met / missed, as the README
    # An earlier run, read and charted again without running anything.
    again = subprocess.run(
        [sys.executable, "-m", "bench", "--from", str(output), "--plot"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert "## throughput: 1 producer" in again.stdout and "## summary" in again.stdout
    assert (tmp_path / "throughput.png").stat().st_size > 0
    assert not (tmp_path / "quick.json").exists()  # nothing ran


def test_headings_say_what_each_row_ran() -> None:
    from bench.__main__ import heading

    rows = {"a": {"offered_per_s": 10_000}, "b": {"offered_per_s": 1_000},
            "c": {"offered_per_s": 10_000}}
    assert heading("latency", "steady offer", rows) == (
        "latency: steady offer (offered 10,000/s: a, c; offered 1,000/s: b)")
    assert heading("crash", "SIGKILL", {"a": {"jobs": 600}, "b": {"jobs": 600}}) == (
        "crash: SIGKILL, 600 jobs each")


def test_a_missing_file_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--from", "no-such.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "cannot read no-such.json" in done.stderr


def test_rejects_unknown_names() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nonsense"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "unknown scenario or system: nonsense" in done.stderr


def test_charts_say_ms_for_latency_start_lines_at_zero_and_keep_legend_colours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors
    import matplotlib.pyplot as plt

    from bench.__main__ import _DURABILITY_COLOURS, plot

    figures: list = []
    monkeypatch.setattr(plt, "close", figures.append)
    pg = "PostgreSQL, synchronous_commit=off"
    prefetch = {"jobs": 100, "slow_jobs": 8, "slow_ideal_seconds": 2.0}
    for setting, seconds in (("0", 2.1), ("auto", 2.2), ("64", 4.1)):
        prefetch[f"slow_seconds_{setting}"] = seconds
        prefetch[f"noop_jobs_per_s_{setting}"] = 1000.0
    report = {"results": {
        "postgres": {
            "processes, no-op jobs": {"final-postgres": {
                "1_processes": 900.0, "2_processes": 1500.0, "4_processes": 2000.0,
                "durability": pg}},
            "latency across processes, 1,000/s offered": {"final-postgres": {
                "p50_ms": 3.0, "p99_ms": 20.0, "durability": pg}},
            "prefetch, 2 processes": {"final-postgres": {**prefetch, "durability": pg}},
        },
        "workers": {"1-32 workers": {"final-memory": {
            "cpu_1": 5000.0, "cpu_2": 5100.0, "io_1": 900.0, "io_2": 1800.0,
            "durability": "in memory"}}},
    }}
    plot(report, tmp_path)
    legend = {matplotlib.colors.to_hex(c) for c in _DURABILITY_COLOURS.values()}
    postgres, workers = figures
    processes, latency, prefetched = postgres.axes
    assert "ms" in latency.get_xlabel() and "jobs/s" not in latency.get_xlabel()
    for axis in (processes, workers.axes[0]):
        assert axis.get_ylim()[0] == 0
        assert all(matplotlib.colors.to_hex(line.get_color()) not in legend
                   for line in axis.get_lines())
    assert [t.get_text() for t in prefetched.get_yticklabels()] == [
        "prefetch 64", "prefetch auto", "prefetch 0"]
