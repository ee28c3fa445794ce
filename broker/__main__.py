"""Entry point of the broker process: `python -P -m zerobatch.broker --config '<JSON>'`.

The only place in the broker that reads argv and the environment. It first makes sure the run
directory is private and takes its lock (zerobatch/run_dir.py), empties the metrics folder
of an earlier run's files when the metrics API is on (zerobatch/metrics_dir.py), then starts
the first worker of each model whose archive is worth preloading (broker/preload.py), then
prepares the models (archives extracted into RUN_DIR/models/, model-config.yaml applied,
per-model requirements installed into RUN_DIR/deps/ with --install-py-dep-per-model), leaving
out any that is refused, then binds every endpoint (so a port in use fails fast, before the
supervised children start; a preloaded worker is killed), starts the supervised children,
and runs the loop until SIGTERM/SIGINT or a `stop` control call.

Exit status, for whatever supervises the broker (the keeper of a background server,
systemd, Kubernetes): 0 after a requested stop, EXIT_CONFIG (2) and EXIT_ADDRESS_IN_USE (3)
for problems a restart cannot fix, anything else (a crash, a signal) is worth a restart.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import socket
import subprocess
import sys

import zmq

from zerobatch import curve, logs, metrics_dir, model_files, run_dir, snapshot, token_keys
from zerobatch.broker import aggregator, archive
from zerobatch.broker.core import BrokerCore
from zerobatch.broker.gpus import count_visible_gpus
from zerobatch.broker.loop import FRAME_SLACK_BYTES, BrokerLoop, Endpoints
from zerobatch.broker.supervisor import (
    Supervisor,
    discard_preloaded,
    grpc_endpoint,
    management_endpoint,
    metrics_endpoint,
    start_preloaded_workers,
)
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


def probe_port(host: str, port: int) -> None:
    """Bind host:port once and let it go: OSError when it is in use. The gRPC service binds
    its own port (gRPC cannot take an inherited socket), so this is how a port in use fails
    at start rather than in a child that restarts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def serve(config: ServerConfig, environ: dict[str, str]) -> int:
    run_dir.make_private(config.run_dir)
    lock_fd = run_dir.acquire(config.run_dir, run_dir.BROKER_LOCK)
    try:
        if config.key_file:  # token authorization: the keys every HTTP process checks
            token_keys.create_key_file(config.key_file, config.token_expiration_min)
            log.info("Token authorization is on: keys in %s (`zerobatch token inference "
                     "--run-dir %s` prints the inference key, sent as `Authorization: Bearer "
                     "<key>`; see TorchServe's docs/token_authorization_api.md; "
                     "--disable-token-auth turns it off)", config.key_file, config.run_dir)
        return _serve_locked(config, environ)
    finally:
        if config.key_file:
            token_keys.remove_key_file(config.key_file)
        run_dir.release(lock_fd, config.run_dir, run_dir.BROKER_LOCK)


def child_environ(config: ServerConfig, environ: dict[str, str]) -> dict[str, str]:
    """The environment of every child: ours, with the metrics folder when the metrics API is
    on (zerobatch/metrics_dir.py)."""
    return metrics_dir.child_environ(environ,
                                     config.metrics_dir if config.serves_metrics else None)


