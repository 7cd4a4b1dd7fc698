"""``python -m bench``: jobqueue's three stages and their peers, side by side.

Runs every scenario on every system, shows progress, prints one table per scenario, checks the
speed targets as ratios from this one run, and writes everything to bench/results/latest.json
(not tracked: the README quotes bench/results/reference.json, a committed run).

    python -m bench                      # the full run, about 4 minutes on 2 cores
    python -m bench --quick              # a few seconds: does the harness still work?
    python -m bench --only throughput --systems final-memory,threadpool
    python -m bench --plot               # also PNG charts (needs the 'bench' extra)
    python -m bench --from bench/results/reference.json --plot   # chart a run, run nothing
    python -m bench --check              # exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.postgres import PREFETCHES
from bench.scenarios import Size
from bench.systems import SYSTEMS, available

RESULTS = Path(__file__).resolve().parent / "results"

MAIN = ["naive", "improved", "final-memory", "final-lmdb", "final-lmdb-fsync", "threadpool",
        "queue-floor", "persist-queue", "huey"]
FSYNC_PEERS = ["persist-queue-fsync", "huey-fsync"]
POSTGRES = ["final-postgres", "final-postgres-fsync"]
#: The Python PostgreSQL queues users pick, by durability (bench/pgpeers.py).
PG_PEERS = ["procrastinate", "pgqueuer", "pgqueuer-4-processes"]
PG_PEERS_SYNC = ["procrastinate-sync", "pgqueuer-sync", "pgqueuer-4-processes-sync"]

# scenario -> [(variant, systems, run(name, size) -> row)]
Plan = dict[str, list[tuple[str, list[str], Callable[[str, Size], dict[str, Any]]]]]
PLAN: Plan = {
    "throughput": [
        ("1 producer", MAIN + POSTGRES, lambda n, s: scenarios.throughput(n, s, producers=1)),
        ("4 producers", MAIN + FSYNC_PEERS + POSTGRES,
         lambda n, s: scenarios.throughput(n, s, producers=4)),
        ("enqueue_many", ["final-memory", "final-lmdb", "final-lmdb-fsync", *POSTGRES],
         lambda n, s: scenarios.throughput(n, s, producers=1, batch=True)),
    ],
    "latency": [("steady offer", MAIN + POSTGRES, scenarios.latency)],
    "memory": [("offer until full", ["naive", "improved", "final-memory", "final-lmdb",
                                      "threadpool", "queue-floor"], scenarios.memory)],
    "starvation": [("HIGH flood", ["improved", "final-memory", "final-lmdb", "final-postgres"],
                    scenarios.starvation)],
    "crash": [("SIGKILL halfway", ["final-memory", "final-lmdb", "final-lmdb-fsync",
                                   "threadpool", "persist-queue"], scenarios.crash)],
    "shutdown": [("close()", ["naive", "improved", "final-memory", "final-lmdb", "threadpool",
                              "queue-floor"], scenarios.shutdown)],
    "workers": [("1-32 workers", ["final-memory", "threadpool"], scenarios.workers)],
    "postgres": [
        ("processes, no-op jobs", ["final-postgres"],
         lambda n, s: scenarios.pg_processes(n, s, cpu=False)),
        ("processes, CPU-bound jobs", ["final-postgres"],
         lambda n, s: scenarios.pg_processes(n, s, cpu=True)),
        ("latency across processes, 1,000/s offered", ["final-postgres"], scenarios.pg_latency),
        ("prefetch, 2 processes", ["final-postgres"], scenarios.pg_prefetch),
        ("SQL floor", ["sql-floor", "sql-floor-sync", "sql-floor-batch",
                       "sql-floor-batch-sync"], scenarios.pg_floor),
        ("peers, 1 producer", PG_PEERS + PG_PEERS_SYNC, scenarios.pg_peer),
        ("peers, 4 producers", PG_PEERS + PG_PEERS_SYNC,
         lambda n, s: scenarios.pg_peer(n, s, producers=4)),
    ],
}


class Progress:
    """One line per scenario and system, rewritten in place on a terminal."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()

    def start(self, label: str) -> None:
        if self._tty:
            sys.stderr.write(f"\r\033[K{label} ...")
        else:
            sys.stderr.write(f"{label} ...\n")
        sys.stderr.flush()

    def done(self, label: str, seconds: float, note: str = "") -> None:
        end = f"{label}: {note or 'done'} ({seconds:.1f} s)"
        sys.stderr.write(f"\r\033[K{end}\n" if self._tty else f"{end}\n")
        sys.stderr.flush()


