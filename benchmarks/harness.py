"""The benchmark harness: every scenario of the comparison, run against each server in one
invocation, into one results directory (run.json, report.md, PNG plots).

    python -m benchmarks run [--servers zerobatch,torchserve,litserve] [--quick] ...
    make bench BENCH_ARGS="..."      (the same, after building)

One run, in this order (each server started fresh per case, all with the same settings, one
worker and one torch thread; a case is a workload and its batching: `echo` at batch size 1,
each server's default, for the pure per-request overhead, and `echo-b8`, `mlp`, `sleep` at
batch size 8 with a 5 ms delay; a 100-byte echo body, a 49 KB MLP input):
  ceiling     the model's own speed outside any server (batched_ceiling), per workload:
              measured right before the first server runs that workload and again right
              after each server; each server's share is against the mean of the two
              measurements around its own run, so that the machine's drift while the others
              run does not move it (on 2026-12-01 the MLP's batch-8 forward went from 6.3 to
              8.2 ms within one run)
  startup     spawn -> first successful prediction, taken from every server start
  latency     concurrency 1 over HTTP (our generator: full HDR percentiles)
  throughput  concurrency 8, 64, 256 over HTTP (wrk when installed: it costs the shared
              cores least; our generator otherwise), plus 32 for the MLP; zerobatch also over
              ZeroMQ at 1 and 64
  overload    open loop at OVERLOAD_FACTOR x the model's batched ceiling with a 100 ms
              deadline (zerobatch gets it as its request timeout; the peers have none, so
              the client waits up to 1 s and counts what came late)
  floor       a bare Python ZeroMQ relay, libzmq's C proxy (both in front of a protocol
              echo) and a bare Falcon app, at concurrency 1 and 64
Targets (issue 4) are checked against the same run's figures and written with them.
Every load run is bounded in time and count; only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

from benchmarks.common import ROOT, bare_falcon, processes
from benchmarks.histogram import Histogram
from benchmarks.loadgen import HttpTarget, LoadResult, run_wrk, wrk_available
from benchmarks.loadgen_http import run_http
from benchmarks.loadgen_zmq import run_zmq
from benchmarks.peers import ModelSettings, Peer, Started, get_peer
from benchmarks.records import SERVERS

#: batch size 8, 5 ms delay: the issue's settings wherever batching is compared
BATCHED = ModelSettings(batch_size=8, max_batch_delay_ms=5, workers=1, max_queue=1000)
#: each server's default, no batching (TorchServe ignores the delay at batch size 1 and
#: refuses 0): what an echo measures as pure per-request overhead
UNBATCHED = ModelSettings(batch_size=1, max_batch_delay_ms=100, workers=1, max_queue=1000)


@dataclass(frozen=True)
class Case:
    """A workload served with given settings; `name` is how the report calls it."""

    name: str
    workload: str
    settings: ModelSettings


CASES = {case.name: case for case in (
    Case("echo", "echo", UNBATCHED),
    Case("echo-b8", "echo", BATCHED),
    Case("mlp", "mlp", BATCHED),
    Case("sleep", "sleep", BATCHED),
)}
WORKLOADS = tuple(CASES)
CONCURRENCIES = (1, 8, 64, 256)
EXTRA_CONCURRENCY = {"mlp": (32,)}        # the batching-efficiency figure's concurrency
ZMQ_CONCURRENCIES = (1, 64)
OVERLOAD_WORKLOADS = ("mlp", "sleep")
OVERLOAD_FACTOR = 2.0
DEADLINE_MS = 100
OVERLOAD_CLIENT_TIMEOUT_S = 1.0
SERVER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WORK_DIR = os.path.join(ROOT, ".bench", "workloads")
FLOOR_BODY = b"x" * 100


@dataclass
class Plan:
    """What one harness run measures; the defaults are the issue's comparison."""

    servers: tuple[str, ...] = SERVERS
    workloads: tuple[str, ...] = WORKLOADS
    concurrencies: tuple[int, ...] = CONCURRENCIES
    duration_s: float = 5.0
    warmup_s: float = 1.0
    max_requests: int = 500_000
    overload: bool = True
    floor: bool = True
    zmq: bool = True
    driver: str = "auto"          # closed loop at concurrency > 1: "wrk", "http", or "auto"


