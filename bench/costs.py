"""``python -m bench.costs``: what one job costs in each part of final's hot path.

Enqueues N jobs while the only worker is held (so nothing competes), then releases it and
times the drain: microseconds per job for ``final.Job(...)``, ``enqueue`` and a worker's
pick-run-settle, in memory and with LMDB. ``--profile`` adds a cProfile of the enqueues.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import threading
import time

from jobqueue import final


def measure(jobs: int, persist_path: str | None, profile: bool) -> dict[str, float]:
    started, release = threading.Event(), threading.Event()

    def handler(payload: bytes) -> None:
        if payload == b"hold":
            started.set()
            release.wait(60)

    config = final.Config(num_workers=1, handler=handler, queue_size=jobs + 10,
                          persist_path=persist_path)
    with final.JobQueue(config) as queue:
        queue.enqueue(final.Job("hold", b"hold", priority=final.Priority.HIGH))
        started.wait(10)
        begin = time.perf_counter()
        batch = [final.Job(f"job-{i}") for i in range(jobs)]
        made = time.perf_counter() - begin
        profiler = cProfile.Profile() if profile else None
        begin = time.perf_counter()
        if profiler:
            profiler.enable()
        for job in batch:
            queue.enqueue(job)
        if profiler:
            profiler.disable()
        enqueued = time.perf_counter() - begin
        begin = time.perf_counter()
        release.set()
        queue.join()
        drained = time.perf_counter() - begin
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(10)
    return {"job_us": made / jobs * 1e6, "enqueue_us": enqueued / jobs * 1e6,
            "worker_us": drained / jobs * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the enqueues")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="jobqueue-costs-")
    try:
        for label, path in (("memory", None), ("lmdb", f"{directory}/store")):
            costs = measure(args.jobs, path, args.profile)
            print(f"{label:>6}: Job() {costs['job_us']:.2f} us, enqueue {costs['enqueue_us']:.2f}"
                  f" us, pick-run-settle {costs['worker_us']:.2f} us per job")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