def run(only: list[str], systems: list[str] | None, size: Size) -> dict[str, Any]:
    results: dict[str, Any] = {}
    progress = Progress()
    for scenario in only:
        results[scenario] = {}
        for variant, names, runner in PLAN[scenario]:
            rows: dict[str, Any] = {}
            for name in names:
                if systems is not None and name not in systems:
                    continue
                label = f"{scenario} / {variant} / {name}"
                missing = available(name)
                if missing:
                    rows[name] = {"skipped": missing}
                    progress.done(label, 0.0, f"skipped: {missing}")
                    continue
                progress.start(label)
                started = time.perf_counter()
                try:
                    rows[name] = runner(name, size)
                except Exception as exc:  # one broken system must not hide the others
                    rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
                rows[name]["durability"] = SYSTEMS[name].durability
                progress.done(label, time.perf_counter() - started,
                              rows[name].get("error", ""))
            results[scenario][variant] = rows
    return results


def _figure(results: dict[str, Any], scenario: str, variant: str, name: str,
            key: str) -> float | None:
    row = results.get(scenario, {}).get(variant, {}).get(name, {})
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed goals, as ratios from this run; a goal whose figures are missing is skipped."""
    def tp(name: str, variant: str = "1 producer") -> float | None:
        return _figure(results, "throughput", variant, name, "jobs_per_s")

    checks: list[dict[str, Any]] = []

    def ratio(goal: str, value: float | None, base: float | None, at_least: float) -> None:
        if value is None or base is None or base == 0:
            return
        measured = value / base
        checks.append({"target": goal, "measured": round(measured, 2), "required": at_least,
                       "pass": measured >= at_least})

    def bound(goal: str, value: float | None, at_most: float, unit: str) -> None:
        if value is None:
            return
        checks.append({"target": goal, "measured": round(value, 3), "required": at_most,
                       "unit": unit, "pass": value <= at_most})

    ratio("final-memory >= 1.5x threadpool (1 producer)", tp("final-memory"), tp("threadpool"),
          1.5)
    ratio("final-lmdb >= 0.9x final-memory (1 producer)", tp("final-lmdb"), tp("final-memory"),
          0.9)
    ratio("final-lmdb enqueue_many >= 0.9x final-memory", tp("final-lmdb", "enqueue_many"),
          tp("final-memory"), 0.9)
    ratio("final-lmdb >= 10x persist-queue (no fsync)", tp("final-lmdb"), tp("persist-queue"),
          10)
    ratio("final-lmdb >= 10x huey (no fsync)", tp("final-lmdb"), tp("huey"), 10)
    peers = [tp(n, "4 producers") for n in FSYNC_PEERS]
    best_peer = max((p for p in peers if p is not None), default=None)
    ratio("final-lmdb-fsync >= 3x best fsync peer (4 producers)",
          tp("final-lmdb-fsync", "4 producers"), best_peer, 3)
    bound("final-lmdb latency p50 <= 1 ms",
          _figure(results, "latency", "steady offer", "final-lmdb", "p50_ms"), 1.0, "ms")
    bound("final-lmdb latency p99 <= 10 ms",
          _figure(results, "latency", "steady offer", "final-lmdb", "p99_ms"), 10.0, "ms")
    for name in ("final-memory", "final-lmdb"):
        bound(f"{name} peak RSS growth <= 50 MB",
              _figure(results, "memory", "offer until full", name, "rss_growth_mb"), 50, "MB")
    bound("final-lmdb loses 0 jobs in a crash",
          _figure(results, "crash", "SIGKILL halfway", "final-lmdb", "lost"), 0, "jobs")

    def pg(variant: str, name: str, key: str) -> float | None:
        return _figure(results, "postgres", variant, name, key)

    # One producer calling enqueue() is one commit round trip a job, as near the one-INSERT
    # floor as a queue gets: what can move is how concurrent producers share commits.
    for system, peers in (("final-postgres", PG_PEERS), ("final-postgres-fsync",
                                                          PG_PEERS_SYNC)):
        rates = [pg("peers, 4 producers", peer, "jobs_per_s") for peer in peers]
        best = max((r for r in rates if r is not None), default=None)
        ratio(f"{system} 4 producers >= 3x fastest PostgreSQL peer with 4 producers, same "
              "durability", tp(system, "4 producers"), best, 3)
    for system, floor in (("final-postgres", "sql-floor-batch"),
                          ("final-postgres-fsync", "sql-floor-batch-sync")):
        ratio(f"{system} enqueue_many >= 0.5x batched SQL floor", tp(system, "enqueue_many"),
              pg("SQL floor", floor, "jobs_per_s"), 0.5)
    cpu = "processes, CPU-bound jobs"
    ratio("final-postgres CPU-bound: 2 processes >= 1.6x 1 process",
          pg(cpu, "final-postgres", "2_processes"), pg(cpu, "final-postgres", "1_processes"),
          1.6)
    latency = "latency across processes, 1,000/s offered"
    bound("final-postgres latency across processes p50 <= 5 ms",
          pg(latency, "final-postgres", "p50_ms"), 5.0, "ms")
    bound("final-postgres latency across processes p99 <= 50 ms",
          pg(latency, "final-postgres", "p99_ms"), 50.0, "ms")
    return checks


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


#: Row figures that differ between systems of one table, named in its heading.
_PER_ROW = {"offered_per_s": "offered {}/s", "offered": "{} offered", "jobs": "{} jobs"}


def heading(scenario: str, variant: str, rows: dict[str, Any]) -> str:
    """A table's heading, saying what its rows ran: ``latency: steady offer (10,000/s
    offered: naive, ...; 1,000/s offered: huey, ...)``."""
    for key, shape in _PER_ROW.items():
        groups: dict[Any, list[str]] = {}
        for name, row in rows.items():
            if key in row:
                groups.setdefault(row[key], []).append(name)
        if len(groups) == 1:
            return f"{scenario}: {variant}, {shape.format(_cell(next(iter(groups))))} each"
        if groups:
            parts = [f"{shape.format(_cell(value))}: {', '.join(names)}"
                     for value, names in sorted(groups.items(), key=lambda kv: -kv[0])]
            return f"{scenario}: {variant} ({'; '.join(parts)})"
    return f"{scenario}: {variant}"


def print_tables(results: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    for scenario, variants in results.items():
        for variant, rows in variants.items():
            print(f"\n## {heading(scenario, variant, rows)}\n")
            columns: list[str] = []
            for row in rows.values():
                for key in row:
                    if key not in columns and key != "durability":
                        columns.append(key)
            columns.append("durability")
            header = ["system", *columns]
            table = [header] + [[name, *(_cell(row.get(c)) for c in columns)]
                                for name, row in rows.items()]
            widths = [max(len(line[i]) for line in table) for i in range(len(header))]
            for number, line in enumerate(table):
                print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
                      + " |")
                if number == 0:
                    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if checks:
        print("\n## targets\n")
        for check in checks:
            verdict = "met   " if check["pass"] else "missed"
            unit = check.get("unit", "x")
            print(f"{verdict}  {check['target']}: measured {check['measured']} {unit}")


def summary(report: dict[str, Any]) -> str:
    """One Markdown table of every system across scenarios, as the README shows it."""
    res = report["results"]

    def row_of(scenario: str, variant: str, name: str) -> dict[str, Any]:
        row = res.get(scenario, {}).get(variant, {}).get(name, {})
        return row if "error" not in row and "skipped" not in row else {}

    def rate(variant: str, name: str) -> str:
        value = row_of("throughput", variant, name).get("jobs_per_s")
        return "-" if value is None else f"{value:,.0f}"

    machine = report["machine"]
    lines = [
        f"Measured {report['date'][:10]} on {machine['cpu_count']} cores, Python "
        f"{machine['python']}, {machine['platform']}; the run took {report['seconds']:.0f} s.",
        "",
        "| system | durability | jobs/s, 1 producer | jobs/s, 4 producers | jobs/s, "
        "`enqueue_many` | latency p50 / p99 | RSS growth, jobs offered | LOW done in 5 s of "
        "HIGH flood | lost in crash | lost at close |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SYSTEMS:
        if not SYSTEMS[name].adapter or not any(
            name in variants for scenario in res.values() for variants in scenario.values()
        ):
            continue  # (the SQL floor has its own rows, with PostgreSQL's below)
        latency = row_of("latency", "steady offer", name)
        memory = row_of("memory", "offer until full", name)
        starved = row_of("starvation", "HIGH flood", name)
        crashed = row_of("crash", "SIGKILL halfway", name)
        closed = row_of("shutdown", "close()", name)
        cells = [
            name, SYSTEMS[name].durability, rate("1 producer", name), rate("4 producers", name),
            rate("enqueue_many", name),
            f"{latency['p50_ms']:.3f} / {latency['p99_ms']:.3f} ms at "
            f"{latency['offered_per_s']:,}/s" if latency else "-",
            f"{memory['rss_growth_mb']:.1f} MB, {memory.get('offered', 0):,}" if memory else "-",
            f"{starved['low_finished']}/100" if starved else "-",
            f"{crashed['lost']:,} of {crashed['acknowledged']:,}" if crashed else "-",
            f"{closed['lost']:,} of {closed['accepted']:,}" if closed else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    workers = res.get("workers", {}).get("1-32 workers", {})
    if workers:
        lines += ["", "| workers | 1 | 2 | 4 | 8 | 16 | 32 |", "|---|---|---|---|---|---|---|"]
        for name, row in workers.items():
            for kind, label in (("cpu", "CPU-bound, 0.2 ms of Python"),
                                ("io", "I/O-bound, 1 ms sleep")):
                counts = [row.get(f"{kind}_{c}") for c in (1, 2, 4, 8, 16, 32)]
                lines.append(f"| {name}, {label} | "
                             + " | ".join("-" if c is None else f"{c:,.0f}" for c in counts)
                             + " |")
    postgres = res.get("postgres", {})
    if postgres:
        lines += ["", "| PostgreSQL | jobs/s or latency | durability |", "|---|---|---|"]
        for variant in ("processes, no-op jobs", "processes, CPU-bound jobs"):
            row = postgres.get(variant, {}).get("final-postgres", {})
            if "1_processes" in row:
                rates = " / ".join(f"{row[f'{c}_processes']:,.0f}" for c in (1, 2, 4)
                                   if f"{c}_processes" in row)
                lines.append(f"| final-postgres, {variant}, 1 / 2 / 4 processes | {rates} "
                             f"| {SYSTEMS['final-postgres'].durability} |")
        row = postgres.get("latency across processes, 1,000/s offered", {}).get(
            "final-postgres", {})
        if row.get("p50_ms") is not None:
            lines.append(f"| final-postgres, enqueue to start in another process at 1,000/s, "
                         f"p50 / p99 | {row['p50_ms']:.1f} / {row['p99_ms']:.1f} ms | "
                         f"{SYSTEMS['final-postgres'].durability} |")
        row = postgres.get("prefetch, 2 processes", {}).get("final-postgres", {})
        if "slow_seconds_0" in row:
            noop = " / ".join(f"{row[f'noop_jobs_per_s_{p}']:,.0f}" for p in PREFETCHES)
            slow = " / ".join(f"{row[f'slow_seconds_{p}']:.2f}" for p in PREFETCHES)
            settings = " / ".join(PREFETCHES)
            lines.append(f"| final-postgres, 2 processes, prefetch {settings}: no-op jobs/s "
                         f"| {noop} | {SYSTEMS['final-postgres'].durability} |")
            lines.append(f"| final-postgres, 2 processes of 2 workers, prefetch {settings}: "
                         f"seconds for {row['slow_jobs']} jobs of 1 s (at best "
                         f"{row['slow_ideal_seconds']:.0f}) | {slow} | "
                         f"{SYSTEMS['final-postgres'].durability} |")
        for variant, what in (("SQL floor", "raw SQL, 4 claiming threads"),
                              ("peers, 1 producer", "one call per job"),
                              ("peers, 4 producers", "4 producers at once")):
            for name, row in postgres.get(variant, {}).items():
                if "jobs_per_s" in row:
                    lines.append(f"| {name} ({what}) | {row['jobs_per_s']:,.0f} | "
                                 f"{SYSTEMS[name].durability} |")
                else:
                    why = row.get("skipped") or row.get("error")
                    lines.append(f"| {name} | not run: {why} | |")
    if report["targets"]:
        lines += ["", "| target | measured | |", "|---|---|---|"]
        for check in report["targets"]:
            verdict = "met" if check["pass"] else "**missed**"
            lines.append(f"| {check['target']} | {check['measured']} {check.get('unit', 'x')}"
                         f" | {verdict} |")
    return "\n".join(lines)


#: Bar colours by what a system's jobs survive (its ``durability`` says so in words).
_DURABILITY_COLOURS = {"in memory": "#9e9e9e", "survives the process dying": "#f28e2b",
                       "survives power loss": "#4e79a7"}


def durability_class(text: str) -> str:
    if text.startswith("in memory"):
        return "in memory"
    if any(word in text for word in ("fsync=True", "synchronous_commit=on", "FULL", "power")):
        return "survives power loss"
    return "survives the process dying"


def _bar_figures(scenario: str, row: dict[str, Any]) -> tuple[float, str, list[float]] | None:
    """What a system's bar shows: its value, the label beside it, and every run's value
    (for the spread); None if the row has no figure for this chart."""
    if "jobs_per_s" in row:
        runs = [float(r) for r in row.get("runs_jobs_per_s", [])]
        return row["jobs_per_s"], f"{_cell(float(row['jobs_per_s']))}/s", runs
    if "p99_ms" in row:
        return row["p99_ms"], (f"p50 {_cell(float(row['p50_ms']))} / "
                               f"p99 {_cell(float(row['p99_ms']))} ms"), []
    if "rss_growth_mb" in row:
        return row["rss_growth_mb"], (f"{_cell(float(row['rss_growth_mb']))} MB, "
                                      f"{_cell(row.get('offered'))} offered"), []
    if "low_finished" in row:
        return row["low_finished"], f"{row['low_finished']} of {row.get('low_offered', 100)}", []
    if scenario == "crash" and "lost" in row:
        return row["lost"], f"{row['lost']:,} lost of {row['acknowledged']:,} acknowledged", []
    if "lost" in row:
        return row["lost"], f"{row['lost']:,} lost of {row['accepted']:,} accepted", []
    return None


_AXIS_LABELS = {"throughput": "jobs/s", "latency": "enqueue to start, ms (bar: p99, dot: p50)",
                "memory": "peak RSS growth, MB", "starvation": "LOW jobs finished in the window",
                "crash": "acknowledged jobs lost", "shutdown": "accepted jobs lost",
                "postgres": "jobs/s"}


def plot(report: dict[str, Any], directory: Path = RESULTS) -> list[Path]:
    """One PNG per scenario: bars coloured by durability, every run as a dot, the date and
    machine in the corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, ScalarFormatter

    machine = report.get("machine", {})
    footer = (f"{report.get('date', '?')}  ·  {machine.get('cpu_count', '?')} CPUs, "
              f"Python {machine.get('python', '?')}, {machine.get('platform', '?')}"
              + ("  ·  --quick" if report.get("quick") else ""))
    written = []
    for scenario, variants in report["results"].items():
        panels = list(variants.items())
        heights = [max(1.6, 0.42 * len(rows) + 1.0) for _, rows in panels]
        fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights) + 0.8),
                                 squeeze=False, gridspec_kw={"height_ratios": heights})
        for axis, (variant, rows) in zip(axes[:, 0], panels, strict=True):
            axis.set_title(heading(scenario, variant, rows), fontsize=10, loc="left", wrap=True)
            if scenario == "workers":
                _plot_workers(axis, rows, FixedLocator, ScalarFormatter)
                continue
            if scenario == "postgres" and any("1_processes" in r for r in rows.values()):
                _plot_processes(axis, rows)
                continue
            if scenario == "postgres" and any("slow_seconds_0" in r for r in rows.values()):
                _plot_prefetch(axis, rows)
                continue
            shown = [(name, figures) for name, row in rows.items()
                     if (figures := _bar_figures(scenario, row)) is not None]
            if not shown:
                axis.set_axis_off()
                continue
            names = [name for name, _ in shown][::-1]  # the first system on top
            figures = [f for _, f in shown][::-1]
            values = [float(f[0]) for f in figures]
            colours = [_DURABILITY_COLOURS[durability_class(rows[n].get("durability", ""))]
                       for n in names]
            bars = axis.barh(names, values, color=colours)
            axis.bar_label(bars, labels=[f[1] for f in figures], fontsize=8, padding=3)
            for y, (_, _, runs) in enumerate(figures):
                if len(runs) > 1:  # the spread across runs: each run a dot, min-max a line
                    axis.plot([min(runs), max(runs)], [y, y], color="black", linewidth=1)
                    axis.plot(runs, [y] * len(runs), "o", color="black", markersize=3)
            if scenario in ("latency",) or "p50_ms" in next(iter(rows.values()), {}):
                p50 = [float(rows[n].get("p50_ms", 0)) for n in names]
                axis.plot(p50, range(len(names)), "D", color="black", markersize=4)
            # (a panel of latencies says so, whatever the scenario's other panels show)
            label = _AXIS_LABELS["latency" if any("p99_ms" in rows[n] for n in names)
                                 else scenario] if scenario in _AXIS_LABELS else ""
            positive = [v for v in values if v > 0]
            if positive and max(positive) / min(positive) > 20 and scenario != "starvation":
                axis.set_xscale("log")  # rates span orders of magnitude
                label += " (log scale)"
            axis.set_xlabel(label, fontsize=9)
            axis.tick_params(labelsize=9)
            axis.margins(x=0.35)  # room for the labels beside the bars
        legend = [Patch(color=colour, label=name) for name, colour in _DURABILITY_COLOURS.items()]
        fig.legend(handles=legend, loc="upper right", fontsize=8, ncols=3, frameon=False)
        fig.text(0.01, 0.005, footer, fontsize=7, color="#555555")
        fig.tight_layout(rect=(0, 0.02, 1, 0.97))
        path = directory / f"{scenario}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


