"""Entry point of the broker process: `python -P -m zerobatch.broker --config '<JSON>'`.

The only place in the broker that reads argv and the environment. It first starts the first
worker of each model whose archive is worth preloading (broker/preload.py), then prepares the
models (archives extracted into RUN_DIR/models/, model-config.yaml applied, per-model
requirements installed into RUN_DIR/deps/ with --install-py-dep-per-model), leaving out any
that is refused, then binds every endpoint (so a port in use fails fast, before the
supervised children start; a preloaded worker is killed), writes the pid file, starts the
supervised children, and runs the loop until SIGTERM/SIGINT or a `stop` control call.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys

import zmq

from zerobatch.broker import aggregator, archive
from zerobatch.broker.core import BrokerCore
from zerobatch.broker.gpus import count_visible_gpus
from zerobatch.broker.loop import BrokerLoop
from zerobatch.broker.supervisor import Supervisor, discard_preloaded, start_preloaded_workers
from zerobatch.config import ServerConfig
from zerobatch.errors import ConfigError
from zerobatch.gc_policy import freeze_startup_objects

log = logging.getLogger("zerobatch.broker")

PID_FILE = "broker.pid"
EXIT_CONFIG = 2
EXIT_ADDRESS_IN_USE = 3


def ipc_endpoints(run_dir: str) -> tuple[str, str]:
    """The local endpoints in run_dir: (front ends -> broker, workers -> broker)."""
    return f"ipc://{run_dir}/front.sock", f"ipc://{run_dir}/back.sock"


def bind_http(host: str, port: int) -> socket.socket:
    """Bind the HTTP port once; every front-end process serves on this inherited socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(4096)
    listener.set_inheritable(True)
    return listener


def serve(config: ServerConfig, environ: dict[str, str]) -> int:
    # first workers that import torch while the archives are extracted (broker/preload.py);
    # the supervisor hands them their configuration, and whatever is left is killed
    preloaded = start_preloaded_workers(config.models, config.run_dir,
                                        config.install_py_dep_per_model)
    try:
        return _serve(config, environ, preloaded)
    finally:
        discard_preloaded(preloaded)


def _serve(config: ServerConfig, environ: dict[str, str],
           preloaded: dict[str, subprocess.Popen]) -> int:
    models, refused = archive.prepare_models(
        config.models, config.run_dir, install_py_deps=config.install_py_dep_per_model)
    for model, exc in refused:
        log.error("model %s refused, not served: %s", model.key, exc)
    if refused and not models:
        log.error("no model left to serve: every model was refused")
        return EXIT_CONFIG
    config = config.with_models(models)

    aggregator_class = aggregator.load(config.aggregator)
    log.info("aggregator: %s twin", aggregator.implementation_name(aggregator_class))
    os.makedirs(config.run_dir, exist_ok=True)
    front_ipc, back_ipc = ipc_endpoints(config.run_dir)
    core = BrokerCore(aggregator_class, max_request_bytes=config.max_request_bytes)
    for model in config.models:
        core.add_model(model)

    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)

    http_socket = None
    try:
        front = [config.client_address, front_ipc]
        back = [back_ipc] + ([config.worker_address] if config.worker_address else [])
        loop = BrokerLoop(core, front, back, wakeup_fd=wake_read.fileno())
        if config.frontends:
            http_socket = bind_http(config.host, config.http_port)
    except (zmq.ZMQError, OSError) as exc:
        log.error("cannot bind: %s (is another server running on these ports? pick others "
                  "with --http-port / --client-address)", exc)
        return EXIT_ADDRESS_IN_USE

    def on_stop_signal(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        loop.stop_signalled = True

    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)

    gpu_count = count_visible_gpus(environ)
    if config.number_of_gpu is not None:
        gpu_count = min(gpu_count, config.number_of_gpu)
    log.info("GPUs in use: %d", gpu_count)
    supervisor = Supervisor(config, back_ipc, front_ipc, gpu_count,
                            http_socket.fileno() if http_socket else None, preloaded)
    loop.supervisor = supervisor
    pid_path = os.path.join(config.run_dir, PID_FILE)
    with open(pid_path, "w") as pid_file:
        pid_file.write(str(os.getpid()))
    try:
        supervisor.start_all()
        log.info("serving: clients %s, http %s:%s, %d model(s)", config.client_address,
                 config.host, config.http_port if config.frontends else "-", len(config.models))
        freeze_startup_objects()  # full collections would stall the poll loop (gc_policy)
        loop.run()
    finally:
        supervisor.stop_all()
        if http_socket is not None:
            http_socket.close()
        for path in (pid_path, front_ipc[6:], back_ipc[6:]):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m zerobatch.broker")
    parser.add_argument("--config", required=True, help="ServerConfig as JSON")
    args = parser.parse_args(argv)
    try:
        config = ServerConfig.from_json(args.config)
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"zerobatch broker: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s broker[%(process)d] %(name)s: %(message)s")
    try:
        return serve(config, dict(os.environ))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
