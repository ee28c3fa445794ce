"""What the control plane costs the inference path, in two parts:

- **token**: the same echo model behind two servers, one with token authorization on
  (zerobatch's default: each prediction's `Authorization: Bearer` header checked against the
  inference key) and one with it off, loaded in turn by the HTTP load generator at a fixed
  concurrency: the median throughput and latency of each, and their ratio. Both servers run
  at once, so each round measures them under the same conditions.
- **registration**: one server serving echo while, in a thread, the management API registers
  a copy of echo under another name (synchronously, one worker), then unregisters it, again
  and again: echo's throughput in a window with that churn against a window without it,
  alternated. A registration costs a `prepare_model` process and a worker process starting:
  on a small machine they take CPU from the model that serves.

    python -m benchmarks.control_plane [--rounds 3] [--duration 6] [--concurrency 32]
                                       [--json PATH]
"""

from __future__ import annotations

import http.client
import os
import statistics
import threading

from benchmarks.common import (
    BENCH_MODELS,
    at_least,
    bench_parser,
    free_port,
    run_record,
    write_json,
    zerobatch_server,
)
from benchmarks.loadgen import HttpTarget
from benchmarks.loadgen_http import run_http

ECHO_DIR = os.path.join(BENCH_MODELS, "echo")
ECHO = {"echo": ECHO_DIR}
BODY = b'{"x": 1}'
COMMON = ("--frontends", "1", "--batch-size", "8", "--max-batch-delay", "5",
          "--max-queue", "1000")


def measure(port: int, headers: dict, concurrency: int, duration_s: float) -> dict:
    target = HttpTarget(host="127.0.0.1", port=port, path="/predictions/echo", body=BODY,
                        headers={"Content-Type": "application/json", **headers})
    result = run_http(target, concurrency=concurrency, duration_s=duration_s,
                      max_requests=10_000_000)
    return {"rps": result.ok / result.duration_s,
            "p50_ms": result.latency.percentile(50) / 1000,
            "p99_ms": result.latency.percentile(99) / 1000,
            "errors": sum(result.errors.values())}


def medians(runs: dict[str, list[dict]]) -> dict[str, dict]:
    return {kind: {key: statistics.median(run[key] for run in kind_runs)
                   for key in kind_runs[0]} for kind, kind_runs in runs.items()}


def report(part: str, round_index: int, kind: str, figures: dict) -> None:
    print(f"{part} round {round_index + 1} {kind}: {figures['rps']:,.0f} req/s, p50 "
          f"{figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, errors "
          f"{figures['errors']}", flush=True)


def token_part(rounds: int, concurrency: int, duration_s: float) -> dict:
    ports = {"off": free_port(), "on": free_port()}
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with zerobatch_server(ECHO, "--http-port", str(ports["off"]), *COMMON), \
            zerobatch_server(ECHO, "--http-port", str(ports["on"]), *COMMON,
                             token_auth=True) as secured:
        headers = {"off": {}, "on": {"Authorization": f"Bearer {secured['inference_key']}"}}
        for round_index in range(rounds):
            for kind in ("off", "on"):
                runs[kind].append(measure(ports[kind], headers[kind], concurrency, duration_s))
                report("token", round_index, kind, runs[kind][-1])
    median = medians(runs)
    return {"median": median, "ratio_on_off": median["on"]["rps"] / median["off"]["rps"],
            "runs": runs}


class Churn:
    """Register and unregister a copy of echo on the management port until stopped; counts
    the registrations that completed and those that failed."""

    def __init__(self, management_port: int) -> None:
        self.port = management_port
        self.done = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Churn":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _call(self, method: str, path: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            status = self._call("POST", f"/models?url=file://{ECHO_DIR}&model_name=churned"
                                        "&initial_workers=1&synchronous=true")
            if status == 200:
                self.done += 1
            else:
                self.failed += 1
            self._call("DELETE", "/models/churned")


def registration_part(rounds: int, concurrency: int, duration_s: float) -> dict:
    port, management_port = free_port(), free_port()
    runs: dict[str, list[dict]] = {"quiet": [], "churn": []}
    registrations = failed = 0
    with zerobatch_server(ECHO, "--http-port", str(port), *COMMON, "--enable-model-api",
                          "--management-address", f"http://127.0.0.1:{management_port}"):
        for round_index in range(rounds):
            runs["quiet"].append(measure(port, {}, concurrency, duration_s))
            report("registration", round_index, "quiet", runs["quiet"][-1])
            with Churn(management_port) as churn:
                runs["churn"].append(measure(port, {}, concurrency, duration_s))
            registrations += churn.done
            failed += churn.failed
            report("registration", round_index, f"churn ({churn.done} registered)",
                   runs["churn"][-1])
    median = medians(runs)
    return {"median": median,
            "ratio_churn_quiet": median["churn"]["rps"] / median["quiet"]["rps"],
            "registrations": registrations, "failed_registrations": failed, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("benchmarks.control_plane")
    parser.add_argument("--rounds", type=at_least(1), default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    parser.add_argument("--concurrency", type=at_least(1), default=32)
    parser.add_argument("--parts", default="token,registration")
    args = parser.parse_args(argv)
    figures = {}
    if "token" in args.parts:
        figures["token"] = token_part(args.rounds, args.concurrency, args.duration)
    if "registration" in args.parts:
        figures["registration"] = registration_part(args.rounds, args.concurrency,
                                                    args.duration)
    print()
    if "token" in figures:
        median = figures["token"]["median"]
        print(f"token: off {median['off']['rps']:,.0f} req/s, on {median['on']['rps']:,.0f} "
              f"req/s: on/off {figures['token']['ratio_on_off']:.3f}")
    if "registration" in figures:
        part = figures["registration"]
        median = part["median"]
        print(f"registration: quiet {median['quiet']['rps']:,.0f} req/s, with churn "
              f"{median['churn']['rps']:,.0f} req/s: {part['ratio_churn_quiet']:.3f} "
              f"({part['registrations']} registrations, {part['failed_registrations']} failed)")
    write_json(args.json, run_record("control_plane", vars(args), figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