# ---------------------------------------------------------------------------- running


def run(plan: Plan, out_dir: str, command: list[str] | None = None,
        say: Callable[[str], None] = print) -> dict:
    """Run the plan; write out_dir/run.json (and return it). Peers that cannot be installed
    are listed under "missing" with the reason; the rest still run."""
    from benchmarks.workloads import batched_ceiling, build

    os.makedirs(out_dir, exist_ok=True)
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _commit(), "machine": _machine(), "command": command,
        "servers": list(plan.servers), "settings": _settings_record(plan),
        "versions": {"python": platform.python_version()}, "notes": {}, "missing": {},
        "records": [], "targets": []}
    records = record["records"]
    peers = _ready_peers(plan.servers, record, say)
    cases = [CASES[name] for name in plan.workloads]
    workloads = {case.workload: build(case.workload, WORK_DIR) for case in cases}
    for case in cases:
        ceiling = first_ceiling = None
        measured: list[dict] = []
        ran: list[str] = []
        if case.workload != "echo":
            say(f"ceiling: {case.name} (before)")
            measured.append(batched_ceiling(workloads[case.workload],
                                            batch_sizes=(1, case.settings.batch_size)))
            ceiling = _ceiling_record(case, measured)
            first_ceiling = dict(ceiling)  # every server's overload gets the same rate
            records.append(ceiling)
        for peer in peers:
            say(f"{peer.name}: {case.name}")
            records.extend(_serve_and_measure(peer, case, workloads[case.workload], plan,
                                              first_ceiling, record, say))
            _save(record, out_dir)
            if ceiling is not None:
                say(f"ceiling: {case.name} (after {peer.name})")
                measured.append(batched_ceiling(workloads[case.workload],
                                                batch_sizes=(1, case.settings.batch_size)))
                ran.append(peer.name)
                ceiling.update(_ceiling_record(case, measured, ran))
                _save(record, out_dir)
    if plan.floor:
        records.extend(_floor(plan, say))
    record["targets"] = check_targets(records, plan)
    _save(record, out_dir)
    return record


def _ceiling_record(case: Case, measured: list[dict], servers: list[str] | None = None
                    ) -> dict:
    """The ceiling record of a case: the mean forward time of all its measurements, each of
    them, and under "by_server" each server's own ceiling: the mean of the two measurements
    around its run (measured[i] right before servers[i] ran, measured[i + 1] right after)."""
    record = {"scenario": "ceiling", "workload": case.name, "server": None,
              "batch_size": case.settings.batch_size, **_mean_ceiling(measured),
              "measurements": [m["forward_ms"] for m in measured]}
    if servers:
        record["by_server"] = {server: _mean_ceiling(measured[index:index + 2])
                               for index, server in enumerate(servers)}
    return record


def _mean_ceiling(measured: list[dict]) -> dict:
    """forward_ms (the mean over the measurements, per batch size) and ceiling_rps."""
    sizes = measured[0]["forward_ms"].keys()
    forward_ms = {size: sum(m["forward_ms"][size] for m in measured) / len(measured)
                  for size in sizes}
    return {"forward_ms": forward_ms,
            "ceiling_rps": {size: int(size) * 1000 / ms for size, ms in forward_ms.items()}}


def _ready_peers(names: tuple[str, ...], record: dict, say: Callable[[str], None]) -> list:
    peers = []
    for name in names:
        peer = get_peer(name)
        why = peer.missing()
        if why is None:
            try:
                say(f"installing {name} (cached after the first run)")
                peer.install()
            except Exception as exc:  # a peer that cannot install is reported, not fatal
                why = f"install failed: {exc}"
        if why is not None:
            say(f"{name} will not run: {why}")
            record["missing"][name] = why
            continue
        record["versions"][name] = peer.version()
        peers.append(peer)
    return peers


