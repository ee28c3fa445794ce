"""A soak run: mixed traffic for a long while, watching every server process's memory.

    python -m benchmarks.soak [--duration 600] [--warmup S] [--sample-every 5]
                              [--http-lanes 2] [--zmq-lanes 2] [--workers 1]
                              [--json results/soak.json]

Starts a real server (broker, one worker slot per model by default, two HTTP front ends)
serving four models: `echo` (benchmarks/models), and `failing`, `streaming` and `slow` from
tests/models (used as model directories, not imported). Lanes (threads) send a weighted mix
of operations in closed loop until --duration passes, over HTTP (one keep-alive connection
per lane) and over ZeroMQ (one sync Client per lane, replaced every CLIENT_CHURN calls):
good requests (small JSON, a 64 KiB body, streamed replies), handler errors, unknown
models, requests whose 1 ms deadline cannot be met (expired or refused), bursts that
overflow a queue, bad timeout headers, garbage instead of HTTP, connections dropped half way
through a request, and ZeroMQ clients that connect for one request.

Every --sample-every seconds it reads the VmRSS of the broker, each worker and each front
end from /proc. The report gives, per process, its RSS at the end of the warm-up (default:
10% of the run, at most 60 s) and at the end, the growth in MB and percent, the slope of a
least-squares line through the samples after the warm-up (MB per hour), and flags a growth
over both SUSPECT_GROWTH_MB and SUSPECT_GROWTH_PCT; then the requests sent and served, and
every outcome per operation, with the ones the operation should never see counted as
unexpected. Processes that exited or started during the run (a crash and its restart) are
listed. The run's record goes to --json (default results/soak.json).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from benchmarks.common import (
    BENCH_MODELS,
    ROOT,
    bench_parser,
    command_lines,
    free_port,
    run_record,
    write_json,
    zerobatch_server,
)

TEST_MODELS = os.path.join(ROOT, "tests", "models")
MODELS = {"echo": os.path.join(BENCH_MODELS, "echo"),
          "failing": os.path.join(TEST_MODELS, "failing"),
          "streaming": os.path.join(TEST_MODELS, "streaming"),
          "slow": os.path.join(TEST_MODELS, "slow")}
SERVER_FLAGS = ("--frontends", "2", "--batch-size", "4", "--max-batch-delay", "5",
                "--max-queue", "16")

DEFAULT_DURATION_S = 600.0
#: the warm-up when none is given: this share of the run, at most MAX_WARMUP_S
WARMUP_SHARE = 0.1
MAX_WARMUP_S = 60.0
DEFAULT_SAMPLE_EVERY_S = 5.0
#: a process is flagged when it grew by more than both of these after the warm-up
SUSPECT_GROWTH_MB = 5.0
SUSPECT_GROWTH_PCT = 10.0

#: the deadline of ordinary requests; the socket timeout of HTTP calls adds the grace
TIMEOUT_MS = 5000
HTTP_TIMEOUT_S = TIMEOUT_MS / 1000 + 5.0
#: the deadline of the requests meant to miss it
TINY_TIMEOUT_MS = 1
#: a ZeroMQ lane closes its client and opens a new one after this many calls
CLIENT_CHURN = 200
#: requests in one ZeroMQ burst: more than the queue (--max-queue 16) takes at once
BURST = 24
LARGE_BODY = b"x" * 65536

#: outcome labels: a success, and a request deliberately left unfinished
OK = "ok"
SENT = "sent"


# ---------------------------------------------------------------------- operations

@dataclass(frozen=True)
class Operation:
    """One kind of call: which client makes it, how often, and the outcomes it may see."""

    name: str
    via: str                    # "http" or "zmq"
    weight: int
    expected: frozenset[str]    # outcome labels that are no surprise
    run: Callable[[Any], list[str]]  # lane state -> the outcome of each request it made


class HttpLane:
    """One keep-alive connection, reopened after anything goes wrong on it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, path: str, body: bytes, headers: dict[str, str]) -> str:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                   timeout=HTTP_TIMEOUT_S)
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            response = self.conn.getresponse()
            response.read()
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return type(exc).__name__
        return OK if 200 <= response.status < 300 else str(response.status)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _http(model: str, body: bytes, content_type: str = "application/json",
          timeout_header: str = str(TIMEOUT_MS)) -> Callable[[HttpLane], list[str]]:
    headers = {"Content-Type": content_type, "x-zerobatch-timeout-ms": timeout_header}
    return lambda lane: [lane.request(f"/predictions/{model}", body, headers)]


