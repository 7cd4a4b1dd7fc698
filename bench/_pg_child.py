"""A process of the PostgreSQL benchmark: serves a queue until its stdin closes.

    python bench/_pg_child.py worker  URL noop|cpu|sleep [PREFETCH [WORKERS]]
                                                      run jobs of kind "work" (sleep: 1 s
                                                      each), 4 workers, prefetch auto
    python bench/_pg_child.py latency URL noop       the same; print how long each job
                                                      waited (start - the time in its payload)

Prints ``ready`` once its queue runs.
"""

from __future__ import annotations

import json
import sys
import time

from jobqueue import final


def _cpu(payload: bytes) -> None:
    total = 0
    for i in range(4_000):  # about 0.2 ms of pure Python, as bench.scenarios' CPU handler
        total += i * i


def main() -> None:
    mode, url, work = sys.argv[1:4]
    prefetch = None if len(sys.argv) < 5 or sys.argv[4] == "auto" else int(sys.argv[4])
    workers = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    waits: list[float] = []

    def latency(payload: bytes) -> None:
        waits.append(time.time() - float(payload))

    handler = (latency if mode == "latency" else
               {"cpu": _cpu, "sleep": lambda p: time.sleep(1.0)}.get(work, lambda p: None))
    config = final.Config(database_url=url, num_workers=workers, handlers={"work": handler},
                          prefetch=prefetch)
    with final.JobQueue(config):
        print("ready", flush=True)
        sys.stdin.read()  # until the parent closes it
    if mode == "latency":
        print(json.dumps(waits), flush=True)


if __name__ == "__main__":
    main()
