"""What every benchmark shares: starting and stopping processes, a zerobatch server under
test, latency summaries, and the JSON record of a run (commit, versions, config, figures)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator

from zerobatch.config import KEY_FILE, control_address

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_MODELS = os.path.join(ROOT, "benchmarks", "models")
#: what every benchmarked zerobatch server is started with: the inference path alone (no
#: management or metrics API, whose ports two servers would share; no token check, which
#: TorchServe's benchmarks leave off too)
BENCHMARK_FLAGS = ("--management-address", "none", "--metrics-address", "none",
                   "--disable-token-auth")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def medians(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per system, the median of each figure over its rounds ({system: [figures, ...]})."""
    import statistics

    return {kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
            for kind, rows in runs.items()}


def latency_summary_ms(latencies_s: list[float]) -> dict[str, float]:
    values = sorted(latencies_s)
    return {name: percentile(values, q) * 1000 for name, q in
            (("p50_ms", 0.50), ("p90_ms", 0.90), ("p99_ms", 0.99), ("p999_ms", 0.999))}


@contextmanager
def processes(*argvs: list[str]) -> Iterator[list[subprocess.Popen]]:
    """Start processes (python -m ... argvs) and always stop them."""
    started = [subprocess.Popen([sys.executable, *argv], cwd=ROOT) for argv in argvs]
    try:
        yield started
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def zerobatch_server(models: dict[str, str], *flags: str,
                     token_auth: bool = False) -> Iterator[dict]:
    """A real zerobatch server started with the CLI; yields its addresses; always stopped.
    With token_auth, token authorization stays on (zerobatch's default) and the inference
    key is yielded as "inference_key"."""
    run_dir = tempfile.mkdtemp(prefix="zbb")
    client_address = f"ipc://{run_dir}/client.sock"
    server_flags = [f for f in BENCHMARK_FLAGS if not (token_auth and f == "--disable-token-auth")]
    argv = [sys.executable, "-m", "zerobatch.api.cli", "start", "--run-dir", run_dir,
            "--client-address", client_address, "--log-level", "WARNING",
            "--startup-timeout", "60", *server_flags,
            "--models", *[f"{n}={p}" for n, p in models.items()], *flags]
    try:
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=90)
        if result.returncode != 0:
            raise RuntimeError(f"zerobatch start failed:\n{result.stdout}{result.stderr}")
        server = {"run_dir": run_dir, "client_address": client_address,
                  "control_address": control_address(run_dir)}
        if token_auth:
            with open(os.path.join(run_dir, KEY_FILE), encoding="utf-8") as handle:
                server["inference_key"] = json.load(handle)["inference"]["key"]
        yield server
    finally:
        subprocess.run([sys.executable, "-m", "zerobatch.api.cli", "stop", "--run-dir", run_dir],
                       cwd=ROOT, capture_output=True, timeout=60)
        shutil.rmtree(run_dir, ignore_errors=True)


def command_lines(marker: str) -> dict[int, list[bytes]]:
    """pid -> argv of the processes whose command line holds marker (a server's run
    directory: every process zerobatch starts names it)."""
    found = {}
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if any(needle in arg for arg in argv):
            found[int(entry)] = argv
    return found


def bench_parser(module: str) -> argparse.ArgumentParser:
    """The command line every benchmark starts from: its prog name and `--json PATH`, where
    `finish_run` writes the run's record."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("--json", help="also write the run's record (config, figures) here")
    return parser


def at_least(minimum: int):
    """An argparse type: an int no smaller than minimum, else a usage error naming it."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def run_record(name: str, config: dict, figures: dict) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except OSError:
        commit = None
    versions = {"python": platform.python_version()}
    for module in ("zmq", "msgpack", "falcon", "uvicorn"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            pass
    return {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "versions": versions, "config": config, "figures": figures}


def write_json(path: str | None, record: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(record, handle, indent=2)
    print(f"wrote {path}")


@contextmanager
def bare_falcon(workers: int) -> Iterator[int]:
    """The HTTP floor (benchmarks/bare_falcon.py) on uvicorn with uvloop and httptools, as
    zerobatch's front end runs; yields its port once it answers; always stopped."""
    port = free_port()
    argv = ["-m", "uvicorn", "benchmarks.bare_falcon:app", "--host", "127.0.0.1", "--port",
            str(port), "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning"]
    with processes(argv):
        wait_http(f"http://127.0.0.1:{port}/ping")
        yield port
