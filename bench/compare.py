"""``python -m bench.compare REF``: final's throughput at git REF and in this tree, in one run.

Threaded throughput on a shared machine drifts by 10-30 % from one minute to the next, so two
separate runs of ``python -m bench`` compare the minutes as much as the code. This runs the
throughput scenario for REF's ``jobqueue`` and for this tree's, alternating (REF, tree, tree,
REF, ...) in fresh interpreters with the same benchmark code, and prints the best run of each
side by side with every run listed.

    python -m bench.compare b2b824d                 # final-memory, final-lmdb, final-lmdb-fsync
    python -m bench.compare HEAD~3 --rounds 4 --systems final-lmdb
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SYSTEMS = "final-memory,final-lmdb,final-lmdb-fsync"


def export(ref: str, into: Path) -> None:
    """Write REF's ``jobqueue`` package into ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "jobqueue"],
        capture_output=True, check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def run_side(package_root: Path, systems: str, output: Path, workdir: Path) -> dict:
    """One ``python -m bench --only throughput`` with ``jobqueue`` imported from package_root."""
    # The working directory comes first on sys.path under -m: an empty one, so that the
    # package root chosen here, not this tree, provides jobqueue.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "throughput", "--systems", systems,
         "--output", str(output)],
        cwd=workdir, env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the benchmark failed for {package_root}:\n{done.stderr}")
    return json.loads(output.read_text())["results"]["throughput"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", help="the git commit to compare this tree against")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side (default 2)")
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS)
    args = parser.parse_args(argv)

    runs: dict[str, dict[tuple[str, str], list[int]]] = {args.ref: {}, "this tree": {}}
    with tempfile.TemporaryDirectory(prefix="jobqueue-compare-") as scratch:
        base = Path(scratch) / "base"
        base.mkdir()
        export(args.ref, base)
        workdir = Path(scratch) / "cwd"
        workdir.mkdir()
        sides = [(args.ref, base), ("this tree", ROOT)]
        for number in range(args.rounds):
            for label, root in sides if number % 2 == 0 else sides[::-1]:
                print(f"round {number + 1}: {label} ...", file=sys.stderr, flush=True)
                output = Path(scratch) / f"{number}-{label.replace(' ', '-')}.json"
                for variant, rows in run_side(root, args.systems, output, workdir).items():
                    for system, row in rows.items():
                        rates = row.get("runs_jobs_per_s", [])
                        runs[label].setdefault((variant, system), []).extend(rates)

    print(f"| variant | system | {args.ref}, best | this tree, best | ratio | "
          f"{args.ref}, every run | this tree, every run |")
    print("|---|---|---|---|---|---|---|")
    for key, before in runs[args.ref].items():
        after = runs["this tree"].get(key, [])
        if not before or not after:
            continue
        ratio = max(after) / max(before)
        print(f"| {key[0]} | {key[1]} | {max(before):,} | {max(after):,} | {ratio:.2f} | "
              f"{', '.join(f'{r:,}' for r in before)} | {', '.join(f'{r:,}' for r in after)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