def _serve_and_measure(peer: Peer, case: Case, workload: Any, plan: Plan,
                       ceiling: dict | None, record: dict,
                       say: Callable[[str], None]) -> list[dict]:
    out: list[dict] = []
    base = {"workload": case.name, "server": peer.name}
    with peer.serve(workload, case.settings, SERVER_ENV) as started:
        record["notes"][peer.name] = started.notes
        out.append({**base, "scenario": "startup", "startup_s": started.startup_s})
        say(f"  startup {started.startup_s:.2f} s")
        levels = sorted(set(plan.concurrencies) | set(EXTRA_CONCURRENCY.get(case.name, ())))
        for concurrency in levels:
            result, batches = _measured(started, lambda c=concurrency: _closed_http(
                started.target, c, plan))
            scenario = "latency" if concurrency == 1 else "throughput"
            out.append({**base, "scenario": scenario, "transport": "http",
                        "concurrency": concurrency, "result": result.to_dict(),
                        "batch_sizes": batches})
            say(f"  http c{concurrency}: {_line(result)}")
        if plan.zmq and started.zmq_address:
            for concurrency in ZMQ_CONCURRENCIES:
                result, batches = _measured(started, lambda c=concurrency: run_zmq(
                    started.zmq_address, workload.name, workload.payload, concurrency=c,
                    duration_s=plan.duration_s, max_requests=plan.max_requests,
                    warmup_s=plan.warmup_s))
                scenario = "latency" if concurrency == 1 else "throughput"
                out.append({**base, "scenario": scenario, "transport": "zmq",
                            "concurrency": concurrency, "result": result.to_dict(),
                            "batch_sizes": batches})
                say(f"  zmq c{concurrency}: {_line(result)}")
        if plan.overload and ceiling and case.name in OVERLOAD_WORKLOADS:
            out.append({**base, **_overload(started, ceiling, case, plan)})
            say(f"  overload: {_overload_line(out[-1])}")
    return out


def _measured(started: Started, load: Callable[[], LoadResult]
              ) -> tuple[LoadResult, dict[str, int] | None]:
    """Run one load and the batch sizes the server formed during it (zerobatch only)."""
    before = started.batch_sizes()
    result = load()
    after = started.batch_sizes()
    if before is None or after is None:
        return result, None
    return result, {str(size): count - before.get(size, 0) for size, count in after.items()
                    if count > before.get(size, 0)}


def _closed_http(target: HttpTarget, concurrency: int, plan: Plan) -> LoadResult:
    use_wrk = plan.driver == "wrk" or (plan.driver == "auto" and concurrency > 1
                                       and wrk_available())
    if use_wrk:
        run_wrk(target, connections=concurrency, threads=min(2, concurrency),
                duration_s=max(1, round(plan.warmup_s)))  # warm-up, not measured
        return run_wrk(target, connections=concurrency, threads=min(2, concurrency),
                       duration_s=max(1, round(plan.duration_s)))
    return run_http(target, concurrency=concurrency, duration_s=plan.duration_s,
                    max_requests=plan.max_requests, warmup_s=plan.warmup_s)


def _overload(started: Started, ceiling: dict, case: Case, plan: Plan) -> dict:
    """Open-loop arrivals at OVERLOAD_FACTOR x the batched ceiling, 100 ms deadline."""
    rate = OVERLOAD_FACTOR * ceiling["ceiling_rps"][str(case.settings.batch_size)]
    target = started.target
    if started.zmq_address:  # zerobatch: the deadline travels with the request
        target = HttpTarget(target.host, target.port, target.path, target.body,
                            {**target.headers, "x-zerobatch-timeout-ms": str(DEADLINE_MS)})
    result = run_http(target, rate=rate, duration_s=plan.duration_s,
                      max_requests=plan.max_requests, warmup_s=plan.warmup_s,
                      timeout_s=OVERLOAD_CLIENT_TIMEOUT_S, deadline_ms=DEADLINE_MS)
    return {"scenario": "overload", "transport": "http", "rate": rate,
            "deadline_ms": DEADLINE_MS, "result": result.to_dict(), **overload_figures(result)}


REFUSALS = ("503", "429")