#: Line and series colours: none of them a durability colour, so that no line reads as one.
_SERIES_COLOURS = ("#59a14f", "#e15759", "#b07aa1", "#9c755f", "#edc948", "#76b7b2")


def _plot_workers(axis: Any, rows: dict[str, Any], locator: Any, formatter: Any) -> None:
    counts_seen: set[int] = set()
    colours = iter(_SERIES_COLOURS * 4)
    for name, row in rows.items():
        for kind in ("cpu", "io"):
            counts = [c for c in (1, 2, 4, 8, 16, 32) if f"{kind}_{c}" in row]
            counts_seen.update(counts)
            axis.plot(counts, [row[f"{kind}_{c}"] for c in counts], marker="o",
                      label=f"{name} ({kind}-bound)", color=next(colours))
    axis.set_ylim(bottom=0)
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_locator(locator(sorted(counts_seen)))
    axis.xaxis.set_major_formatter(formatter())
    axis.set_xlabel("workers", fontsize=9)
    axis.set_ylabel("jobs/s", fontsize=9)
    axis.legend(fontsize=8)


def _plot_prefetch(axis: Any, rows: dict[str, Any]) -> None:
    """Seconds for the slow jobs by prefetch setting, each bar labelled with the no-op
    rate of the same setting."""
    row = next(r for r in rows.values() if "slow_seconds_0" in r)
    settings = list(PREFETCHES)[::-1]
    seconds = [row[f"slow_seconds_{p}"] for p in settings]
    bars = axis.barh([f"prefetch {p}" for p in settings], seconds,
                     color=_SERIES_COLOURS[: len(settings)])
    axis.bar_label(bars, fontsize=8, padding=3, labels=[
        f"{row[f'slow_seconds_{p}']:.2f} s; no-op jobs: "
        f"{_cell(float(row[f'noop_jobs_per_s_{p}']))}/s" for p in settings])
    axis.axvline(row["slow_ideal_seconds"], color="black", linewidth=1, linestyle=":")
    axis.set_xlim(left=0)
    axis.set_xlabel(f"seconds for {row['slow_jobs']} jobs of 1 s over 2 processes of 2 "
                    f"workers (dotted: at best)", fontsize=9)
    axis.tick_params(labelsize=9)
    axis.margins(x=0.45)


