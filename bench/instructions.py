"""``python -m bench.instructions [REF]``: CPU instructions per job in final, counted, not timed.

Wall-clock throughput on a shared machine drifts by tens of percent from run to run; the
number of instructions a job costs does not. Under ``valgrind --tool=callgrind`` (which runs
threads one at a time, so it counts work, not contention) a script enqueues N jobs to one
held worker and then lets it drain them; the count for N=0 is subtracted and the rest divided
by N. With a git REF, the same is counted for REF's ``jobqueue`` beside this tree's.

    python -m bench.instructions                # this tree, in memory and with LMDB
    python -m bench.instructions b2b824d        # and the commit before the redesign

Needs valgrind (Debian: ``apt install valgrind``). Takes about a minute per row.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.compare import ROOT, export

JOBS = 20_000

SCRIPT = """
import sys, threading
from jobqueue import final
count, persist = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
started, release = threading.Event(), threading.Event()
def handler(payload):
    if payload == b"hold":
        started.set()
        release.wait()
config = final.Config(num_workers=1, handler=handler, queue_size=count + 10,
                      persist_path=persist)
queue = final.JobQueue(config)
queue.enqueue(final.Job("hold", b"hold", priority=final.Priority.HIGH))
started.wait()
for job in [final.Job(f"job-{i}") for i in range(count)]:
    queue.enqueue(job)
release.set()
queue.join()
queue.close()
"""


def count(package_root: Path, jobs: int, persist: bool) -> int:
    """Instructions for one run of SCRIPT with ``jobs`` jobs."""
    with tempfile.TemporaryDirectory(prefix="jobqueue-instructions-") as scratch:
        args = [str(jobs)] + ([f"{scratch}/store"] if persist else [])
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, "-c", SCRIPT, *args],
            cwd=scratch, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(package_root)},
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_job(package_root: Path, persist: bool) -> int:
    return (count(package_root, JOBS, persist) - count(package_root, 0, persist)) // JOBS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", nargs="?", help="a git commit to count beside this tree")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt install valgrind)")
    with tempfile.TemporaryDirectory(prefix="jobqueue-instructions-") as scratch:
        sides = [("this tree", ROOT)]
        if args.ref:
            base = Path(scratch) / "base"
            base.mkdir()
            export(args.ref, base)
            sides.insert(0, (args.ref, base))
        print("| jobqueue | store | instructions per job |")
        print("|---|---|---|")
        for label, root in sides:
            for store, persist in (("memory", False), ("lmdb", True)):
                print(f"| {label} | {store} | {per_job(root, persist):,} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