def overload_figures(result: LoadResult) -> dict:
    """Offered = requests that reached the server (the generator's own "backlog" never did);
    refused = answered 503/429; accepted = the rest (answered, failed late, or timed out); of
    the accepted, the share answered 2xx within the deadline; the p99 time to a refusal (ms)."""
    offered = result.sent - result.errors.get("backlog", 0)
    refused = sum(result.errors.get(key, 0) for key in REFUSALS)
    accepted = offered - refused
    within = result.within_deadline or 0
    refusal_latency = Histogram()
    for key in REFUSALS:
        if key in result.error_latency_by_key:
            refusal_latency.merge(result.error_latency_by_key[key])
    return {"offered": offered, "refused": refused,
            "accepted": accepted / offered if offered else 0.0,
            "within_deadline_of_accepted": within / accepted if accepted else 0.0,
            "refusal_p99_ms": refusal_latency.percentile(99) / 1000 if refused else None}


# ---------------------------------------------------------------------------- the floor


def _floor(plan: Plan, say: Callable[[str], None]) -> list[dict]:
    out = []
    for kind in ("relay", "proxy"):
        with _zmq_floor(kind) as address:
            for concurrency in ZMQ_CONCURRENCIES:
                result = run_zmq(address, "echo", FLOOR_BODY, concurrency=concurrency,
                                 duration_s=plan.duration_s, max_requests=plan.max_requests,
                                 warmup_s=plan.warmup_s)
                out.append({"scenario": "floor", "workload": "echo", "server": f"zmq-{kind}",
                            "transport": "zmq", "concurrency": concurrency,
                            "result": result.to_dict()})
                say(f"floor zmq-{kind} c{concurrency}: {_line(result)}")
    with _bare_falcon() as target:
        for concurrency in (1, 64):
            result = _closed_http(target, concurrency, plan)
            out.append({"scenario": "floor", "workload": "echo", "server": "bare-falcon",
                        "transport": "http", "concurrency": concurrency,
                        "result": result.to_dict()})
            say(f"floor bare-falcon c{concurrency}: {_line(result)}")
    return out


@contextmanager
def _zmq_floor(kind: str) -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="zbfloor") as tmp:
        front, back = f"ipc://{tmp}/front", f"ipc://{tmp}/back"
        with processes(["-m", "benchmarks.floor", kind, front, back],
                       ["-m", "benchmarks.floor", "zb-echo", back]):
            _wait_answering(front)
            yield front


def _wait_answering(address: str, timeout_s: float = 15.0) -> None:
    """Until the floor answers a request (its processes are up and connected)."""
    from zerobatch.api.client import Client
    from zerobatch.errors import ServingError

    deadline = time.monotonic() + timeout_s
    with Client(address) as client:
        while True:
            try:
                client.predict("echo", FLOOR_BODY, timeout_ms=200)
                return
            except ServingError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the floor at {address} did not answer within "
                                       f"{timeout_s} s") from None


@contextmanager
def _bare_falcon() -> Iterator[HttpTarget]:
    """One process, as zerobatch runs one front end in the comparison."""
    with bare_falcon(workers=1) as port:
        yield HttpTarget("127.0.0.1", port, "/predictions/echo", FLOOR_BODY,
                         {"Content-Type": "application/octet-stream"})


# ---------------------------------------------------------------------------- targets


