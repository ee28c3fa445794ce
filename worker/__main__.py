"""Entry point of a worker process: `python -m zerobatch.worker --config '<WorkerConfig JSON>'`.

Or `python -m zerobatch.worker --preload torch --config -`: import torch first, then read the
configuration from stdin, one line. This is how the broker starts a model's first worker
while it extracts the model's archive (broker/preload.py). EOF instead of a configuration
exits 0. A module that is not installed is skipped: the handler that needs it says so when
the model loads (for torch, in one line: worker.handler_loader.torch_missing_error).

The only module of the worker that reads argv and the environment (PROMETHEUS_MULTIPROC_DIR
turns the export of metrics on: worker.metrics_export) and sets up logging and signals. SIGTERM (or
SIGINT) stops the worker cleanly: it finishes the batch in hand, says DISCONNECT and exits 0.

Exit codes, for the supervisor:
  0  stopped on request (or not needed: EOF on stdin with --config -);
  2  bad command line or configuration;
  3  the model could not be loaded (the log says why);
  4  the broker was lost (silent for HEARTBEAT_LIVENESS intervals, or the parent exited);
  5  the broker refused this worker (a remote worker whose model files differ from the
     broker's, or a model it does not serve: the log says why).

A remote worker (`zerobatch worker`: WorkerConfig.remote, docs/remote-workers.md) computes
its model directory's digest once, before the model loads, and sends it in READY.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import time

from zerobatch import logs, model_files
from zerobatch.config import WorkerConfig
from zerobatch.errors import ConfigError
from zerobatch.gc_policy import freeze_startup_objects
from zerobatch.worker.loop import STOPPED, WorkerLoop, report_load_failure
from zerobatch.worker.metrics_export import MULTIPROC_ENV
from zerobatch.worker.model_dir import add_python_path
from zerobatch.worker.service import Service

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_LOAD_FAILED = 3
EXIT_BROKER_LOST = 4
EXIT_REFUSED = 5

#: After the broker is lost, how long a handler still running may delay the exit.
STUCK_EXIT_GRACE_S = 5.0

log = logging.getLogger("zerobatch.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zerobatch.worker",
                                     description="Run one zerobatch worker process.")
    parser.add_argument("--config", required=True,
                        help="the WorkerConfig, as JSON; - reads it from stdin (one line), "
                             "after --preload")
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (the broker starts a model's first worker "
                             "this way while it extracts the archive: broker/preload.py)")
    parser.add_argument("--label", default="", help="ignored; names the server in ps")
    args = parser.parse_args(argv)
    text = args.config
    if text == "-":
        preload(args.preload)
        text = sys.stdin.readline()
        if not text.strip():  # EOF: the broker no longer needs this worker
            return EXIT_OK
    try:
        config = WorkerConfig.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        print(f"worker: invalid --config: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(config.log_level, config.log_format, "worker")

    stop_event = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    add_python_path(config.model.python_path)  # the model's own dependencies come first
    load_start_ns = time.monotonic_ns()
    digest = None
    try:
        if config.remote:  # before the handler can write into the directory
            digest = model_files.model_digest(config.model.path)
            log.info("model %s: digest %s", config.model.key, digest)
        # metrics go to prometheus_client when its multiprocess directory is set: the
        # supervisor sets it when the metrics API runs (worker.metrics_export)
        service = Service.load(config.model, config.gpu_id,
                               export_metrics=bool(os.environ.get(MULTIPROC_ENV)),
                               metrics_config=config.metrics_config)
    except ConfigError as exc:
        log.error("cannot load model %s from %s: %s", config.model.name, config.model.path, exc,
                  exc_info=exc.__cause__ is not None)
        report_load_failure(config, str(exc))
        return EXIT_LOAD_FAILED
    if service.exporter is not None:  # TorchServe's WorkerLoadTime, once
        service.exporter.set_load_time(config.worker_id,
                                       (time.monotonic_ns() - load_start_ns) / 1e6)
    # before READY: the model stays out of every later collection (gc_policy)
    freeze_startup_objects()
    loop = WorkerLoop(config, service=service, digest=digest)
    loop.start()
    threading.Thread(target=_exit_if_stuck, args=(loop,), name="exit-watchdog",
                     daemon=True).start()
    reason = loop.run(stop_event)
    if reason == STOPPED:
        return EXIT_REFUSED if loop.dismissed_reason else EXIT_OK
    log.error("exiting: %s", loop.heartbeat.lost_reason)
    return EXIT_BROKER_LOST


def preload(modules: list[str]) -> None:
    """Import these modules now. One that is not installed is skipped quietly, one that fails
    otherwise is said once; either way the handler that needs it reports it when it loads."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                _say_preload_failed(name, exc)
        except Exception as exc:  # the handler's own import will fail with the full story
            _say_preload_failed(name, exc)


def _say_preload_failed(name: str, exc: Exception) -> None:
    print(f"worker: --preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _exit_if_stuck(loop: WorkerLoop) -> None:
    """Once the broker is lost, do not let a handler that never returns keep us alive."""
    loop.heartbeat.lost.wait()
    time.sleep(STUCK_EXIT_GRACE_S)
    log.error("the handler is still running %.0f s after the broker was lost; exiting",
              STUCK_EXIT_GRACE_S)
    logging.shutdown()
    os._exit(EXIT_BROKER_LOST)


if __name__ == "__main__":
    sys.exit(main())
