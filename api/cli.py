"""The `zerobatch` command line: `start`, `stop`, `archive` (api/archiver.py) and `--version`.

`zerobatch start` checks the flags and the model directories, then runs the broker process
(`python -P -m zerobatch.broker`), which supervises the workers and the HTTP front ends. Without
`--foreground` the broker runs in the background (its log goes to RUN_DIR/zerobatch.log) and
`start` returns once every model has a ready worker and the HTTP front end answers, or fails
with the broker's own error. `zerobatch stop` sends SIGTERM to the broker named by the pid
file in the run directory and waits until it and its children are gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request

from zerobatch import __version__, model_files
from zerobatch import config as defaults
from zerobatch.api import archiver
from zerobatch.config import ModelConfig, ServerConfig
from zerobatch.errors import ConfigError, ServingError
from zerobatch.launch import module_argv

PID_FILE = "broker.pid"
LOG_FILE = "zerobatch.log"


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


# ---------------------------------------------------------------------- parsing

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zerobatch",
                                     description="Serve PyTorch models with dynamic batching.")
    parser.add_argument("--version", action="version", version=f"zerobatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start the server")
    start.add_argument("--model-store", default=".",
                       help="directory that model paths are relative to (default: .)")
    start.add_argument("--models", nargs="+", default=[], metavar="NAME=PATH",
                       help="models to serve: NAME=PATH, or PATH (name from its manifest); "
                            "PATH is a .mar, a .tar.gz or a directory with "
                            "MAR-INF/MANIFEST.json")
    start.add_argument("--foreground", action="store_true",
                       help="run in this terminal; Ctrl-C stops")
    start.add_argument("--host", default=defaults.DEFAULT_HOST,
                       help="HTTP bind address (default: 127.0.0.1)")
    start.add_argument("--http-port", type=int, default=defaults.DEFAULT_HTTP_PORT,
                       help="HTTP inference port (default: 8080)")
    start.add_argument("--client-address",
                       default=f"tcp://{defaults.DEFAULT_HOST}:{defaults.DEFAULT_CLIENT_PORT}",
                       help="ZeroMQ endpoint for clients (default: tcp://127.0.0.1:9500)")
    start.add_argument("--worker-address", default="",
                       help="extra ZeroMQ endpoint for workers on other hosts (default: none)")
    start.add_argument("--frontends", type=int, default=defaults.DEFAULT_FRONTENDS,
                       help="HTTP front-end processes (default: 1; 0 disables HTTP)")
    start.add_argument("--workers", type=int, default=defaults.DEFAULT_WORKERS,
                       help="worker processes per model (default: 1)")
    start.add_argument("--batch-size", type=int, default=defaults.DEFAULT_BATCH_SIZE)
    start.add_argument("--max-batch-delay", type=int, default=defaults.DEFAULT_MAX_BATCH_DELAY_MS,
                       metavar="MS", help="longest a partial batch waits (default: 100 ms)")
    start.add_argument("--batch-policy", choices=defaults.BATCH_POLICIES,
                       default=defaults.DEFAULT_BATCH_POLICY,
                       help="adaptive: a free worker takes what waits; "
                            "full_delay: always wait max-batch-delay (TorchServe)")
    start.add_argument("--admission", choices=defaults.ADMISSION_POLICIES,
                       default=defaults.DEFAULT_ADMISSION,
                       help="deadline: refuse (503) a request the queue would keep past its "
                            "deadline; queue: refuse only when the queue is full (TorchServe)")
    start.add_argument("--max-queue", type=int, default=defaults.DEFAULT_MAX_QUEUE,
                       help="requests waiting per model before 503 (default: 100)")
    start.add_argument("--response-timeout", type=int,
                       default=defaults.DEFAULT_RESPONSE_TIMEOUT_S, metavar="S",
                       help="longest a batch may run before its worker is restarted")
    start.add_argument("--default-timeout-ms", type=int, default=0, metavar="MS",
                       help="default request deadline (default: the response timeout)")
    start.add_argument("--max-request-size", type=int, default=defaults.DEFAULT_MAX_BODY_BYTES,
                       metavar="BYTES",
                       help="largest request body, over HTTP and ZeroMQ; larger ones answer "
                            "413 (default: 6553500, TorchServe's max_request_size)")
    start.add_argument("--request-read-timeout", type=float,
                       default=defaults.DEFAULT_REQUEST_READ_TIMEOUT_S, metavar="S",
                       help="longest an HTTP client may take to send its headers, and "
                            "between two pieces of its body; one that stalls is answered "
                            "408 and closed (default: 60)")
    start.add_argument("--number-of-gpu", type=int, default=None,
                       help="GPUs to use (default: all visible)")
    start.add_argument("--run-dir", default=defaults.DEFAULT_RUN_DIR,
                       help="pid file, log and local sockets (default: /tmp/zerobatch)")
    start.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    start.add_argument("--aggregator", default="auto", choices=["auto", "compiled", "python"],
                       help="batching core twin (default: compiled when built)")
    start.add_argument("--install-py-dep-per-model", action="store_true",
                       help="pip install each model's requirementsFile into a private "
                            "directory under RUN_DIR/deps before its workers start")
    start.add_argument("--startup-timeout", type=float, default=120.0, metavar="S",
                       help="how long start waits for the models to be ready")

    archiver.add_arguments(commands.add_parser(
        "archive", help="package a model as torch-model-archiver does",
        description="Package a model (.mar, .tar.gz or a directory); the flags of "
                    "torch-model-archiver 0.12."))

    stop = commands.add_parser("stop", help="stop a running server")
    stop.add_argument("--run-dir", default=defaults.DEFAULT_RUN_DIR)
    stop.add_argument("--timeout", type=float, default=30.0, metavar="S")
    return parser


def read_manifest(model_path: str) -> dict:
    """The manifest of a model directory, or of a `.mar` / `.tar.gz` archive (read from inside
    it without extracting; the broker extracts and checks archives at startup)."""
    if not os.path.exists(model_path):
        raise CliError(f"model path {model_path} does not exist")
    if os.path.isdir(model_path):
        try:
            return model_files.read_manifest(model_path)
        except ConfigError as exc:
            raise CliError(str(exc)) from None
    try:
        return archiver.read_archive_manifest(model_path)
    except (ConfigError, OSError) as exc:
        raise CliError(f"{model_path} is not a model archive (.mar, .tar.gz) or directory: "
                       f"{exc}") from None


def model_configs(args: argparse.Namespace) -> tuple[ModelConfig, ...]:
    models = []
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        full_path = os.path.abspath(os.path.join(args.model_store, path))
        manifest = read_manifest(full_path)
        name = name or manifest["model"].get("modelName", "")
        version = str(manifest["model"].get("modelVersion") or defaults.DEFAULT_VERSION)
        models.append(ModelConfig(
            name=name, path=full_path, version=version, workers=args.workers,
            batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay,
            response_timeout_s=args.response_timeout, max_queue=args.max_queue,
            default_timeout_ms=args.default_timeout_ms, batch_policy=args.batch_policy,
            admission=args.admission))
    return tuple(models)


def server_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        models=model_configs(args), model_store=os.path.abspath(args.model_store),
        host=args.host, http_port=args.http_port, client_address=args.client_address,
        worker_address=args.worker_address, frontends=args.frontends,
        number_of_gpu=args.number_of_gpu, run_dir=os.path.abspath(args.run_dir),
        log_level=args.log_level, aggregator=args.aggregator,
        install_py_dep_per_model=args.install_py_dep_per_model,
        max_request_bytes=args.max_request_size,
        request_read_timeout_s=args.request_read_timeout)


# ---------------------------------------------------------------------- start

def running_pid(run_dir: str) -> int | None:
    """The pid of a live broker recorded in run_dir, or None."""
    try:
        with open(os.path.join(run_dir, PID_FILE)) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start(args: argparse.Namespace) -> int:
    config = server_config(args)
    pid = running_pid(config.run_dir)
    if pid is not None:
        raise CliError(f"a server is already running from {config.run_dir} (pid {pid}); "
                       f"stop it with `zerobatch stop --run-dir {config.run_dir}`")
    os.makedirs(config.run_dir, exist_ok=True)
    argv = module_argv("zerobatch.broker", "--config", config.to_json())
    if args.foreground:
        os.execv(sys.executable, argv)
    log_path = os.path.join(config.run_dir, LOG_FILE)
    with open(log_path, "ab") as log_file:
        broker = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        failed = wait_until_ready(config, broker, args.startup_timeout)
        if failed and len(failed) == len(config.models):
            raise CliError("no model could be loaded:\n" + "\n".join(failed))
    except CliError:
        if broker.poll() is None:
            broker.terminate()
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                broker.kill()
        raise
    for error in failed:
        print(f"zerobatch: warning: {error} (its requests answer 503 until a worker loads it)",
              file=sys.stderr)
    http = f"http://{config.host}:{config.http_port}" if config.frontends else "disabled"
    print(f"zerobatch started (pid {broker.pid}): HTTP {http}, ZeroMQ {config.client_address}, "
          f"log {log_path}")
    return 0


def wait_until_ready(config: ServerConfig, broker: subprocess.Popen,
                     timeout_s: float) -> list[str]:
    """Return when every model has a ready worker or failed to load (the load errors are
    returned) and HTTP answers; raise CliError if the broker exits or the time runs out."""
    from zerobatch.api.client import Client  # the CLI's only use of the client: keep `stop` light

    log_path = os.path.join(config.run_dir, LOG_FILE)
    deadline = time.monotonic() + timeout_s
    front_ipc = f"ipc://{config.run_dir}/front.sock"
    with Client(front_ipc) as client:
        while True:
            code = broker.poll()
            if code is not None:
                raise CliError(f"the server exited with status {code}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise CliError(f"the server was not ready within {timeout_s:.0f} s; its log:\n"
                               f"{log_tail(log_path)}")
            failed = models_ready(client, config)
            if failed is not None and http_ready(config):
                return failed
            time.sleep(0.05)


def models_ready(client, config: ServerConfig) -> list[str] | None:
    """None while a model still waits for its first worker; once every model has a worker or
    has failed to load, the load errors (empty when all loaded)."""
    try:
        described = client.control("describe", timeout_ms=500)
    except ServingError:
        return None
    failed = []
    for model in described["models"]:
        wanted = next((m for m in config.models if m.key == f"{model['modelName']}/"
                       f"{model['modelVersion']}"), None)
        if model.get("loadError") and not model["workers"]:
            failed.append(model["loadError"])
        elif wanted and wanted.workers and not model["workers"]:
            return None
    return failed


def http_ready(config: ServerConfig) -> bool:
    if not config.frontends:
        return True
    try:
        url = f"http://{config.host}:{config.http_port}/ping"
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return response.status == 200
    except OSError:
        return False


def log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------- stop

def stop(args: argparse.Namespace) -> int:
    run_dir = os.path.abspath(args.run_dir)
    pid = running_pid(run_dir)
    if pid is None:
        print(f"zerobatch: no server is running from {run_dir}", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"zerobatch stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    print(f"zerobatch: the server (pid {pid}) did not stop within {args.timeout:.0f} s; "
          "killing it", file=sys.stderr)
    os.killpg(pid, signal.SIGKILL)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            return start(args)
        if args.command == "archive":
            return archiver.run(args)
        return stop(args)
    except (CliError, ConfigError) as exc:
        print(f"zerobatch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
