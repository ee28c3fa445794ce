"""Turns one harness run (RESULTS_DIR/run.json) into report.md, PNG plots, and the README's
benchmark section, so every published figure traces back to a single recorded run.

    python -m benchmarks.report RESULTS_DIR [--readme README.md] [--plot-dir docs/bench]

The report reads only run.json, never the histograms themselves: a record's "result" (a
LoadResult.to_dict()) already carries the summaries, and these keys are the contract with the
load generator: result["latency"] = {"p50", "p90", "p99", "p999", "mean", "max", "count"}
(ms), result["rps"], result["errors"] ({status or error type: count}), result["ok"],
result["sent"]. Optional run.json keys read when present: "command" (the harness's command
line), "servers" (the servers the run meant to compare; default SERVERS) and "missing"
({server: why it did not run}). Anything absent renders as "n/a" instead of failing, so a peer
that could not be installed still leaves a complete report.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil

from benchmarks.plots import write_plots
from benchmarks.records import (
    LOAD_SCENARIOS,
    SERVERS,
    find,
    latency,
    load_run,
    missing,
    ordered,
    rps,
    select,
)

FLOORS = ("zmq-relay", "zmq-proxy", "bare-falcon")
NA = "n/a"
MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"
CEILING_BATCH = "8"
README_PLOT = "throughput_vs_concurrency_echo.png"
PERCENTILES = (("p50", "p50 ms"), ("p90", "p90 ms"), ("p99", "p99 ms"), ("p999", "p99.9 ms"))


# ---------------------------------------------------------------- formatting

def fmt_ms(value) -> str:
    if missing(value):
        return NA
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def fmt_rps(value) -> str:
    return NA if missing(value) else f"{value:,.0f}"


def divide(numerator, denominator) -> float | None:
    if missing(numerator) or missing(denominator) or denominator <= 0:
        return None
    return numerator / denominator


def fmt_ratio(numerator, denominator) -> str:
    ratio = divide(numerator, denominator)
    return NA if ratio is None else f"{ratio:.2f}×"


def fmt_share(value) -> str:
    return NA if missing(value) else f"{value:.1%}"


def fmt_errors(errors: dict | None) -> str:
    if errors is None:
        return NA
    shown = [f"{kind}: {count:,}" for kind, count in sorted(errors.items()) if count]
    return ", ".join(shown) or "0"


def fmt_batches(batch_sizes: dict | None, top: int = 3) -> str:
    """Mean batch size and the most frequent sizes, e.g. "mean 7.9 (8×900, 1×10)"."""
    if not batch_sizes:
        return NA
    counts = {int(size): count for size, count in batch_sizes.items() if count}
    batches = sum(counts.values())
    if not batches:
        return NA
    mean = sum(size * count for size, count in counts.items()) / batches
    common = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{size}×{count:,}" for size, count in common[:top])
    return f"mean {mean:.1f} ({shown}{', …' if len(common) > top else ''})"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """The one Markdown table writer every section uses."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def servers_of(run: dict) -> list[str]:
    wanted = list(run.get("servers") or SERVERS)
    seen = [r["server"] for r in run.get("records", [])
            if r.get("scenario") in LOAD_SCENARIOS + ("overload", "startup")]
    return wanted + [server for server in dict.fromkeys(seen) if server not in wanted]


# ---------------------------------------------------------------- sections

def command_of(run: dict) -> str:
    command = run.get("command")
    return shlex.join(command) if isinstance(command, list) else command or NA


def machine_of(run: dict) -> str:
    machine = run.get("machine") or {}
    return (f"{machine.get('cpu_model') or NA}, {machine.get('cpus') or NA} CPUs, "
            f"{machine.get('platform') or NA}")


def header_section(run: dict) -> str:
    versions = ", ".join(f"{name} {v}" for name, v in (run.get("versions") or {}).items())
    lines = [
        "# zerobatch benchmark report", "",
        f"- time: {run.get('time') or NA}",
        f"- commit: `{run.get('commit') or NA}`",
        f"- machine: {machine_of(run)}",
        f"- versions: {versions or NA}",
        f"- command: `{command_of(run)}`",
    ]
    if run.get("settings"):
        lines += ["", "Settings:", "", "```json", json.dumps(run["settings"], indent=2), "```"]
    return "\n".join(lines)


