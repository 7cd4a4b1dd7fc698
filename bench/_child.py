"""The bench's child process: runs one system where a scenario needs a fresh interpreter.

    python bench/_child.py memory  SYSTEM DIR OFFER SECONDS
    python bench/_child.py produce SYSTEM STORE RUNLOG ACKLOG JOBS   (killed by the parent)
    python bench/_child.py drain   SYSTEM STORE RUNLOG

Each prints one JSON line with its figures; ``produce`` prints nothing, it is killed.
"""

from __future__ import annotations

import json
import os
import sys
import time

from bench.systems import SYSTEMS


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(name: str, directory: str, offer: int, seconds: float) -> None:
    system = SYSTEMS[name]()
    system.start(4, lambda job_id: time.sleep(0.001), os.path.join(directory, "store"))
    base = peak = rss_bytes()
    held_back = 0.0
    started = time.perf_counter()
    offered = 0
    for offered in range(1, offer + 1):
        before = time.perf_counter()
        system.submit(f"m-{offered}")
        after = time.perf_counter()
        held_back += after - before
        if offered % 1000 == 0:
            peak = max(peak, rss_bytes())
            if after - started > seconds:
                break
    peak = max(peak, rss_bytes())
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "offered": offered, "seconds": elapsed, "completed": system.completed,
        "backlog": offered - system.completed, "rss_growth_mb": (peak - base) / 2**20,
        "producer_held_back_s": held_back,
    }), flush=True)
    os._exit(0)  # an unbounded backlog would take minutes to drain; the figures are out


def produce(name: str, store: str, runlog: str, acklog: str, jobs: int) -> None:
    run_fd = os.open(runlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    ack_fd = os.open(acklog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handler(job_id: str) -> None:
        time.sleep(0.0002)
        os.write(run_fd, f"{job_id}\n".encode())

    system = SYSTEMS[name]()
    system.start(4, handler, store)
    for i in range(jobs):
        job_id = f"c-{i}"
        system.submit(job_id)
        os.write(ack_fd, f"{job_id}\n".encode())  # accepted: the system promised it
    time.sleep(3600)  # the parent kills us


def drain(name: str, store: str, runlog: str) -> None:
    run_fd = os.open(runlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    recovered = 0

    def handler(job_id: str) -> None:
        nonlocal recovered
        recovered += 1
        os.write(run_fd, f"{job_id}\n".encode())

    system = SYSTEMS[name]()
    system.start(4, handler, store)
    system.drain(120)
    system.close()
    print(json.dumps({"recovered": recovered}), flush=True)


if __name__ == "__main__":
    mode, name, *rest = sys.argv[1:]
    if mode == "memory":
        memory(name, rest[0], int(rest[1]), float(rest[2]))
    elif mode == "produce":
        produce(name, rest[0], rest[1], rest[2], int(rest[3]))
    elif mode == "drain":
        drain(name, rest[0], rest[1])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