def _serve_locked(config: ServerConfig, environ: dict[str, str]) -> int:
    if config.serves_metrics:  # private, and rid of what an earlier run left, before any child
        metrics_dir.prepare(config.metrics_dir)
    # first workers that import torch while the archives are extracted (broker/preload.py);
    # the supervisor hands them their configuration, and whatever is left is killed
    preloaded = start_preloaded_workers(config.models, config.run_dir,
                                        config.install_py_dep_per_model,
                                        child_environ(config, environ))
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
    gpu_count = count_visible_gpus(environ)
    if config.number_of_gpu is not None:
        gpu_count = min(gpu_count, config.number_of_gpu)
    log.info("GPUs in use: %d", gpu_count)
    core = BrokerCore(aggregator_class, max_request_bytes=config.max_request_bytes,
                      scale_up_after_ns=round(config.scale_up_after_s * 1e9),
                      scale_down_after_ns=round(config.scale_down_after_s * 1e9),
                      cpu_limit=os.cpu_count(), gpu_count=gpu_count,
                      zerobatch_answers=config.zerobatch_answers)
    for model in config.models:
        core.add_model(model)
    if config.key_file:  # the management key authorizes control calls from any client too
        core.management_key_check = functools.partial(
            token_keys.key_is_valid, config.key_file, "management")

    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)

    curve_keys = None
    if config.curve_secret_key:
        curve_keys = curve.load_secret(config.curve_secret_key)
    if config.curve_authorized_keys:
        log.info("CURVE on %s: %d authorized client key(s)", config.client_address,
                 curve.check_authorized_dir(config.curve_authorized_keys))
    remote_back = ""
    if config.curve_worker_keys:  # remote workers: CURVE, and their models' digests
        remote_back = config.worker_address
        log.info("CURVE on the worker endpoint %s: %d authorized worker key(s)", remote_back,
                 curve.check_authorized_dir(config.curve_worker_keys, "worker"))
        for model in config.models:
            core.model_digests[model.key] = model_files.model_digest(model.path)
            log.info("model %s: digest %s (remote workers must match it)", model.key,
                     core.model_digests[model.key])
    local_back = (config.worker_address,) if config.worker_address and not remote_back else ()
    http_socket = management_socket = metrics_socket = None
    try:
        endpoints = Endpoints(
            client=config.client_address, front_ipc=front_ipc,
            back=(back_ipc,) + local_back,
            control=config.control_address,
            max_frame_bytes=config.max_request_bytes + FRAME_SLACK_BYTES,
            curve_keys=curve_keys, curve_authorized_keys=config.curve_authorized_keys,
            remote_back=remote_back, curve_worker_keys=config.curve_worker_keys)
        loop = BrokerLoop(core, endpoints, wakeup_fd=wake_read.fileno())
        if config.frontends:
            http_socket = bind_http(config.host, config.http_port)
        if config.serves_management:
            management_socket = bind_http(*management_endpoint(config)[1:])
        if config.serves_metrics:
            metrics_socket = bind_http(*metrics_endpoint(config)[1:])
        if config.serves_grpc:
            probe_port(*grpc_endpoint(config)[1:])
    except (zmq.ZMQError, OSError) as exc:
        log.error("cannot bind: %s (is another server running on these ports? pick others "
                  "with --http-port / --client-address / --management-address / "
                  "--metrics-address / --grpc-address)", exc)
        return EXIT_ADDRESS_IN_USE

    def on_stop_signal(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        loop.stop_signalled = True

    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)

    supervisor = Supervisor(config, back_ipc, front_ipc, gpu_count,
                            http_socket.fileno() if http_socket else None, preloaded,
                            env=child_environ(config, environ))
    if management_socket is not None:
        supervisor.add_management(management_socket.fileno())
    if metrics_socket is not None:
        supervisor.add_metrics(metrics_socket.fileno())
    if config.serves_grpc:
        supervisor.add_grpc()
    loop.supervisor = supervisor
    if config.config_snapshots:
        loop.on_registry_change = functools.partial(_save_snapshot, config, core, "snapshot")
    try:
        supervisor.start_all()
        if config.config_snapshots:
            _save_snapshot(config, core, "startup")
        log.info("serving: clients %s, http %s:%s, management %s, metrics %s, grpc %s, "
                 "%d model(s)", config.client_address, config.host,
                 config.http_port if config.frontends else "-",
                 config.management_address if management_socket else "-",
                 config.metrics_address if metrics_socket else "-",
                 config.grpc_address if config.serves_grpc else "-", len(config.models))
        freeze_startup_objects()  # full collections would stall the poll loop (gc_policy)
        loop.run()
        if config.config_snapshots:
            _save_snapshot(config, core, "shutdown")
    finally:
        supervisor.stop_all()
        for listener in (http_socket, management_socket, metrics_socket):
            if listener is not None:
                listener.close()
        for path in (front_ipc[6:], back_ipc[6:], config.control_address[6:]):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        log.info("stopped")
    return 0


def _save_snapshot(config: ServerConfig, core: BrokerCore, kind: str) -> None:
    """Save the models and their worker counts (zerobatch/snapshot.py); a failure to write
    is logged, never the end of the broker."""
    try:
        path = snapshot.save(config.run_dir, kind, config,
                             snapshot.model_table(core.registered()))
    except OSError as exc:
        log.warning("cannot save a %s snapshot in %s: %s", kind, config.run_dir, exc)
        return
    log.debug("%s snapshot saved: %s", kind, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m zerobatch.broker")
    parser.add_argument("--config", required=True, help="ServerConfig as JSON")
    args = parser.parse_args(argv)
    try:
        config = ServerConfig.from_json(args.config)
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"zerobatch broker: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(config.log_level, config.log_format, "broker")
    try:
        return serve(config, dict(os.environ))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
