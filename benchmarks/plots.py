"""The PNG plots of one harness run: latency and throughput against concurrency, and the
batch sizes zerobatch formed, per workload. matplotlib is imported only when plots are
written, so importing the report stays cheap.
"""

from __future__ import annotations

import os

from benchmarks.records import LOAD_SCENARIOS, SERVERS, latency, missing, ordered, rps


def series_label(record: dict) -> str:
    server, transport = record["server"], record.get("transport", "http")
    return server if server != "zerobatch" else f"zerobatch ({transport})"


def load_series(records: list[dict], workload: str) -> dict[str, list[dict]]:
    """Latency and throughput records of one workload by server label, sorted by concurrency."""
    series: dict[str, dict] = {}
    for record in records:
        if (record.get("scenario") in LOAD_SCENARIOS and record.get("workload") == workload
                and record.get("concurrency")):
            series.setdefault(series_label(record), {})[record["concurrency"]] = record
    return {label: [by_c[c] for c in sorted(by_c)]
            for label, by_c in sorted(series.items(), key=lambda item: _label_order(item[0]))}


def _label_order(label: str) -> tuple:
    """zerobatch first, then the peers in SERVERS order, so colours match across plots."""
    server = label.split(" ")[0]
    return (SERVERS.index(server) if server in SERVERS else len(SERVERS), label)


def _positive(points: list[tuple]) -> tuple[list, list]:
    """(xs, ys) without missing or non-positive ys, which a log axis cannot show."""
    kept = [(x, y) for x, y in points if not missing(y) and y > 0]
    return [x for x, _ in kept], [y for _, y in kept]


def write_plots(run: dict, results_dir: str) -> list[str]:
    """PNG plots per workload; matplotlib is imported here so importing the module stays cheap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = run.get("records", [])
    written = []
    for workload in ordered(r["workload"] for r in records if r.get("scenario") in LOAD_SCENARIOS):
        series = load_series(records, workload)
        for name, draw in (("latency_vs_concurrency", _draw_latency),
                           ("throughput_vs_concurrency", _draw_throughput),
                           ("batch_sizes", _draw_batch_sizes)):
            figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
            try:
                if draw(axes, series, workload):
                    axes.set_title(f"{workload}: {name.replace('_', ' ')}")
                    figure.tight_layout()
                    path = os.path.join(results_dir, f"{name}_{workload}.png")
                    figure.savefig(path)
                    written.append(path)
            finally:
                plt.close(figure)
    return written


def _concurrency_axis(axes, series: dict) -> None:
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted({r["concurrency"] for records in series.values() for r in records}))
    axes.xaxis.set_major_formatter("{x:.0f}")
    axes.xaxis.set_minor_formatter("")
    axes.set_xlabel("concurrency (connections)")
    axes.grid(True, which="both", alpha=0.3)


def _draw_latency(axes, series: dict, workload: str) -> bool:
    """p99 solid and p50 dashed in the same colour for each server."""
    drawn = False
    for index, (label, records) in enumerate(series.items()):
        for key, style in (("p99", "-"), ("p50", "--")):
            xs, ys = _positive([(r["concurrency"], latency(r, key)) for r in records])
            if xs:
                axes.plot(xs, ys, style, marker="o", color=f"C{index}",
                          label=f"{label} {key}")
                drawn = True
    if drawn:
        axes.set_yscale("log")
        axes.set_ylabel("latency ms (log)")
        _concurrency_axis(axes, series)
        axes.legend(fontsize="small", ncol=2)
    return drawn


def _draw_throughput(axes, series: dict, workload: str) -> bool:
    drawn = False
    for label, records in series.items():
        xs, ys = _positive([(r["concurrency"], rps(r)) for r in records])
        if xs:
            axes.plot(xs, ys, marker="o", label=label)
            drawn = True
    if drawn:
        axes.set_ylabel("requests/s")
        axes.set_ylim(bottom=0)
        axes.yaxis.set_major_formatter("{x:,.0f}")
        _concurrency_axis(axes, series)
        axes.legend(fontsize="small")
    return drawn


def _draw_batch_sizes(axes, series: dict, workload: str) -> bool:
    """Grouped bars: share of requests served in a batch of each size, one bar per concurrency."""
    runs = [r for label, records in series.items() if label.startswith("zerobatch")
            for r in records if r.get("batch_sizes")]
    if not runs:
        return False
    sizes = sorted({int(size) for r in runs for size in r["batch_sizes"]})
    width = 0.8 / len(runs)
    for index, record in enumerate(runs):
        counts = {int(size): count for size, count in record["batch_sizes"].items()}
        requests = sum(size * count for size, count in counts.items()) or 1
        shares = [100 * size * counts.get(size, 0) / requests for size in sizes]
        offsets = [position + (index - (len(runs) - 1) / 2) * width
                   for position in range(len(sizes))]
        axes.bar(offsets, shares, width,
                 label=f"{record['concurrency']} ({record.get('transport', 'http')})")
    axes.set_xticks(range(len(sizes)), [str(size) for size in sizes])
    axes.set_xlabel("batch size")
    axes.set_ylabel("% of requests served in a batch of this size")
    axes.legend(title="concurrency", fontsize="small")
    return True