def check_targets(records: list[dict], plan: Plan) -> list[dict]:
    """The issue's figures, each from this run's records: reached, missed, or n/a."""
    def find(scenario: str, workload: str, server: str | None = "zerobatch",
             concurrency: int | None = None, transport: str = "http") -> dict | None:
        for rec in records:
            if (rec["scenario"] == scenario and rec["workload"] == workload
                    and rec.get("server") == server
                    and (concurrency is None or rec.get("concurrency") == concurrency)
                    and rec.get("transport", transport) == transport):
                return rec
        return None

    def rps(rec: dict | None) -> float | None:
        return rec["result"]["rps"] if rec else None

    targets = []

    def target(figure: str, goal: str, measured: float | None, reached: bool | None,
               shown: str) -> None:
        targets.append({"figure": figure, "target": goal,
                        "measured": shown if measured is not None else "n/a",
                        "reached": reached if measured is not None else None})

    ours_echo = rps(find("throughput", "echo", concurrency=64))
    for peer, factor in (("torchserve", 5.0), ("litserve", 7.0)):
        theirs = rps(find("throughput", "echo", peer, 64))
        ratio = ours_echo / theirs if ours_echo and theirs else None
        target(f"echo, HTTP, concurrency 64: zerobatch vs {peer} req/s", f">= {factor:g}x",
               ratio, ratio is not None and ratio >= factor,
               f"{ratio:.2f}x ({ours_echo:,.0f} vs {theirs:,.0f})" if ratio else "")
    ceiling = find("ceiling", "mlp", None)
    if ceiling is not None:  # zerobatch's own ceiling, from around its run, where measured
        ceiling = (ceiling.get("by_server") or {}).get("zerobatch") or ceiling
    mlp32 = rps(find("throughput", "mlp", concurrency=32))
    if ceiling and mlp32:
        ceiling_rps = ceiling["ceiling_rps"][str(CASES["mlp"].settings.batch_size)]
        share = mlp32 / ceiling_rps
        target("mlp, batch 8, 5 ms, concurrency 32: share of the batched ceiling", ">= 95%",
               share, share >= 0.95, f"{share:.1%} ({mlp32:,.0f} of {ceiling_rps:,.0f} req/s)")
    else:
        target("mlp, concurrency 32: share of the batched ceiling", ">= 95%", None, None, "")
    mlp1 = find("latency", "mlp", concurrency=1)
    if ceiling and mlp1:
        forward = ceiling["forward_ms"]["1"]
        p50 = mlp1["result"]["latency"]["p50"]
        target("mlp, concurrency 1: p50 minus the batch-1 forward", "<= 1 ms", p50,
               p50 - forward <= 1.0, f"{p50 - forward:.2f} ms (p50 {p50:.2f}, forward "
                                     f"{forward:.2f})")
    else:
        target("mlp, concurrency 1: p50 minus the batch-1 forward", "<= 1 ms", None, None, "")
    for workload in OVERLOAD_WORKLOADS:
        over = find("overload", workload)
        if over:
            share = over["within_deadline_of_accepted"]
            target(f"overload ({workload}): accepted answered within 100 ms", ">= 99%", share,
                   share >= 0.99, f"{share:.2%} (accepted {over['accepted']:.1%})")
            refusal = over["refusal_p99_ms"]
            target(f"overload ({workload}): refusal p99", "< 5 ms", refusal,
                   refusal is not None and refusal < 5.0,
                   f"{refusal:.2f} ms" if refusal is not None else "")
    for workload, limit in (("echo", 1.0), ("mlp", 2.0)):
        start = find("startup", workload)
        seconds = start["startup_s"] if start else None
        target(f"startup to the first prediction ({workload})", f"< {limit:g} s", seconds,
               seconds is not None and seconds < limit,
               f"{seconds:.2f} s" if seconds is not None else "")
    return targets


# ---------------------------------------------------------------------------- helpers


def _line(result: LoadResult) -> str:
    latency = result.latency.summary_ms()
    errors = f", errors {result.errors}" if result.errors else ""
    return (f"{result.rps():,.0f} req/s, p50 {latency['p50']:.2f} ms, "
            f"p99 {latency['p99']:.2f} ms{errors}")


def _overload_line(rec: dict) -> str:
    refusal = rec["refusal_p99_ms"]
    return (f"rate {rec['rate']:,.0f}/s: accepted {rec['accepted']:.1%}, within deadline "
            f"{rec['within_deadline_of_accepted']:.2%}, refusal p99 "
            + (f"{refusal:.2f} ms" if refusal is not None else "n/a"))


def _settings_record(plan: Plan) -> dict:
    settings = asdict(plan)
    settings["cases"] = {name: asdict(CASES[name].settings) for name in plan.workloads}
    settings["server_env"] = SERVER_ENV
    if plan.overload:
        settings["overload"] = {"factor": OVERLOAD_FACTOR, "deadline_ms": DEADLINE_MS,
                                "client_timeout_s": OVERLOAD_CLIENT_TIMEOUT_S}
    return settings


def _machine() -> dict:
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu_model": cpu_model}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=5).stdout.strip() or None
    except OSError:
        return None


def _save(record: dict, out_dir: str) -> None:
    path = os.path.join(out_dir, "run.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle, indent=1)
    os.replace(path + ".tmp", path)


def default_out_dir() -> str:
    return os.path.join(ROOT, "results", time.strftime("%Y%m%d-%H%M%S"))
