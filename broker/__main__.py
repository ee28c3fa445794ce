"""Entry point of the broker process: `python -P -m zerobatch.broker --config '<JSON>'`.

The only place in the broker that reads argv and the environment. It first makes sure the run
directory is private and takes its lock (zerobatch/run_dir.py), then starts the first
worker of each model whose archive is worth preloading (broker/preload.py), then prepares the
models (archives extracted into RUN_DIR/models/, model-config.yaml applied, per-model
requirements installed into RUN_DIR/deps/ with --install-py-dep-per-model), leaving out any
that is refused, then binds every endpoint (so a port in use fails fast, before the
supervised children start; a preloaded worker is killed), starts the supervised children,
and runs the loop until SIGTERM/SIGINT or a `stop` control call.

Exit status, for whatever supervises the broker (the keeper of a background server,
systemd, Kubernetes): 0 after a requested stop, EXIT_CONFIG (2) and EXIT_ADDRESS_IN_USE (3)
for problems a restart cannot fix, anything else (a crash, a signal) is worth a restart.
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

from zerobatch import curve, run_dir
from zerobatch.broker import aggregator, archive
from zerobatch.broker.core import BrokerCore
from zerobatch.broker.gpus import count_visible_gpus
from zerobatch.broker.loop import FRAME_SLACK_BYTES, BrokerLoop, Endpoints
from zerobatch.broker.supervisor import Supervisor, discard_preloaded, start_preloaded_workers
from zerobatch.config import ServerConfig
from zerobatch.errors import ConfigError
from zerobatch.gc_policy import freeze_startup_objects
from zerobatch.launch import EXIT_ADDRESS_IN_USE, EXIT_CONFIG

log = logging.getLogger("zerobatch.broker")


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
    run_dir.make_private(config.run_dir)
    lock_fd = run_dir.acquire(config.run_dir, run_dir.BROKER_LOCK)
    try:
        return _serve_locked(config, environ)
    finally:
        run_dir.release(lock_fd, config.run_dir, run_dir.BROKER_LOCK)


def _serve_locked(config: ServerConfig, environ: dict[str, str]) -> int:
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
    front_ipc, back_ipc = config.front_ipc, config.back_ipc
    core = BrokerCore(aggregator_class, max_request_bytes=config.max_request_bytes)
    for model in config.models:
        core.add_model(model)

    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)

    curve_keys = None
    if config.curve_secret_key:
        curve_keys = curve.load_secret(config.curve_secret_key)
        log.info("CURVE on %s: %d authorized client key(s)", config.client_address,
                 curve.check_authorized_dir(config.curve_authorized_keys))
    http_socket = None
    try:
        endpoints = Endpoints(
            client=config.client_address, front_ipc=front_ipc,
            back=(back_ipc,) + ((config.worker_address,) if config.worker_address else ()),
            control=config.control_address,
            max_frame_bytes=config.max_request_bytes + FRAME_SLACK_BYTES,
            curve_keys=curve_keys, curve_authorized_keys=config.curve_authorized_keys)
        loop = BrokerLoop(core, endpoints, wakeup_fd=wake_read.fileno())
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
        for path in (front_ipc[6:], back_ipc[6:], config.control_address[6:]):
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