def summary_section(run: dict) -> str:
    """HTTP req/s (p50) per workload and concurrency, servers as columns: the README table."""
    records = [r for r in run.get("records", [])
               if r.get("scenario") in LOAD_SCENARIOS and r.get("transport", "http") == "http"]
    if not records:
        return f"## Summary (HTTP)\n\n{NA}: no latency or throughput records in this run."
    servers = servers_of(run)
    rows = []
    for workload in ordered(r["workload"] for r in records):
        mine = select(records, workload=workload)
        for concurrency in ordered(r.get("concurrency") for r in mine):
            cells = [_rps_p50(find(mine, server=s, concurrency=concurrency)) for s in servers]
            zb = find(mine, server="zerobatch", concurrency=concurrency)
            ratios = [fmt_ratio(rps(zb), rps(find(mine, server=s, concurrency=concurrency)))
                      for s in servers if s != "zerobatch"]
            rows.append([workload, concurrency, *cells, *ratios])
    headers = ["workload", "concurrency", *[f"{s} req/s (p50 ms)" for s in servers],
               *[f"zerobatch ÷ {s}" for s in servers if s != "zerobatch"]]
    return "## Summary (HTTP)\n\n" + table(headers, rows)


def _rps_p50(record: dict | None) -> str:
    if record is None:
        return NA
    return f"{fmt_rps(rps(record))} ({fmt_ms(latency(record, 'p50'))})"


def load_cells(record: dict | None) -> list[str]:
    """req/s, the four percentiles and errors of one load record (n/a when absent)."""
    result = None if record is None else record.get("result") or {}
    return [fmt_rps(rps(record)), *[fmt_ms(latency(record, key)) for key, _ in PERCENTILES],
            fmt_errors(None if result is None else result.get("errors", {}))]


LOAD_HEADERS = ["req/s", *[label for _, label in PERCENTILES], "errors"]


def load_sections(run: dict) -> list[str]:
    """One table per scenario × workload: a row per server, transport and concurrency, with
    zerobatch's HTTP req/s and p50 against each peer at the same concurrency."""
    records = run.get("records", [])
    servers = servers_of(run)
    sections = []
    for scenario in LOAD_SCENARIOS:
        mine = select(records, scenario=scenario)
        for workload in ordered(r["workload"] for r in mine):
            rows = _load_rows(select(mine, workload=workload), servers)
            headers = ["server", "transport", "concurrency", *LOAD_HEADERS, "batch sizes",
                       "zerobatch req/s ÷ this", "this p50 ÷ zerobatch p50"]
            sections.append(f"## {scenario}: {workload}\n\n" + table(headers, rows))
    return sections or [f"## latency and throughput\n\n{NA}: no records in this run."]


def _load_rows(records: list[dict], servers: list[str]) -> list[list[str]]:
    rows = []
    for concurrency in ordered(r.get("concurrency") for r in records):
        at = select(records, concurrency=concurrency)
        zb = find(at, server="zerobatch", transport="http")
        for server in servers:
            found = select(at, server=server) or [None]
            for record in found:
                peer = record is not None and server != "zerobatch"
                rows.append([server, record.get("transport", "http") if record else NA,
                             concurrency, *load_cells(record),
                             fmt_batches(record.get("batch_sizes")) if record else NA,
                             fmt_ratio(rps(zb), rps(record)) if peer else "",
                             fmt_ratio(latency(record, "p50"), latency(zb, "p50"))
                             if peer else ""])
    return rows


def ceiling_section(run: dict) -> str:
    """Batching efficiency: each server's req/s against the model's batched ceiling."""
    records = run.get("records", [])
    ceilings = select(records, scenario="ceiling")
    if not ceilings:
        return f"## Batching efficiency\n\n{NA}: no ceiling measurement in this run."
    servers = servers_of(run)
    rows = []
    for ceiling in ceilings:
        forward, limit = ceiling.get("forward_ms") or {}, ceiling.get("ceiling_rps") or {}
        top = limit.get(CEILING_BATCH)
        tops = {s: _own_ceiling(ceiling, s) for s in servers}
        load = select(records, scenario="throughput", workload=ceiling["workload"],
                      transport="http")
        for concurrency in ordered(r.get("concurrency") for r in load) or [None]:
            at = select(load, concurrency=concurrency)
            shares = [fmt_share(divide(rps(find(at, server=s)), tops[s])) for s in servers]
            rows.append([ceiling["workload"], fmt_ms(forward.get("1")),
                         fmt_ms(forward.get(CEILING_BATCH)), fmt_rps(top),
                         NA if concurrency is None else concurrency,
                         fmt_rps(rps(find(at, server="zerobatch"))), *shares])
    headers = ["workload", "forward ms (batch 1)", f"forward ms (batch {CEILING_BATCH})",
               f"ceiling req/s (batch {CEILING_BATCH})", "concurrency", "zerobatch req/s",
               *[f"{s} ÷ ceiling" for s in servers]]
    notes = [_ceiling_note(c) for c in ceilings if len(c.get("measurements") or ()) > 1]
    return ("## Batching efficiency (HTTP)\n\n" + table(headers, rows)
            + ("\n\n" + "\n".join(notes) if notes else ""))


