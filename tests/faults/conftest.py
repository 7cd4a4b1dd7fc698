"""What the fault-injection suite shares: a server of each test's own (restarted, crashed or
cut off by the test), the processes of a queue in it, and the figures each scenario reports.

Every scenario ends with the same checks of the README's promises (``Cluster.check``): no
acknowledged job lost, no job run more often than the faults can explain, every hook once
per committed outcome, the queue drained, and every process closed in time. Its figures
(jobs acknowledged, lost, run twice, late outcomes refused) are printed at the end of the
run; ``JOBQUEUE_FAULT_REPORT=path`` also writes them as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import start_server

from bench.pgserver import PostgresServer
from faults.cluster import REPORT, free_port


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    write = terminalreporter.write_line
    write("")
    write("fault-injection figures (jobs)")
    write(f"{'scenario':44} {'acked':>6} {'lost':>5} {'twice':>6} {'allowed':>8} "
          f"{'refused':>8}")
    for row in REPORT:
        write(f"{row.scenario:44} {row.acknowledged:>6} {row.lost:>5} {row.run_twice:>6} "
              f"{row.explained:>8} {row.refused:>8}")
    path = os.environ.get("JOBQUEUE_FAULT_REPORT")
    if path:
        Path(path).write_text(json.dumps([asdict(row) for row in REPORT], indent=1))


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    """A server of this test's own, on a Unix socket and on a TCP port of loopback."""
    server = start_server(port=free_port())
    yield server
    server.remove()