def _raw_http(payload: bytes, read: bool) -> Callable[[HttpLane], list[str]]:
    """A fresh connection that sends payload, then reads the answer (or just hangs up)."""
    def run(lane: HttpLane) -> list[str]:
        try:
            with socket.create_connection(("127.0.0.1", lane.port),
                                          timeout=HTTP_TIMEOUT_S) as sock:
                sock.sendall(payload)
                if not read:
                    return [SENT]
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
        except OSError as exc:
            return [type(exc).__name__]
        parts = answer.split(b" ", 2)
        return [parts[1].decode(errors="replace") if len(parts) > 1 else "closed"]
    return run


class ZmqLane:
    """One sync Client, replaced every CLIENT_CHURN calls (the broker meets new peers)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.client = None
        self.calls = 0

    def get(self):
        from zerobatch.api.client import Client

        if self.client is None or self.calls >= CLIENT_CHURN:
            self.close()
            self.client = Client(self.address)
            self.calls = 0
        self.calls += 1
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _outcome(call: Callable[[], Any]) -> str:
    from zerobatch.errors import ServingError

    try:
        call()
    except ServingError as exc:
        return type(exc).__name__
    return OK


def _zmq(model: str, body: Any, timeout_ms: int = TIMEOUT_MS,
         stream: bool = False) -> Callable[[ZmqLane], list[str]]:
    def run(lane: ZmqLane) -> list[str]:
        client = lane.get()
        if stream:
            return [_outcome(lambda: list(client.stream(model, body, timeout_ms=timeout_ms)))]
        return [_outcome(lambda: client.predict(model, body, timeout_ms=timeout_ms))]
    return run


def _zmq_burst(lane: ZmqLane) -> list[str]:
    """BURST requests in flight at once on a slow model: the queue overflows."""
    from zerobatch.errors import ServingError

    client = lane.get()
    pending = []
    for _ in range(BURST):
        try:
            pending.append(client.submit("slow", {"sleep_ms": 2}, timeout_ms=500))
        except ServingError as exc:  # refused here, before it was sent (a refusal hint)
            pending.append(exc)
    return [type(handle).__name__ if isinstance(handle, ServingError)
            else _outcome(handle.result) for handle in pending]


def _zmq_fresh_client(lane: ZmqLane) -> list[str]:
    from zerobatch.api.client import Client

    with Client(lane.address) as client:
        return [_outcome(lambda: client.predict("echo", {"fresh": 1}, timeout_ms=TIMEOUT_MS))]


#: a request meant to miss its deadline: answered in time after all, expired, refused as
#: late, or refused with the queue full (the bursts fill the same model's queue)
_LATE = frozenset({OK, "503", "504"})
_LATE_ZMQ = frozenset({OK, "DeadlineExceeded", "DeadlineUnreachable", "QueueFull"})

OPERATIONS: tuple[Operation, ...] = (
    Operation("echo_json", "http", 8, frozenset({OK}), _http("echo", b'{"n": [1, 2, 3]}')),
    Operation("echo_64k", "http", 1, frozenset({OK}),
              _http("echo", LARGE_BODY, "application/octet-stream")),
    Operation("stream", "http", 1, frozenset({OK}),
              _http("streaming", b"s", "text/plain")),
    Operation("handler_error", "http", 1, frozenset({"503"}),  # TorchServe's status
              _http("failing", b"please fail", "text/plain")),
    Operation("not_found", "http", 1, frozenset({"404"}), _http("no_such_model", b"{}")),
    Operation("tiny_deadline", "http", 1, _LATE,
              _http("slow", b'{"sleep_ms": 20}', timeout_header=str(TINY_TIMEOUT_MS))),
    Operation("bad_timeout_header", "http", 1, frozenset({"400"}),
              _http("echo", b"{}", timeout_header="soon")),
    Operation("garbage", "http", 1, frozenset({"400"}),
              _raw_http(b"\x16\x03\x01 this is not HTTP\r\n\r\n", read=True)),
    Operation("hang_up_mid_request", "http", 1, frozenset({SENT}),
              _raw_http(b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                        b"\r\n\r\nonly part of it", read=False)),
    Operation("echo", "zmq", 8, frozenset({OK}), _zmq("echo", {"n": [1, 2, 3]})),
    Operation("echo_64k", "zmq", 1, frozenset({OK}), _zmq("echo", LARGE_BODY)),
    Operation("stream", "zmq", 1, frozenset({OK}), _zmq("streaming", "s", stream=True)),
    Operation("handler_error", "zmq", 1, frozenset({"HandlerError"}),
              _zmq("failing", "please fail")),
    Operation("not_found", "zmq", 1, frozenset({"ModelNotFound"}), _zmq("no_such_model", {})),
    Operation("tiny_deadline", "zmq", 1, _LATE_ZMQ,
              _zmq("slow", {"sleep_ms": 20}, timeout_ms=TINY_TIMEOUT_MS)),
    Operation("burst", "zmq", 1, _LATE_ZMQ, _zmq_burst),
    Operation("fresh_client", "zmq", 1, frozenset({OK}), _zmq_fresh_client),
)


class Tally:
    """Outcome counts per operation, shared by the lanes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, Counter] = {}

    def add(self, operation: Operation, outcomes: list[str]) -> None:
        key = f"{operation.via} {operation.name}"
        with self.lock:
            self.counts.setdefault(key, Counter()).update(outcomes)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {key: dict(counter) for key, counter in sorted(self.counts.items())}