def _own_ceiling(ceiling: dict, server: str):
    """A server's ceiling req/s at CEILING_BATCH: from the measurements around its own run
    where the run recorded them ("by_server"), else the workload's mean."""
    own = (ceiling.get("by_server") or {}).get(server) or ceiling
    return (own.get("ceiling_rps") or {}).get(CEILING_BATCH)


def _ceiling_note(ceiling: dict) -> str:
    measured = ", ".join(fmt_ms(m.get(CEILING_BATCH)) for m in ceiling["measurements"])
    by_server = ceiling.get("by_server")
    if not by_server:  # runs before 4e045fd: measured before and after all the servers
        return (f"- {ceiling['workload']}: forward ms at batch {CEILING_BATCH} measured before "
                f"and after the servers ran it: {measured}; the ceiling uses their mean.")
    own = ", ".join(f"{server} {fmt_rps(_own_ceiling(ceiling, server))}"
                    for server in by_server)
    return (f"- {ceiling['workload']}: forward ms at batch {CEILING_BATCH} measured before the "
            f"first server ran it and after each one: {measured}; each server's share is "
            f"against the mean of the two around its own run (ceiling req/s: {own}); the "
            "forward and ceiling columns are the mean of all.")


def overload_section(run: dict) -> str:
    records = select(run.get("records", []), scenario="overload")
    if not records:
        return f"## Overload\n\n{NA}: no overload records in this run."
    rows = []
    for workload in ordered(r["workload"] for r in records):
        for server in servers_of(run):
            record = find(records, workload=workload, server=server)
            result = (record or {}).get("result") or {}
            rows.append([workload, server, fmt_rps((record or {}).get("rate")),
                         fmt_ms((record or {}).get("deadline_ms")), _count(result.get("sent")),
                         fmt_share((record or {}).get("accepted")),
                         fmt_share((record or {}).get("within_deadline_of_accepted")),
                         fmt_ms((record or {}).get("refusal_p99_ms")),
                         fmt_ms(latency(record, "p99")),
                         fmt_errors(result.get("errors")) if record else NA])
    headers = ["workload", "server", "arrivals/s", "deadline ms", "sent", "accepted",
               "within deadline (of accepted)", "refusal p99 ms", "accepted p99 ms", "errors"]
    return "## Overload (open loop)\n\n" + table(headers, rows)


def startup_section(run: dict) -> str:
    records = select(run.get("records", []), scenario="startup")
    if not records:
        return f"## Startup\n\n{NA}: no startup records in this run."
    servers = servers_of(run)
    rows = [[workload, *[_seconds(find(records, workload=workload, server=s)) for s in servers]]
            for workload in ordered(r["workload"] for r in records)]
    return ("## Startup to the first prediction (s)\n\n"
            + table(["workload", *servers], rows))


def _count(value) -> str:
    return NA if missing(value) else f"{value:,}"


def _seconds(record: dict | None) -> str:
    value = None if record is None else record.get("startup_s")
    return NA if missing(value) else f"{value:.2f}"


def floor_section(run: dict) -> str:
    """The floor (bare relay, zmq_proxy, bare Falcon) beside zerobatch on the same transport."""
    records = run.get("records", [])
    floors = select(records, scenario="floor")
    if not floors:
        return f"## Floor\n\n{NA}: no floor records in this run."
    rows = []
    for record in sorted(floors, key=lambda r: (r["workload"], r.get("concurrency") or 0,
                                                FLOORS.index(r["server"])
                                                if r["server"] in FLOORS else len(FLOORS))):
        zb = find(records, scenario="throughput", server="zerobatch",
                  workload=record["workload"], concurrency=record.get("concurrency"),
                  transport=record.get("transport"))
        rows.append([record["workload"], record["server"], record.get("transport", NA),
                     record.get("concurrency", NA), *load_cells(record), fmt_rps(rps(zb)),
                     fmt_share(divide(rps(zb), rps(record)))])
    headers = ["workload", "floor", "transport", "concurrency", *LOAD_HEADERS,
               "zerobatch req/s (same transport)", "zerobatch ÷ floor"]
    return "## Floor\n\n" + table(headers, rows)