def _plot_processes(axis: Any, rows: dict[str, Any]) -> None:
    colours = iter(_SERIES_COLOURS * 4)
    for name, row in rows.items():
        counts = sorted(int(key.split("_")[0]) for key in row if key.endswith("_processes"))
        axis.plot(counts, [row[f"{c}_processes"] for c in counts], marker="o", label=name,
                  color=next(colours))
        for c in counts:
            axis.annotate(_cell(float(row[f"{c}_processes"])), (c, row[f"{c}_processes"]),
                          fontsize=8, textcoords="offset points", xytext=(0, 5),
                          ha="center")
        axis.set_xticks(counts)
    axis.set_ylim(bottom=0, top=axis.get_ylim()[1] * 1.2)  # (room for the labels)
    axis.set_xlabel("processes sharing the queue", fontsize=9)
    axis.set_ylabel("jobs/s", fontsize=9)
    axis.legend(fontsize=8)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in ("jobqueue", "lmdb", "persist-queue", "huey", "matplotlib"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for a smoke test")
    parser.add_argument("--only", help=f"comma-separated scenarios: {', '.join(PLAN)}")
    parser.add_argument("--systems", help=f"comma-separated systems: {', '.join(SYSTEMS)}")
    parser.add_argument("--plot", action="store_true", help="write PNG charts to bench/results")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--from", dest="source", type=Path, default=None, metavar="FILE",
                        help="print and chart an earlier run's JSON instead of running")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the figures (default: bench/results/latest.json, "
                             "or quick.json with --quick)")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else list(PLAN)
    unknown = [s for s in only if s not in PLAN]
    systems = args.systems.split(",") if args.systems else None
    unknown += [s for s in systems or [] if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown scenario or system: {', '.join(unknown)}")

    if args.source is not None:
        return _from_file(args.source, args.plot, args.check)
    size = Size.quick() if args.quick else Size()
    if args.output is None:  # a smoke test must not overwrite the figures the README quotes
        args.output = RESULTS / ("quick.json" if args.quick else "latest.json")
    started = time.perf_counter()
    results = run(only, systems, size)
    checks = targets(results)
    elapsed = time.perf_counter() - started
    print_tables(results, checks)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "processor": platform.machine()},
        "packages": _versions(), "quick": args.quick, "seconds": round(elapsed, 1),
        "results": results, "targets": checks,
    }
    print("\n## summary\n")
    print(summary(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{elapsed:.0f} s; figures written to {args.output}")
    if args.plot:
        for path in plot(report, args.output.parent):
            print(f"chart: {path}")
    if args.check and not all(c["pass"] for c in checks):
        return 1
    return 0


def _from_file(source: Path, charts: bool, check: bool) -> int:
    try:
        report = json.loads(source.read_text())
        results, checks = report["results"], report.get("targets", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"python -m bench: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    print(f"# {source}: a run of {report.get('date', '?')}")
    print_tables(results, checks)
    print("\n## summary\n")
    print(summary(report))
    if charts:
        for path in plot(report, source.parent):
            print(f"chart: {path}")
    return 1 if check and not all(c["pass"] for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