def run_lane(lane: Any, operations: list[Operation], seed: int, end_s: float,
             stop: threading.Event, tally: Tally) -> None:
    """Closed loop: a weighted random operation after another, until end_s or stop."""
    chooser = random.Random(seed)
    weights = [op.weight for op in operations]
    try:
        while not stop.is_set() and time.monotonic() < end_s:
            operation = chooser.choices(operations, weights)[0]
            try:
                outcomes = operation.run(lane)
            except Exception as exc:  # anything no operation expects: counted, the lane goes on
                outcomes = [type(exc).__name__]
            tally.add(operation, outcomes)
    finally:
        lane.close()


# ---------------------------------------------------------------------- memory

def server_processes(run_dir: str) -> dict[int, str]:
    """pid -> label ("broker", "frontend", "worker echo@1.0#0.1") of the server processes
    whose command line names run_dir (zerobatch.launch starts each as a module)."""
    found = {}
    for pid, argv in command_lines(run_dir).items():
        # `python -P -m MODULE ...`, or on Python 3.10 `python -c BOOTSTRAP MODULE ...`
        module = next((arg.decode() for arg in argv[1:5] if arg.startswith(b"zerobatch.")), "")
        if module and module != "zerobatch.api.cli":
            found[pid] = process_label(module, argv)
    return found


def process_label(module: str, argv: list[bytes]) -> str:
    role = module.rsplit(".", 1)[-1]
    if role == "worker" and b"--config" in argv:
        try:
            config = json.loads(argv[argv.index(b"--config") + 1])
            return f"worker {config['worker_id']}"
        except (ValueError, IndexError, KeyError, TypeError):
            pass
    return role


