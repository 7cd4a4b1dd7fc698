"""``python tests/mutants.py``: plant known bugs one at a time and check the suite catches each.

Each mutant is a one-line change a plausible bug would make (most come from the redesign
issue's list of bugs the old suite let through). For each, this copies the tree to a scratch
directory, plants the bug, runs ``pytest -x`` there and reports the first test that failed,
or MISSED. Not part of the suite (it runs the suite a dozen times: several minutes).

    python tests/mutants.py                 # every mutant
    python tests/mutants.py fsync backlog   # those whose name contains a word given
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (name, file, the line as written, the line with the bug)
MUTANTS = [
    ("final retry spacing doubled", "jobqueue/final/_retry.py",
     "self._base_delay * 2.0**doublings", "self._base_delay * 2.0**failed_attempts"),
    ("improved retry spacing doubled", "jobqueue/improved/_queue.py",
     "2 ** (attempt.attempts - 1)", "2 ** attempt.attempts"),
    ("enqueue timeout check inverted", "jobqueue/final/_admission.py",
     "                if remaining <= 0:\n                    raise QueueFull",
     "                if remaining > 0:\n                    raise QueueFull"),
    ("retry timer woken only when nothing waited", "jobqueue/final/_retry.py",
     "return self._heap[0][2] is item", "return len(self._heap) == 1"),
    ("retrying count never decremented", "jobqueue/final/_table.py",
     "        elif current is not STORED:\n            counts[current][priority] -= 1",
     "        elif current is not STORED and current is not RETRYING:\n"
     "            counts[current][priority] -= 1"),
    ("close wakes one blocked producer", "jobqueue/final/_closing.py",
     "    for line in core.room:\n        line.wake_all()",
     "    for line in core.room:\n        line.wake(1)"),
    ("abandoned ids leave out retries", "jobqueue/final/_table.py",
     "entries.items() if entry.state is not NEW)",
     "entries.items() if entry.state not in (NEW, RETRYING))"),
    ("log segments never retired", "jobqueue/final/stores/lmdb/wal.py",
     "        segment_of_checkpoint = checkpoint >> _OFFSET_BITS\n",
     "        segment_of_checkpoint = checkpoint >> _OFFSET_BITS\n        return\n"),
    ("backlog claimed LOW first", "jobqueue/final/_claimer.py",
     "for p in _PRIORITIES\n", "for p in _PRIORITIES[::-1]\n"),
    ("fsync never flushes the log", "jobqueue/final/stores/lmdb/store.py",
     "                os.fdatasync(descriptor)", "                pass"),
    ("one wake-up for room while a batch waits", "jobqueue/final/_core.py",
     "        self._wake(self.waiting if self.batches else slots)", "        self._wake(slots)"),
    ("replay ignores the checkpoint", "jobqueue/final/stores/lmdb/replay.py",
     "                if position(number, offset) < checkpoint:\n                    continue\n"
     "                try:",
     "                try:"),
    # The PostgreSQL store's, which issue 20 found a whole suite let through.
    ("heartbeat renews nothing", "jobqueue/final/stores/postgres/sql/queries.sql",
     "    UPDATE jobqueue_jobs AS j SET lease_until = now() + make_interval(secs => %(lease)s)",
     "    UPDATE jobqueue_jobs AS j SET lease_until = j.lease_until"),
    ("claims without SKIP LOCKED", "jobqueue/final/stores/postgres/sql/queries.sql",
     "    ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED\n), due AS (",
     "    ORDER BY seq LIMIT %(limit)s FOR UPDATE\n), due AS ("),
    ("no NOTIFY after an enqueue", "jobqueue/final/stores/postgres/sql/queries.sql",
     "SELECT id, lease_id, CASE WHEN priority = ANY(%(notify)s::smallint[])",
     "SELECT id, lease_id, CASE WHEN false AND priority = ANY(%(notify)s::smallint[])"),
    ("a scheduled job's due time inverted", "jobqueue/final/stores/postgres/sql/queries.sql",
     "      AND due_at <= %(now)s AND priority = %(priority)s\n",
     "      AND due_at > %(now)s AND priority = %(priority)s\n"),
    ("a periodic tick enqueued again after a restart", "jobqueue/final/_periodic.py",
     "core.shared.insert([record], None, revive=False)",
     "core.shared.insert([record], None, revive=True)"),
    ("queue_stats counts RETRYING as QUEUED", "jobqueue/final/stores/postgres/store.py",
     "            counts[Status(status)] += count",
     "            counts[Status('queued' if status == 'retrying' else status)] += count"),
    # And what its fixes rest on.
    ("a finished row moved again", "jobqueue/final/stores/postgres/sql/queries.sql",
     "          AND status IN ('processing', 'queued', 'retrying', 'scheduled')\n"
     "        FOR UPDATE SKIP LOCKED\n    ) AS row",
     "\n        FOR UPDATE SKIP LOCKED\n    ) AS row"),
    ("a lapsed finished row claimed", "jobqueue/final/stores/postgres/sql/queries.sql",
     "      AND owner <> %(owner)s AND priority = %(priority)s\n"
     "      AND status IN ('processing', 'queued', 'retrying', 'scheduled')\n",
     "      AND owner <> %(owner)s AND priority = %(priority)s\n"),
    ("a handler runs before its start is committed", "jobqueue/final/stores/postgres/store.py",
     "        fate = self._writer.wait_fate(move, deadline)",
     "        fate = \"w\""),
    ("a hook before its outcome is committed", "jobqueue/final/_workers.py",
     "            kept = core.shared.confirm(job_id, None)",
     "            kept = True"),
    ("a deadlock drops the batch", "jobqueue/final/stores/postgres/connections.py",
     '    if state[:2] in ("40", "53") or state in ("55P03", "57014"):',
     '    if state in ("55P03", "57014"):'),
    ("a dead pooled connection used", "jobqueue/final/stores/postgres/connections.py",
     "        if conn is not None and _dropped(conn):",
     "        if False:"),
    ("a cancel only in the batch", "jobqueue/final/stores/lmdb/store.py",
     "        if record.status is Status.CANCELLED:\n            self._log_cancel(record)",
     "        if False:\n            self._log_cancel(record)"),
    # Issue 21's: an app of tasks, the worker command, claims that fit the work.
    ("give_up_on ignored", "jobqueue/final/_workers.py",
     "        if give_up_on and isinstance(error, give_up_on):",
     "        if False:"),
    ("Fail retried", "jobqueue/final/_workers.py",
     "    if isinstance(error, Fail):\n        return False", "    pass"),
    ("a process holds a batch of slow jobs", "jobqueue/final/_core.py",
     "        self.claim_below = self.config.num_workers + prefetch - prefetch // 2",
     "        self.claim_below = self.config.num_workers + 64"),
    ("claims of one go to HIGH always", "jobqueue/final/_claimer.py",
     "        owed = max(open_, key=credit.__getitem__)", "        owed = open_[0]"),
    ("a second signal waits all the same", "jobqueue/worker.py",
     "threading.Thread(target=lambda: jq.close(timeout=0), daemon=True,",
     "threading.Thread(target=lambda: None, daemon=True,"),
    ("a duplicate in a group refuses every job of it",
     "jobqueue/final/stores/postgres/group_insert.py",
     "                if call.record.id not in added:", "                if True:"),
]


def run(name: str, path: str, before: str, after: str) -> str:
    with tempfile.TemporaryDirectory(prefix="jobqueue-mutant-") as scratch:
        tree = Path(scratch)
        for part in ("jobqueue", "tests", "bench", "pyproject.toml", "README.md"):
            source = ROOT / part
            if source.is_dir():
                shutil.copytree(source, tree / part,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, tree / part)
        target = tree / path
        text = target.read_text()
        if text.count(before) != 1:
            return "NOT PLANTED: the line is not in the code as written (update MUTANTS)"
        target.write_text(text.replace(before, after))
        # The store's own tests first when the bug is in a store, then the rest: the whole
        # suite either way, and a bug they catch is caught in a minute instead of after
        # every other test. (Two runs: pytest sorts the files of one by path.)
        first = [str(p.relative_to(tree)) for p in sorted((tree / "tests").glob(
            "test_final_postgres*.py"))] if "postgres" in path else []
        runs = [first, [*(f"--ignore={name}" for name in first), "tests"]] if first else [
            ["tests"]]
        for arguments in runs:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                     *arguments],
                    cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                    capture_output=True, text=True, timeout=900,
                )
            except subprocess.TimeoutExpired:
                return "CAUGHT only by hanging past 900 s"
            if done.returncode != 0:
                break
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    if failed:
        return f"CAUGHT by {failed[0].split()[1]}"
    if done.returncode != 0:
        return f"the suite did not run:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return "MISSED"


def main() -> int:
    words = sys.argv[1:]
    missed = 0
    for name, path, before, after in MUTANTS:
        if words and not any(word in name for word in words):
            continue
        verdict = run(name, path, before, after)
        missed += not verdict.startswith("CAUGHT")  # an error counts against the suite too
        print(f"{name}: {verdict}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
