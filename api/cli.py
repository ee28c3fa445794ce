"""The `zerobatch` command line: `start`, `stop`, `keys`, `archive` (api/archiver.py) and
`--version`.

`zerobatch start` checks the flags and the model directories, makes sure the run directory is
private (zerobatch/run_dir.py), then runs the broker process (`python -P -m zerobatch.broker`),
which supervises the workers and the HTTP front ends. With `--foreground` it becomes the
broker, whose exit status tells a supervisor whether to restart it. Without, it runs the
broker's keeper in the background (broker/keeper.py: it restarts the broker after a crash; the
log goes to RUN_DIR/zerobatch.log) and returns once every model has a ready worker and the
HTTP front end answers, or fails with the broker's own error. `zerobatch stop` signals the
process that holds the run directory's lock (the keeper, else the broker), as the kernel
reports it, and waits until it is gone. `zerobatch keys` makes CURVE key pairs. `zerobatch
token KIND` prints a key of a running server's token authorization (zerobatch/token_keys.py).
`zerobatch worker` runs one remote worker, on another host, joining a broker's TCP worker
endpoint with CURVE (docs/remote-workers.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from zerobatch import __version__, model_files, run_dir, snapshot, token_keys, ts_config
from zerobatch import config as defaults
from zerobatch.api import archiver, tls
from zerobatch.config import ModelConfig, ServerConfig, WorkerConfig
from zerobatch.errors import ConfigError, ServingError
from zerobatch.launch import module_argv


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


# ---------------------------------------------------------------------- parsing

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zerobatch",
                                     description="Serve PyTorch models with dynamic batching.")
    parser.add_argument("--version", action="version", version=f"zerobatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start the server")
    # The flags a --ts-config file may also set default to None, so that an explicit flag
    # can be told from a default: resolve() applies FILE_FLAG_DEFAULTS after the merge (their
    # help shows them).
    start.add_argument("--ts-config", metavar="FILE",
                       help="read TorchServe's config.properties (and, when it sets "
                            "enable_envvars_config=true, the TS_* environment variables); "
                            "flags win over both")
    start.add_argument("--model-store",
                       help="directory that model paths are relative to (default: .)")
    start.add_argument("--models", nargs="+", metavar="NAME=PATH",
                       help="models to serve: NAME=PATH, or PATH (name from its manifest); "
                            "PATH is a .mar, a .tar.gz or a directory with "
                            "MAR-INF/MANIFEST.json; `all`: every model in the store")
    start.add_argument("--foreground", action="store_true",
                       help="run in this terminal; Ctrl-C stops")
    start.add_argument("--host", help="HTTP bind address (default: 127.0.0.1)")
    start.add_argument("--http-port", type=int, help="HTTP inference port (default: 8080)")
    start.add_argument("--inference-https", action=argparse.BooleanOptionalAction,
                       help="serve the inference API over TLS (https://), with "
                            "--certificate-file and --private-key-file; a --ts-config "
                            "inference_address=https://... sets it (default: off)")
    start.add_argument("--certificate-file", metavar="FILE",
                       help="TLS: the certificate chain (PEM) for the https:// addresses "
                            "(TorchServe's certificate_file)")
    start.add_argument("--private-key-file", metavar="FILE",
                       help="TLS: the private key (PEM, unencrypted) of --certificate-file "
                            "(TorchServe's private_key_file)")
    start.add_argument("--management-address", metavar="URL",
                       help="the management API (TorchServe's management_address): "
                            "http://HOST:PORT, https://HOST:PORT (TLS), or none "
                            "(default: http://127.0.0.1:8081)")
    start.add_argument("--metrics-address", metavar="URL",
                       help="the metrics API, Prometheus text on /metrics (TorchServe's "
                            "metrics_address): http://HOST:PORT, https://HOST:PORT, or none "
                            "(default: http://127.0.0.1:8082)")
    start.add_argument("--grpc-address", metavar="URL", default=defaults.DEFAULT_GRPC_ADDRESS,
                       help="the Open Inference Protocol (KServe v2) over gRPC, for "
                            "tritonclient.grpc: http://HOST:PORT, https://HOST:PORT (TLS), or "
                            "none (default: none; needs pip install 'zerobatch[grpc]')")
    start.add_argument("--access-log", action="store_true",
                       help="one log line per HTTP request: time, client, method, path, "
                            "model, version, status, bytes, latency, request id")
    start.add_argument("--log-format", choices=defaults.LOG_FORMATS, default="text",
                       help="log lines as text or as one JSON object each (default: text)")
    start.add_argument("--scale-up-after", type=float, metavar="S",
                       default=defaults.DEFAULT_SCALE_UP_AFTER_S,
                       help="autoscaling (models with maxWorkers above minWorkers): add a "
                            "worker once more than a batch has kept waiting this long "
                            "(default: 1)")
    start.add_argument("--scale-down-after", type=float, metavar="S",
                       default=defaults.DEFAULT_SCALE_DOWN_AFTER_S,
                       help="autoscaling: retire a worker once the model has been idle this "
                            "long (default: 60)")
    start.add_argument("--client-address",
                       default=f"tcp://{defaults.DEFAULT_HOST}:{defaults.DEFAULT_CLIENT_PORT}",
                       help="ZeroMQ endpoint for clients (default: tcp://127.0.0.1:9500)")
    start.add_argument("--worker-address", default="",
                       help="extra ZeroMQ endpoint for remote workers (`zerobatch worker`), "
                            "e.g. tcp://10.0.0.1:9600; TCP requires --curve-secret-key and "
                            "--curve-worker-keys (default: none)")
    start.add_argument("--frontends", type=int, default=defaults.DEFAULT_FRONTENDS,
                       help="HTTP front-end processes (default: 1; 0 disables HTTP)")
    start.add_argument("--workers", type=int, help="worker processes per model (default: 1)")
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
    start.add_argument("--max-queue", type=int,
                       help="requests waiting per model before 503 (default: 100)")
    start.add_argument("--response-timeout", type=int, metavar="S",
                       help="longest a batch may run before its worker is restarted "
                            "(default: 120)")
    start.add_argument("--default-timeout-ms", type=int, default=0, metavar="MS",
                       help="default request deadline (default: the response timeout)")
    start.add_argument("--max-request-size", type=int, metavar="BYTES",
                       help="largest request body, over HTTP and ZeroMQ; larger ones answer "
                            "413 (default: 6553500, TorchServe's max_request_size)")
    start.add_argument("--request-read-timeout", type=float,
                       default=defaults.DEFAULT_REQUEST_READ_TIMEOUT_S, metavar="S",
                       help="longest an HTTP client may take to send its headers, and then "
                            "its body (plus what --request-min-rate earns it); a late one is "
                            "answered 408 and closed (default: 60)")
    start.add_argument("--request-min-rate", type=int,
                       default=defaults.DEFAULT_REQUEST_MIN_RATE_BYTES_S, metavar="BYTES_PER_S",
                       help="an HTTP request body earns this much extra time per byte on top "
                            "of --request-read-timeout; a slower one is answered 408 "
                            "(default: 1024)")
    start.add_argument("--max-header-size", type=int,
                       default=defaults.DEFAULT_MAX_HEADER_BYTES, metavar="BYTES",
                       help="largest HTTP request line and headers; larger answer 431 "
                            "(default: 65536)")
    start.add_argument("--max-connections", type=int, default=defaults.DEFAULT_MAX_CONNECTIONS,
                       help="open HTTP connections per front end; beyond them a new "
                            "connection is answered 503 (default: 1024)")
    start.add_argument("--curve-secret-key", default="", metavar="FILE",
                       help="require CURVE on the client endpoint: the server's secret key "
                            "file, made by `zerobatch keys` (default: no CURVE)")
    start.add_argument("--curve-authorized-keys", default="", metavar="DIR",
                       help="with --curve-secret-key: a directory of the public key files "
                            "(*.key) of the clients to accept")
    start.add_argument("--curve-worker-keys", default="", metavar="DIR",
                       help="with --worker-address and --curve-secret-key: a directory of the "
                            "public key files (*.key) of the remote workers to accept")
    start.add_argument("--number-of-gpu", type=int, default=None,
                       help="GPUs to use (default: all visible)")
    start.add_argument("--run-dir", default=None,
                       help="lock file, log and local sockets, private to you (default: "
                            "/tmp/zerobatch-UID)")
    start.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    start.add_argument("--aggregator", default="auto", choices=["auto", "compiled", "python"],
                       help="batching core twin (default: compiled when built)")
    start.add_argument("--install-py-dep-per-model", action="store_true", default=None,
                       help="pip install each model's requirementsFile into a private "
                            "directory under RUN_DIR/deps before its workers start "
                            "(default: off)")
    start.add_argument("--disable-token-auth", action="store_true", default=None,
                       help="no token authorization: the inference and management APIs "
                            "answer anyone who reaches them (default: keys in "
                            "RUN_DIR/key_file.json, see `zerobatch token`)")
    start.add_argument("--enable-model-api", action="store_true", default=None,
                       help="allow registering (POST /models) and unregistering (DELETE) "
                            "models on the management API (default: off)")
    start.add_argument("--zerobatch-answers", action="store_true", default=None,
                       help="zerobatch's own answers where they tell the client more than "
                            "TorchServe's: a failed prediction in zerobatch's words (the "
                            "handler's exception and its text, status 500, instead of 503 "
                            "\"Prediction failed\"), and sequence batching's stricter rules "
                            "(see docs/from-torchserve.md); config.properties: "
                            "zerobatch_answers=true (default: off)")
    start.add_argument("--no-config-snapshots", "--ncs", dest="ncs", action="store_true",
                       help="neither save snapshots of the models (RUN_DIR/config/) nor "
                            "restore the newest one at start")
    start.add_argument("--startup-timeout", type=float, default=120.0, metavar="S",
                       help="how long start waits for the models to be ready")

    archiver.add_arguments(commands.add_parser(
        "archive", help="package a model as torch-model-archiver does",
        description="Package a model (.mar, .tar.gz or a directory); the flags of "
                    "torch-model-archiver 0.12."))

    keys = commands.add_parser(
        "keys", help="make a CURVE key pair (NAME.key, NAME.key_secret)",
        description="Make a CURVE key pair for the server (give the .key_secret to "
                    "--curve-secret-key, the .key to clients) or for a client (put its .key "
                    "in the server's --curve-authorized-keys directory, give the .key_secret "
                    "to the client).")
    keys.add_argument("name", help="the pair's file name, e.g. server or alice")
    keys.add_argument("--dir", default=".", help="where to write it (default: .)")
    keys.add_argument("--authorize", metavar="DIR",
                      help="also copy the public key into DIR, the server's "
                           "--curve-authorized-keys directory")

    add_worker_parser(commands)

    stop = commands.add_parser("stop", help="stop a running server")
    stop.add_argument("--run-dir", default=None,
                      help="the run directory of the server to stop (default: "
                           "/tmp/zerobatch-UID)")
    stop.add_argument("--timeout", type=float, default=30.0, metavar="S")

    token = commands.add_parser(
        "token", help="print a token authorization key of a running server",
        description="Print a key from the running server's key file (RUN_DIR/key_file.json): "
                    "send it as `Authorization: Bearer <key>`. The inference key serves the "
                    "inference API, the management key the management API, the API key "
                    "/token?type=inference|management on the management port, which replaces "
                    "that key.")
    token.add_argument("kind", nargs="?", default="inference",
                       choices=["inference", "management", "api"],
                       help="which key (default: inference)")
    token.add_argument("--run-dir", default=None,
                       help="the run directory of the server (default: /tmp/zerobatch-UID)")
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
        except RecursionError:  # JSON nested too deep for the parser
            raise CliError(f"{model_files.manifest_file(model_path)}: cannot read the "
                           "manifest: nested too deeply") from None
    try:
        return archiver.read_archive_manifest(model_path)
    except (ConfigError, OSError) as exc:
        raise CliError(f"{model_path} is not a model archive (.mar, .tar.gz) or directory: "
                       f"{exc}") from None


#: `zerobatch start` flags that a --ts-config file may also set, and their defaults
#: (precedence: flags > TS_* environment > file > these)
FILE_FLAG_DEFAULTS: dict[str, Any] = {
    "model_store": ".", "models": [], "host": defaults.DEFAULT_HOST,
    "http_port": defaults.DEFAULT_HTTP_PORT, "workers": defaults.DEFAULT_WORKERS,
    "max_queue": defaults.DEFAULT_MAX_QUEUE,
    "response_timeout": defaults.DEFAULT_RESPONSE_TIMEOUT_S,
    "max_request_size": defaults.DEFAULT_MAX_BODY_BYTES, "number_of_gpu": None,
    "install_py_dep_per_model": False, "disable_token_auth": False, "enable_model_api": False,
    "zerobatch_answers": False,
    "management_address": defaults.DEFAULT_MANAGEMENT_ADDRESS,
    "metrics_address": defaults.DEFAULT_METRICS_ADDRESS,
    "inference_https": False, "certificate_file": "", "private_key_file": "",
}
#: settings only a --ts-config file gives (no flag), and their defaults
FILE_ONLY_DEFAULTS: dict[str, Any] = {
    "startup_timeout_s": defaults.DEFAULT_STARTUP_TIMEOUT_S,
    "max_response_bytes": defaults.DEFAULT_MAX_BODY_BYTES,
    "allowed_urls": defaults.DEFAULT_ALLOWED_URLS, "model_snapshot": "",
    "token_expiration_min": defaults.DEFAULT_TOKEN_EXPIRATION_MIN,
    "metrics_mode": "prometheus", "metrics_config": "",
}


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> argparse.Namespace:
    """args with the --ts-config file's settings (TS_* variables from environ included) under
    the explicit flags and the defaults under both; `ts` is the TsConfig read, or None."""
    if hasattr(args, "ts"):
        return args  # resolved already
    ts = ts_config.load(args.ts_config, environ) if getattr(args, "ts_config", None) else None
    from_file = ts.settings if ts else {}
    resolved = argparse.Namespace(**vars(args), ts=ts)
    #: the settings the flags gave, and those a flag or the file gave (not a default)
    resolved.given_flags = {dest for dest in FILE_FLAG_DEFAULTS
                            if getattr(args, dest, None) is not None}
    resolved.explicit = resolved.given_flags | set(from_file)
    for dest, default in FILE_FLAG_DEFAULTS.items():
        if getattr(args, dest, None) is None:
            setattr(resolved, dest, from_file.get(dest, default))
    for name, default in FILE_ONLY_DEFAULTS.items():
        setattr(resolved, name, from_file.get(name, default))
    return resolved


def store_models(model_store: str) -> list[str]:
    """The models `--models all` (`load_models=all`) names: see ts_config.store_models."""
    try:
        with os.scandir(model_store) as entries:
            return ts_config.store_models((e.name, e.is_dir()) for e in entries)
    except OSError as exc:
        raise CliError(f"model store {model_store} cannot be listed: "
                       f"{exc.strerror or exc}") from None


def model_configs(args: argparse.Namespace) -> tuple[ModelConfig, ...]:
    """The models the flags (and --ts-config) name. A model whose manifest cannot be read is
    left out with a one-line warning on stderr, and the others are served; none left is a
    CliError. A `models` JSON entry in the --ts-config file overrides the global settings for
    its model and version (the model's model-config.yaml, read by the broker, wins over both)."""
    args = resolve(args, {})
    per_model = args.ts.models if args.ts else {}
    specs = list(args.models)
    restoring = args.ts is not None and args.ts.settings.get("model_snapshot") \
        and "models" not in args.given_flags
    if restoring:  # a snapshot's models replace load_models and the models JSON (TorchServe)
        try:
            specs, per_model = snapshot.models_of(args.ts.settings["model_snapshot"],
                                                  f"{args.ts.path}: model_snapshot")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if ts_config.is_all(specs):
        specs = store_models(args.model_store)
        if not specs:
            print(f"zerobatch: warning: no model in the model store {args.model_store} "
                  "(models: all)", file=sys.stderr)
    models = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        full_path = os.path.abspath(os.path.join(args.model_store, path))
        try:
            manifest = read_manifest(full_path)
        except CliError as exc:
            reason = " ".join(str(exc).split())  # one line, whatever the parser said
            print(f"zerobatch: warning: model {path} left out, not served: {reason}",
                  file=sys.stderr)
            continue
        name = name or manifest["model"].get("modelName", "")
        version = str(manifest["model"].get("modelVersion") or defaults.DEFAULT_VERSION)
        settings = dict(model_settings(args), workers=args.workers)
        overrides = per_model.get(name, {}).get(version, {})
        settings.update(overrides)
        try:
            models.append(ModelConfig(name=name, path=full_path, version=version, url=path,
                                      **settings))
        except ConfigError as exc:
            if not overrides:
                raise
            raise ConfigError(f"{args.ts.path}: models: {name} {version}: {exc}") from None
    served = {(m.name, m.version) for m in models}
    for name, versions in per_model.items():
        for version in versions:
            if (name, version) not in served:
                print(f"zerobatch: warning: {args.ts.path}: models: {name} {version} is not "
                      "among the models served; its settings are unused", file=sys.stderr)
    if specs and not models:
        raise CliError("no model left to serve: every model was left out (see the warnings "
                       "above)")
    return tuple(models)


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ModelConfig settings the flags give every model (its archive's model-config.yaml
    and a --ts-config models entry win), and a registered one where its call names none."""
    return dict(batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay,
                response_timeout_s=args.response_timeout,
                startup_timeout_s=args.startup_timeout_s, max_queue=args.max_queue,
                default_timeout_ms=args.default_timeout_ms, batch_policy=args.batch_policy,
                admission=args.admission)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of resolved args (see resolve; unresolved ones get no environment)."""
    args = resolve(args, {})
    return ServerConfig(
        models=model_configs(args), model_store=os.path.abspath(args.model_store),
        host=args.host, http_port=args.http_port, client_address=args.client_address,
        worker_address=args.worker_address, frontends=args.frontends,
        number_of_gpu=args.number_of_gpu, run_dir=run_dir_of(args),
        log_level=args.log_level, aggregator=args.aggregator,
        install_py_dep_per_model=args.install_py_dep_per_model,
        max_request_bytes=args.max_request_size,
        request_read_timeout_s=args.request_read_timeout,
        request_min_rate_bytes_s=args.request_min_rate, max_header_bytes=args.max_header_size,
        max_connections=args.max_connections,
        curve_secret_key=_abspath_or_empty(args.curve_secret_key),
        curve_authorized_keys=_abspath_or_empty(args.curve_authorized_keys),
        curve_worker_keys=_abspath_or_empty(args.curve_worker_keys),
        inference_https=args.inference_https,
        certificate_file=_abspath_or_empty(args.certificate_file),
        private_key_file=_abspath_or_empty(args.private_key_file),
        management_address=args.management_address, metrics_address=args.metrics_address,
        grpc_address=args.grpc_address,
        max_response_bytes=args.max_response_bytes, allowed_urls=args.allowed_urls,
        disable_token_authorization=args.disable_token_auth,
        enable_model_api=args.enable_model_api, model_snapshot=args.model_snapshot,
        config_snapshots=not args.ncs, model_defaults=model_settings(args),
        token_expiration_min=args.token_expiration_min,
        log_format=args.log_format, access_log=args.access_log,
        zerobatch_answers=args.zerobatch_answers,
        metrics_mode=args.metrics_mode, metrics_config=_abspath_or_empty(args.metrics_config),
        registration_workers=args.workers if "workers" in args.explicit else 0,
        scale_up_after_s=args.scale_up_after, scale_down_after_s=args.scale_down_after)


def run_dir_of(args: argparse.Namespace) -> str:
    """The run directory the flags name, or this user's default one."""
    return os.path.abspath(args.run_dir or defaults.default_run_dir(os.getuid()))


def _abspath_or_empty(path: str) -> str:
    return os.path.abspath(path) if path else ""


# ---------------------------------------------------------------------- start

def running_pid(directory: str) -> int | None:
    """The pid of the process serving from directory (the keeper of a background server,
    else the broker), from the kernel's record of who holds its lock; None when none does."""
    return (run_dir.lock_holder(directory, run_dir.KEEPER_LOCK)
            or run_dir.lock_holder(directory, run_dir.BROKER_LOCK))


def start(args: argparse.Namespace) -> int:
    if args.ts_config is None and args.models is None and not args.ncs:
        args.ts_config = snapshot.latest(run_dir_of(args))
        if args.ts_config:
            print(f"zerobatch: restoring the models of the snapshot {args.ts_config} (--models "
                  "or --ts-config start from those instead, --ncs without snapshots)",
                  file=sys.stderr)
    args = resolve(args, os.environ)
    for warning in args.ts.warnings if args.ts else ():
        print(f"zerobatch: warning: {warning}", file=sys.stderr)
    config = server_config(args)
    check_tls(config)
    if config.serves_management:  # a bad address fails here, not in the broker's log
        ts_config.split_address(config.management_address, "management_address",
                                ts_config.MANAGEMENT_PORTS)
    if config.serves_metrics:
        ts_config.split_address(config.metrics_address, "metrics_address",
                                ts_config.METRICS_PORTS)
    if config.serves_grpc:
        check_grpc(config)
    pid = running_pid(config.run_dir)
    if pid is not None:
        raise CliError(f"a server is already running from {config.run_dir} (pid {pid}); "
                       f"stop it with `zerobatch stop --run-dir {config.run_dir}`")
    run_dir.make_private(config.run_dir)
    if args.foreground:
        os.execv(sys.executable, module_argv("zerobatch.broker", "--config", config.to_json()))
    log_path = os.path.join(config.run_dir, run_dir.LOG_FILE)
    log_fd = run_dir.open_log(config.run_dir)
    try:
        keeper = subprocess.Popen(
            module_argv("zerobatch.broker.keeper", "--config", config.to_json()),
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True)
    finally:
        os.close(log_fd)
    try:
        failed = wait_until_ready(config, keeper, args.startup_timeout)
        if failed and len(failed) == len(config.models):
            raise CliError("no model could be loaded:\n" + "\n".join(failed))
    except CliError:
        if keeper.poll() is None:
            keeper.terminate()
            try:
                keeper.wait(10)
            except subprocess.TimeoutExpired:
                keeper.kill()
        raise
    for error in failed:
        print(f"zerobatch: warning: {error} (its requests answer 503 until a worker loads it)",
              file=sys.stderr)
    http = inference_url(config) if config.frontends else "disabled"
    management = config.management_address if config.serves_management else "disabled"
    metrics = config.metrics_address if config.serves_metrics else "disabled"
    print(f"zerobatch started (pid {keeper.pid}): HTTP {http}, management {management}, "
          f"metrics {metrics}, "
          f"{'gRPC ' + config.grpc_address + ', ' if config.serves_grpc else ''}"
          f"ZeroMQ {config.client_address}, log {log_path}")
    if config.key_file:
        run_dir_flag = f" --run-dir {shlex.quote(config.run_dir)}" if args.run_dir else ""
        example = (f"; e.g. curl -H \"Authorization: Bearer $(zerobatch token inference"
                   f"{run_dir_flag})\" {http}/predictions/MODEL -T FILE"
                   if config.frontends else "")
        print(f"token authorization is on: keys in {config.key_file}{example}")
    return 0


def wait_until_ready(config: ServerConfig, keeper: subprocess.Popen,
                     timeout_s: float) -> list[str]:
    """Return when every model has a ready worker or failed to load (the load errors are
    returned) and HTTP answers; raise CliError if the broker exits or the time runs out."""
    from zerobatch.api.client import Client  # the CLI's only use of the client: keep `stop` light

    log_path = os.path.join(config.run_dir, run_dir.LOG_FILE)
    deadline = time.monotonic() + timeout_s
    with Client(config.control_address) as client:
        while True:
            code = keeper.poll()
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
    """Whether an HTTP front end answers /ping at all: a 500 `Unhealthy` is an answer (a
    model that failed to load is reported from describe, and the others are served). Over
    https the server's certificate is not verified: any answer is the one it needs, and the
    certificate names the server's public name, not the address asked here."""
    if not config.frontends:
        return True
    context = None
    if config.inference_https:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        url = f"{inference_url(config)}/ping"
        with urllib.request.urlopen(url, timeout=0.5, context=context) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def inference_url(config: ServerConfig) -> str:
    """The inference API's base URL: https:// when it is served over TLS."""
    scheme = "https" if config.inference_https else "http"
    return f"{scheme}://{config.host}:{config.http_port}"


def check_tls(config: ServerConfig) -> None:
    """Refuse, before anything starts, a certificate or private key that cannot be loaded;
    warn about a pair that no https:// address uses."""
    if not config.certificate_file:
        return
    try:
        tls.check_certificate(config.certificate_file, config.private_key_file)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if not (config.inference_https
            or config.management_address.lower().startswith("https://")
            or config.metrics_address.lower().startswith("https://")
            or config.grpc_address.lower().startswith("https://")):
        print("zerobatch: warning: a certificate and a private key are given but no address "
              "is https:// (--inference-https, or an https:// inference_address, "
              "management_address or metrics_address): they are unused", file=sys.stderr)


def check_grpc(config: ServerConfig) -> None:
    """A --grpc-address that cannot serve fails here: a bad address, or grpcio missing."""
    ts_config.split_address(config.grpc_address, "grpc_address",
                            (defaults.DEFAULT_GRPC_PORT, defaults.DEFAULT_GRPC_PORT))
    try:
        import grpc  # noqa: F401  (only whether it imports)
    except ImportError:
        from zerobatch.api.grpc_server import MISSING_GRPC
        raise CliError(f"--grpc-address: {MISSING_GRPC}") from None


def log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------- stop

def stop(args: argparse.Namespace) -> int:
    directory = run_dir_of(args)
    pid = running_pid(directory)
    if pid is None:
        print(f"zerobatch: no server is running from {directory}", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if running_pid(directory) is None:
            print(f"zerobatch stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    print(f"zerobatch: the server (pid {pid}) did not stop within {args.timeout:.0f} s; "
          "killing it", file=sys.stderr)
    try:
        os.killpg(pid, signal.SIGKILL)  # a background server leads its own process group
    except ProcessLookupError:  # a foreground one does not
        os.kill(pid, signal.SIGKILL)
    return 1


# ---------------------------------------------------------------------- token

def token(args: argparse.Namespace) -> int:
    """Print the key of kind args.kind from a running server's key file."""
    directory = run_dir_of(args)
    if running_pid(directory) is None:
        raise CliError(f"no server is running from {directory}")
    path = os.path.join(directory, defaults.KEY_FILE)
    try:
        keys = token_keys.read_keys(path)
    except FileNotFoundError:
        raise CliError(f"token authorization is off for the server running from {directory} "
                       "(it was started with --disable-token-auth): no key is needed") from None
    except (OSError, ConfigError) as exc:
        raise CliError(f"cannot read the key file {path}: "
                       f"{getattr(exc, 'strerror', None) or exc}") from None
    expires_s = keys.expires_s(args.kind)
    if expires_s is not None and expires_s <= time.time():
        print(f"zerobatch: warning: the {args.kind} key expired at "
              f"{token_keys.format_instant(expires_s)}; a /token?type={args.kind} call on the "
              "management port with the API key replaces it", file=sys.stderr)
    print(keys.key(args.kind))
    return 0


# ---------------------------------------------------------------------- keys

def keys(args: argparse.Namespace) -> int:
    from zerobatch import curve  # imports zmq: only here

    public, secret = curve.make_key_pair(args.dir, args.name)
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    if args.authorize:
        print(f"authorized: {curve.authorize(public, args.authorize)}")
    return 0


# ---------------------------------------------------------------------- worker

def add_worker_parser(commands: Any) -> None:
    worker_parser = commands.add_parser(
        "worker", help="run one remote worker that joins a broker over TCP with CURVE",
        description="Run one worker process on this host for a broker elsewhere, started with "
                    "`zerobatch start --worker-address tcp://HOST:PORT --curve-secret-key "
                    "FILE --curve-worker-keys DIR`. The broker accepts it only if its key is "
                    "in DIR and its model directory's files are the broker's own (same "
                    "digest); see docs/remote-workers.md.")
    worker_parser.add_argument("--broker", required=True, metavar="tcp://HOST:PORT",
                               help="the broker's --worker-address")
    worker_parser.add_argument("--model", required=True, metavar="NAME=PATH",
                               help="the model to serve and its directory (an extracted "
                                    "archive: the same files as the broker's)")
    worker_parser.add_argument("--model-version", default=None, metavar="VERSION",
                               help="the model version (default: the manifest's modelVersion, "
                                    f"else {defaults.DEFAULT_VERSION}, as `zerobatch start`)")
    worker_parser.add_argument("--curve-server-key", required=True, metavar="FILE",
                               help="the broker's public key file (its --curve-secret-key's "
                                    ".key)")
    worker_parser.add_argument("--curve-secret-key", required=True, metavar="FILE",
                               help="this worker's secret key file (`zerobatch keys`); its "
                                    ".key must be in the broker's --curve-worker-keys")
    worker_parser.add_argument("--gpu-id", type=int, default=None, metavar="N",
                               help="the GPU to run on (default: the CPU)")
    worker_parser.add_argument("--batch-size", type=int, default=defaults.DEFAULT_BATCH_SIZE,
                               help="the batch size the handler's context reports; give the "
                                    "broker's (default: 1)")
    worker_parser.add_argument("--worker-id", default="", metavar="ID",
                               help="a name for this worker after 'remote.' (default: "
                                    "HOST.PID.RANDOM)")
    worker_parser.add_argument("--log-level", default="INFO",
                               choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker_parser.add_argument("--log-format", choices=defaults.LOG_FORMATS, default="text")


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    """The WorkerConfig of `zerobatch worker`'s flags; CliError for what the user can fix."""
    import secrets
    import socket

    if not args.broker.startswith("tcp://"):
        raise CliError(f"--broker {args.broker}: a remote worker joins a tcp:// worker "
                       "endpoint (local workers are started by the broker itself)")
    name, sep, path = args.model.partition("=")
    if not sep or not name or not path:
        raise CliError(f"--model {args.model}: give NAME=PATH")
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise CliError(f"--model {args.model}: {path} is not a directory (extract the archive "
                       "first: the worker serves a model directory)")
    manifest = read_manifest(path)
    version = args.model_version or str(manifest["model"].get("modelVersion")
                                         or defaults.DEFAULT_VERSION)
    for flag, key_file in (("--curve-server-key", args.curve_server_key),
                           ("--curve-secret-key", args.curve_secret_key)):
        if not os.path.isfile(key_file):
            raise CliError(f"{flag} {key_file}: no such file (`zerobatch keys` makes them)")
    suffix = args.worker_id or (f"{socket.gethostname()}.{os.getpid()}."
                                f"{secrets.token_hex(3)}")
    return WorkerConfig(
        worker_id=f"remote.{suffix}", broker_address=args.broker,
        model=ModelConfig(name=name, path=path, version=version, batch_size=args.batch_size,
                          workers=0),
        gpu_id=args.gpu_id, log_level=args.log_level, log_format=args.log_format,
        curve_server_key=os.path.abspath(args.curve_server_key),
        curve_secret_key=os.path.abspath(args.curve_secret_key))


def worker(args: argparse.Namespace) -> int:
    """Become the worker process (`python -m zerobatch.worker`, same pid): its exit status is
    the worker's (worker/__main__.py)."""
    config = worker_config(args)
    os.execv(sys.executable, module_argv("zerobatch.worker", "--config", config.to_json()))
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            return start(args)
        if args.command == "archive":
            return archiver.run(args)
        if args.command == "keys":
            return keys(args)
        if args.command == "token":
            return token(args)
        if args.command == "worker":
            return worker(args)
        return stop(args)
    except (CliError, ConfigError) as exc:
        print(f"zerobatch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