def parse_rss_kb(status_text: str) -> int | None:
    """The VmRSS of a /proc/PID/status text, in kB (None for a kernel thread or a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return parse_rss_kb(handle.read())
    except OSError:
        return None


@dataclass
class Sample:
    t_s: float                  # since the load started
    rss_kb: dict[int, int]      # pid -> VmRSS


def take_sample(t_s: float, pids: dict[int, str]) -> Sample:
    values = {pid: rss_kb(pid) for pid in pids}
    return Sample(t_s, {pid: kb for pid, kb in values.items() if kb is not None})


def slope_mb_per_h(points: list[tuple[float, float]]) -> float | None:
    """The slope of the least-squares line through (seconds, MB) points, in MB per hour."""
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


def growth(samples: list[Sample], labels: dict[int, str], warmup_s: float) -> list[dict]:
    """Per process: its RSS at the first sample at or after warmup_s and at its last sample,
    the growth (MB, %), the slope after the warm-up, whether it looks like a leak, and
    whether it ran through the whole run (in the first and the last sample). A process
    first seen after the warm-up is measured from its first sample."""
    if not samples:
        return []
    first, last = samples[0].rss_kb, samples[-1].rss_kb
    rows = []
    for pid, label in labels.items():
        seen = [(s.t_s, s.rss_kb[pid] / 1024) for s in samples if pid in s.rss_kb]
        if not seen:
            continue
        after = [(t, mb) for t, mb in seen if t >= warmup_s] or seen[-1:]
        (warm_t, warm_mb), (end_t, end_mb) = after[0], after[-1]
        grew_mb = end_mb - warm_mb
        grew_pct = 100 * grew_mb / warm_mb if warm_mb else 0.0
        rows.append({
            "pid": pid, "process": label,
            "warm_t_s": round(warm_t, 1), "end_t_s": round(end_t, 1),
            "rss_warm_mb": round(warm_mb, 2), "rss_end_mb": round(end_mb, 2),
            "rss_max_mb": round(max(mb for _, mb in seen), 2),
            "growth_mb": round(grew_mb, 2), "growth_pct": round(grew_pct, 1),
            "slope_mb_per_h": _round(slope_mb_per_h(after), 2),
            "suspect": grew_mb > SUSPECT_GROWTH_MB and grew_pct > SUSPECT_GROWTH_PCT,
            "first_seen_s": round(seen[0][0], 1), "last_seen_s": round(seen[-1][0], 1),
            "whole_run": pid in first and pid in last,
        })
    return sorted(rows, key=lambda row: (_ROLE_ORDER.get(row["process"].split()[0], 9),
                                         row["process"], row["pid"]))


_ROLE_ORDER = {"keeper": 0, "broker": 1, "worker": 2, "frontend": 3}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class Sampler(threading.Thread):
    """Samples the server's processes every interval_s until stopped; new pids are picked
    up at each sample (a restarted worker or front end)."""

    def __init__(self, run_dir: str, started_s: float, interval_s: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.run_dir = run_dir
        self.started_s = started_s
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.labels: dict[int, str] = {}
        self.samples: list[Sample] = []
        self.lock = threading.Lock()

    def sample(self) -> Sample:
        pids = server_processes(self.run_dir)
        sample = take_sample(time.monotonic() - self.started_s, pids)
        with self.lock:
            self.labels.update(pids)
            self.samples.append(sample)
        return sample

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self.sample()


# ---------------------------------------------------------------------- report

def summarize_outcomes(counts: dict[str, dict[str, int]]) -> dict:
    """Requests sent and served per client, and the unexpected outcomes, from the tally."""
    by_key = {f"{op.via} {op.name}": op for op in OPERATIONS}
    sent: Counter = Counter()
    served: Counter = Counter()
    unexpected: dict[str, dict[str, int]] = {}
    for key, outcomes in counts.items():
        via = key.split()[0]
        sent[via] += sum(outcomes.values())
        served[via] += outcomes.get(OK, 0)
        expected = by_key[key].expected if key in by_key else frozenset()
        odd = {label: n for label, n in outcomes.items() if label not in expected}
        if odd:
            unexpected[key] = odd
    return {"sent": dict(sent), "served": dict(served),
            "sent_total": sum(sent.values()), "served_total": sum(served.values()),
            "unexpected": unexpected, "outcomes": counts}


def format_report(rows: list[dict], outcomes: dict, duration_s: float,
                  warmup_s: float) -> str:
    lines = [f"soak: {duration_s:g} s of load, warm-up {warmup_s:g} s; RSS (VmRSS) per "
             "process at the end of the warm-up and at the end",
             f"  {'process':24s} {'pid':>7s} {'warm MB':>8s} {'end MB':>8s} "
             f"{'growth MB':>10s} {'growth %':>9s} {'MB/h':>8s}"]
    for row in rows:
        slope = row["slope_mb_per_h"]
        flag = "  <- grew" if row["suspect"] else ""
        lines.append(f"  {row['process'][:24]:24s} {row['pid']:7d} {row['rss_warm_mb']:8.1f} "
                     f"{row['rss_end_mb']:8.1f} {row['growth_mb']:+10.2f} "
                     f"{row['growth_pct']:+8.1f}% "
                     f"{'n/a' if slope is None else format(slope, '+.1f'):>8s}{flag}")
    for row in (row for row in rows if not row["whole_run"]):
        lines.append(f"  note: {row['process']} (pid {row['pid']}) was seen only from "
                     f"{row['first_seen_s']:g} s to {row['last_seen_s']:g} s "
                     "(it exited or was restarted)")
    sent, served = outcomes["sent"], outcomes["served"]
    lines.append(f"requests: {outcomes['sent_total']:,} sent, {outcomes['served_total']:,} "
                 f"served ({outcomes['served_total'] / max(duration_s, 1e-9):,.0f}/s); "
                 + ", ".join(f"{via} {sent[via]:,} sent, {served.get(via, 0):,} served"
                             for via in sorted(sent)))
    for key, counts in outcomes["outcomes"].items():
        detail = ", ".join(f"{label} {n:,}" for label, n in
                           sorted(counts.items(), key=lambda item: -item[1]))
        lines.append(f"  {key:26s} {detail}")
    if outcomes["unexpected"]:
        lines.append("UNEXPECTED outcomes: " + "; ".join(
            f"{key}: " + ", ".join(f"{label} {n}" for label, n in odd.items())
            for key, odd in outcomes["unexpected"].items()))
    else:
        lines.append("no unexpected outcomes")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("benchmarks.soak")
    parser.set_defaults(json=os.path.join(ROOT, "results", "soak.json"))
    parser.add_argument("--duration", type=_positive_float, default=DEFAULT_DURATION_S,
                        help=f"seconds of load (default: {DEFAULT_DURATION_S:g})")
    parser.add_argument("--warmup", type=_positive_float, default=None,
                        help="seconds before the RSS baseline (default: 10%% of the run, "
                             f"at most {MAX_WARMUP_S:g})")
    parser.add_argument("--sample-every", type=_positive_float, default=None,
                        help=f"seconds between RSS samples (default: {DEFAULT_SAMPLE_EVERY_S:g}"
                             ", or a tenth of a shorter warm-up)")
    parser.add_argument("--http-lanes", type=int, default=2, help="HTTP threads (default: 2)")
    parser.add_argument("--zmq-lanes", type=int, default=2, help="ZeroMQ threads (default: 2)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes per model (default: 1)")
    parser.add_argument("--seed", type=int, default=1, help="of the operation mix")
    return parser


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def plan(args: argparse.Namespace) -> tuple[float, float]:
    """(warm-up, sample interval) in seconds for the parsed arguments."""
    warmup_s = args.warmup
    if warmup_s is None:
        warmup_s = min(MAX_WARMUP_S, WARMUP_SHARE * args.duration)
    if warmup_s >= args.duration:
        raise ValueError(f"the warm-up ({warmup_s:g} s) must be shorter than the run "
                         f"({args.duration:g} s)")
    interval_s = args.sample_every
    if interval_s is None:
        interval_s = min(DEFAULT_SAMPLE_EVERY_S, max(0.5, warmup_s / 2))
    return warmup_s, interval_s


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        warmup_s, interval_s = plan(args)
    except ValueError as exc:
        parser.error(str(exc))
    port = free_port()
    flags = ["--http-port", str(port), "--workers", str(args.workers), *SERVER_FLAGS]
    tally = Tally()
    stop = threading.Event()
    print(f"soak: {args.duration:g} s, warm-up {warmup_s:g} s, RSS every {interval_s:g} s, "
          f"{args.http_lanes} HTTP + {args.zmq_lanes} ZeroMQ lanes, models "
          f"{', '.join(MODELS)}", flush=True)
    with zerobatch_server(MODELS, *flags) as server:
        started_s = time.monotonic()
        sampler = Sampler(server["run_dir"], started_s, interval_s)
        sampler.sample()
        sampler.start()
        end_s = started_s + args.duration
        threads = []
        http_ops = [op for op in OPERATIONS if op.via == "http"]
        zmq_ops = [op for op in OPERATIONS if op.via == "zmq"]
        for index in range(args.http_lanes):
            threads.append(threading.Thread(target=run_lane, args=(
                HttpLane(port), http_ops, args.seed + index, end_s, stop, tally), daemon=True))
        for index in range(args.zmq_lanes):
            threads.append(threading.Thread(target=run_lane, args=(
                ZmqLane(server["client_address"]), zmq_ops, args.seed + 1000 + index, end_s,
                stop, tally), daemon=True))
        for thread in threads:
            thread.start()
        progress_every_s = max(interval_s, min(60.0, args.duration / 5))
        next_progress_s = started_s + progress_every_s
        try:
            while time.monotonic() < end_s:
                time.sleep(min(0.2, max(0.0, end_s - time.monotonic())))
                if time.monotonic() >= next_progress_s:
                    next_progress_s += progress_every_s
                    _progress(sampler, tally, time.monotonic() - started_s)
        finally:
            stop.set()
            for thread in threads:  # each call is bounded by HTTP_TIMEOUT_S
                thread.join(HTTP_TIMEOUT_S * 2)
            sampler.stop_event.set()
            sampler.join(5)
        sampler.sample()  # the end: the load just stopped, the server still runs
        hung = [thread.name for thread in threads if thread.is_alive()]
    rows = growth(sampler.samples, sampler.labels, warmup_s)
    outcomes = summarize_outcomes(tally.snapshot())
    print(format_report(rows, outcomes, args.duration, warmup_s))
    if hung:
        print(f"WARNING: {len(hung)} lane(s) still in a call at the end: {hung}")
    figures = {"processes": rows, "requests": outcomes, "hung_lanes": len(hung),
               "samples": [{"t_s": round(s.t_s, 2), "rss_kb": {str(pid): kb for pid, kb in
                                                               s.rss_kb.items()}}
                           for s in sampler.samples]}
    config = {"duration_s": args.duration, "warmup_s": warmup_s,
              "sample_every_s": interval_s, "http_lanes": args.http_lanes,
              "zmq_lanes": args.zmq_lanes, "workers_per_model": args.workers,
              "seed": args.seed, "models": sorted(MODELS), "server_flags": list(SERVER_FLAGS),
              "operations": {f"{op.via} {op.name}": op.weight for op in OPERATIONS}}
    write_json(args.json, run_record("soak", config, figures))
    return 1 if hung else 0


def _progress(sampler: Sampler, tally: Tally, elapsed_s: float) -> None:
    with sampler.lock:
        last = sampler.samples[-1] if sampler.samples else None
        labels = dict(sampler.labels)
    sent = sum(sum(counts.values()) for counts in tally.snapshot().values())
    rss = ""
    if last is not None:
        total_mb = sum(last.rss_kb.values()) / 1024
        rss = f", server RSS {total_mb:.0f} MB over {len(last.rss_kb)} processes"
        broker = [kb for pid, kb in last.rss_kb.items() if labels.get(pid) == "broker"]
        if broker:
            rss += f" (broker {broker[0] / 1024:.1f} MB)"
    print(f"  {elapsed_s:6.0f} s: {sent:,} requests{rss}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