def targets_section(run: dict) -> str:
    targets = run.get("targets") or []
    if not targets:
        return f"## Targets\n\n{NA}: no targets in this run."
    reached = {True: "yes", False: "**no**", None: NA}
    rows = [[t.get("figure", NA), t.get("target", NA), t.get("measured") or NA,
             reached.get(t.get("reached"), NA)] for t in targets]
    return "## Targets\n\n" + table(["figure", "target", "measured", "reached"], rows)


def notes_section(run: dict) -> str:
    lines = ["## How each server is fed", ""]
    notes = run.get("notes") or {}
    lines += [f"- {server}: {text}" for server, text in notes.items()] or [f"- {NA}"]
    missing = run.get("missing") or {}
    if missing:
        lines += ["", "Not run (shown as n/a above):", ""]
        lines += [f"- {server}: {why}" for server, why in missing.items()]
    return "\n".join(lines)


def render(run: dict) -> str:
    sections = [header_section(run), summary_section(run), targets_section(run),
                *load_sections(run), ceiling_section(run), overload_section(run),
                startup_section(run), floor_section(run), notes_section(run)]
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------- entry points

def write_report(results_dir: str) -> list[str]:
    """Write report.md and the PNG plots into results_dir; returns the paths written."""
    run = load_run(results_dir)
    path = os.path.join(results_dir, "report.md")
    with open(path, "w") as handle:
        handle.write(render(run))
    return [path, *write_plots(run, results_dir)]


def readme_section(run: dict, plot_link: str | None) -> str:
    lines = [f"Latest run: {run.get('time') or NA}, commit `{run.get('commit') or NA}`, on "
             f"{machine_of(run)}, made with `{command_of(run)}`.", "",
             summary_section(run).replace("## ", "#### ", 1), "",
             targets_section(run).replace("## ", "#### ", 1)]
    if plot_link:
        lines += ["", f"![throughput against concurrency]({plot_link})"]
    return "\n".join(lines)


def _readme_plot(results_dir: str) -> str | None:
    if os.path.exists(os.path.join(results_dir, README_PLOT)):
        return README_PLOT
    pngs = sorted(name for name in os.listdir(results_dir) if name.endswith(".png"))
    return next((name for name in pngs if name.startswith("throughput")), None) or (
        pngs[0] if pngs else None)


def update_readme(results_dir: str, readme_path: str, plot_dir: str | None = None) -> None:
    """Replace the README text between the bench markers with the latest summary, the targets,
    one plot (copied into plot_dir, default docs/bench/ beside the README), the command and the
    machine. Only that section changes, and running it twice gives the same file."""
    with open(readme_path) as handle:
        text = handle.read()
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme_path} has no {MARK_START} … {MARK_END} section: add the two "
                         "marker lines, in that order, where the benchmark table belongs")
    readme_dir = os.path.dirname(os.path.abspath(readme_path))
    plot_dir = plot_dir or os.path.join(readme_dir, "docs", "bench")
    plot, link = _readme_plot(results_dir), None
    if plot:
        os.makedirs(plot_dir, exist_ok=True)
        shutil.copyfile(os.path.join(results_dir, plot), os.path.join(plot_dir, plot))
        link = os.path.relpath(os.path.join(plot_dir, plot), readme_dir).replace(os.sep, "/")
    section = readme_section(load_run(results_dir), link)
    updated = f"{text[:start + len(MARK_START)]}\n{section}\n{text[end:]}"
    with open(readme_path, "w") as handle:
        handle.write(updated)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write report.md and plots for a harness run.")
    parser.add_argument("results_dir", help="the directory holding run.json")
    parser.add_argument("--readme", help="also update this README's bench section")
    parser.add_argument("--plot-dir", help="where the README's plot is copied "
                        "(default: docs/bench beside the README)")
    args = parser.parse_args(argv)
    for path in write_report(args.results_dir):
        print(f"wrote {path}")
    if args.readme:
        update_readme(args.results_dir, args.readme, args.plot_dir)
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
