"""What observability costs the inference path: the same echo model behind four servers that
run at once, loaded in turn by the HTTP load generator at a fixed concurrency, round by round
(the order reversed every other round):

  off       `--metrics-address none`: no metrics API, nothing recorded (the benchmarks'
            default)
  recorded  the metrics API on (zerobatch's default): every process records its figures;
            nobody scrapes them
  scraped   the same, and its /metrics scraped every SCRAPE_INTERVAL_S by a thread while it
            is loaded (a Prometheus scrapes every 15 to 60 s)
  access    scraped (while loaded), with `--access-log`: a log line per request

So recorded/off is what recording costs, scraped/recorded what scraping adds.

For each: the median throughput and latency over rounds, each one's ratio to off, and the
median of its ratios to off round by round (steadier on a machine whose speed moves between
rounds: both sides of a round ran within seconds of each other).
Tracing is not measured: without OTEL_* variables it is one `is None` test per request and
per batch.

    python -m benchmarks.observability [--rounds 3] [--duration 6] [--concurrency 32]
                                       [--json PATH]
"""

from __future__ import annotations

import http.client
import statistics
import threading

from benchmarks.common import (
    at_least,
    bench_parser,
    free_port,
    run_record,
    write_json,
    zerobatch_server,
)
from benchmarks.control_plane import COMMON, ECHO, measure

KINDS = ("off", "recorded", "scraped", "access")
SCRAPED_KINDS = ("scraped", "access")
SCRAPE_INTERVAL_S = 1.0


class Scraper:
    """GET /metrics of the metrics ports in `ports` (set it to [] for none) every
    SCRAPE_INTERVAL_S until stopped; counts the scrapes and their bytes, and the failures."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.scrapes = 0
        self.failures = 0
        self.last_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_INTERVAL_S):
            for port in list(self.ports):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    connection.request("GET", "/metrics")
                    response = connection.getresponse()
                    body = response.read()
                    if response.status == 200:
                        self.scrapes += 1
                        self.last_bytes = len(body)
                    else:
                        self.failures += 1
                except OSError:
                    self.failures += 1
                finally:
                    connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("benchmarks.observability")
    parser.add_argument("--rounds", type=at_least(1), default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    parser.add_argument("--concurrency", type=at_least(1), default=32)
    args = parser.parse_args(argv)
    ports = {kind: free_port() for kind in KINDS}
    metrics_ports = {kind: free_port() for kind in KINDS[1:]}

    def metrics(kind: str) -> tuple[str, str]:
        return "--metrics-address", f"http://127.0.0.1:{metrics_ports[kind]}"

    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    with zerobatch_server(ECHO, "--http-port", str(ports["off"]), *COMMON), \
            zerobatch_server(ECHO, "--http-port", str(ports["recorded"]), *COMMON,
                             *metrics("recorded")), \
            zerobatch_server(ECHO, "--http-port", str(ports["scraped"]), *COMMON,
                             *metrics("scraped")), \
            zerobatch_server(ECHO, "--http-port", str(ports["access"]), *COMMON,
                             *metrics("access"), "--access-log"), \
            Scraper() as scraper:
        for round_index in range(args.rounds):
            order = KINDS if round_index % 2 == 0 else KINDS[::-1]
            for kind in order:
                scraper.ports = [metrics_ports[kind]] if kind in SCRAPED_KINDS else []
                runs[kind].append(measure(ports[kind], {}, args.concurrency, args.duration))
                scraper.ports = []
                figures = runs[kind][-1]
                print(f"round {round_index + 1} {kind}: {figures['rps']:,.0f} req/s, p50 "
                      f"{figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, errors "
                      f"{figures['errors']}", flush=True)
    median = {kind: {key: statistics.median(run[key] for run in kind_runs)
                     for key in kind_runs[0]} for kind, kind_runs in runs.items()}
    figures = {"median": median, "runs": runs, "scrapes": scraper.scrapes,
               "scrape_failures": scraper.failures, "scrape_bytes": scraper.last_bytes,
               "ratios_to_off": {kind: median[kind]["rps"] / median["off"]["rps"]
                                 for kind in KINDS[1:]},
               "round_ratio_medians": {
                   kind: statistics.median(run["rps"] / off["rps"] for run, off
                                           in zip(runs[kind], runs["off"], strict=True))
                   for kind in KINDS[1:]},
               "scraped_over_recorded_round_median": statistics.median(
                   scraped["rps"] / recorded["rps"] for scraped, recorded
                   in zip(runs["scraped"], runs["recorded"], strict=True))}
    print()
    for kind in KINDS:
        print(f"{kind}: {median[kind]['rps']:,.0f} req/s, p50 {median[kind]['p50_ms']:.2f} ms, "
              f"p99 {median[kind]['p99_ms']:.2f} ms")
    print(", ".join(f"{kind}/off {ratio:.3f}" for kind, ratio in figures["ratios_to_off"].items())
          + f" ({scraper.scrapes} scrapes of {scraper.last_bytes:,} bytes, "
          f"{scraper.failures} failed)")
    print("round by round, median: " + ", ".join(
        f"{kind}/off {ratio:.3f}" for kind, ratio in figures["round_ratio_medians"].items())
        + f", scraped/recorded {figures['scraped_over_recorded_round_median']:.3f}")
    write_json(args.json, run_record("observability", vars(args), figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
