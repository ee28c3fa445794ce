"""Supervision of the broker's local child processes: workers and HTTP front ends.

Spawns `python -P -m zerobatch.worker` per worker slot and `python -P -m
zerobatch.api.frontend` per front end (zerobatch.launch), notices at once when one exits (a
pidfd per child sits in the broker's poll set), restarts it with exponential backoff, and
stops everything on shutdown: SIGTERM, a grace period, then SIGKILL.
Children get PR_SET_PDEATHSIG, so they die with the broker even if it is SIGKILLed.
Every child gets the environment the broker's entry point gives (`env`): with the metrics
API on, PROMETHEUS_MULTIPROC_DIR names the run directory's metrics folder, and a child that
exits has its live gauges dropped there (zerobatch/metrics_dir.py).

A model's first worker may have been started before the supervisor existed, while the model's
archive was extracted (`start_preloaded_workers`, broker/preload.py): its slot's first spawn
writes the WorkerConfig to that process's stdin instead of starting a new one, and
`discard_preloaded` kills the ones no slot took.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time

from zerobatch import metrics_dir, ts_config
from zerobatch.broker import preload
from zerobatch.broker.gpus import GpuAssigner
from zerobatch.config import (
    DEFAULT_GRPC_PORT,
    RESTART_BACKOFF_MAX_S,
    RESTART_BACKOFF_MIN_S,
    FrontendConfig,
    GrpcConfig,
    ManagementConfig,
    MetricsConfig,
    ModelConfig,
    ServerConfig,
    WorkerConfig,
)
from zerobatch.launch import module_argv

log = logging.getLogger("zerobatch.supervisor")

#: a child up this long is considered healthy again: its next crash restarts it at once
_HEALTHY_AFTER_S = 10.0


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM this child when the broker dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_preloaded_workers(models: tuple[ModelConfig, ...], run_dir: str,
                            install_py_deps: bool, env: dict[str, str] | None = None
                            ) -> dict[str, subprocess.Popen]:
    """model key -> a worker importing torch, waiting for its configuration on stdin, for
    each model that broker.preload says to preload; env is its environment (None: ours)."""
    started = {}
    for model in models:
        if preload.wants_preload(model.path, install_py_deps):
            started[model.key] = subprocess.Popen(
                module_argv("zerobatch.worker", "--preload", preload.PRELOAD_MODULE,
                            "--config", "-", "--label", f"{model.key} {run_dir}"),
                stdin=subprocess.PIPE, preexec_fn=_die_with_parent, env=env)
    return started


def discard_preloaded(preloaded: dict[str, subprocess.Popen], metrics_folder: str = "") -> None:
    """Kill and reap the preloaded workers that no slot took (their live gauges in
    metrics_folder dropped, when there is one)."""
    for key, process in preloaded.items():
        log.info("model %s: its preloaded worker (pid %d) is not needed", key, process.pid)
        process.kill()
        process.wait()
        if metrics_folder:
            metrics_dir.mark_process_dead(process.pid, metrics_folder)
        try:
            process.stdin.close()
        except OSError:  # what a failed hand-over left unflushed
            pass
    preloaded.clear()


def management_endpoint(config: ServerConfig) -> tuple[bool, str, int]:
    """(TLS, host, port) of the management API (TorchServe's default ports: 8081, 8444)."""
    return ts_config.split_address(config.management_address, "management_address",
                                   ts_config.MANAGEMENT_PORTS)


def management_config(config: ServerConfig) -> ManagementConfig:
    """What the management API's process gets from the server's configuration."""
    tls, host, port = management_endpoint(config)
    return ManagementConfig(
        control_address=config.control_address, run_dir=config.run_dir,
        model_store=config.model_store, host=host, port=port,
        allowed_urls=config.allowed_urls, enable_model_api=config.enable_model_api,
        install_py_dep_per_model=config.install_py_dep_per_model,
        model_defaults=config.model_defaults, default_workers=config.registration_workers,
        key_file=config.key_file, token_expiration_min=config.token_expiration_min,
        certificate_file=config.certificate_file if tls else "",
        private_key_file=config.private_key_file if tls else "",
        max_request_bytes=config.max_request_bytes,
        request_read_timeout_s=config.request_read_timeout_s,
        request_min_rate_bytes_s=config.request_min_rate_bytes_s,
        max_header_bytes=config.max_header_bytes, max_connections=config.max_connections,
        log_level=config.log_level, log_format=config.log_format)


def metrics_endpoint(config: ServerConfig) -> tuple[bool, str, int]:
    """(TLS, host, port) of the metrics API (TorchServe's default ports: 8082, 8445)."""
    return ts_config.split_address(config.metrics_address, "metrics_address",
                                   ts_config.METRICS_PORTS)


def metrics_config(config: ServerConfig) -> MetricsConfig:
    """What the metrics API's process gets from the server's configuration."""
    tls, host, port = metrics_endpoint(config)
    return MetricsConfig(
        control_address=config.control_address, metrics_dir=config.metrics_dir,
        host=host, port=port,
        certificate_file=config.certificate_file if tls else "",
        private_key_file=config.private_key_file if tls else "",
        request_read_timeout_s=config.request_read_timeout_s,
        request_min_rate_bytes_s=config.request_min_rate_bytes_s,
        max_header_bytes=config.max_header_bytes, max_connections=config.max_connections,
        log_level=config.log_level, log_format=config.log_format)


def grpc_endpoint(config: ServerConfig) -> tuple[bool, str, int]:
    """(TLS, host, port) of the gRPC service (port 7070 when the address names none)."""
    return ts_config.split_address(config.grpc_address, "grpc_address",
                                   (DEFAULT_GRPC_PORT, DEFAULT_GRPC_PORT))


def grpc_config(config: ServerConfig, broker_address: str) -> GrpcConfig:
    """What the gRPC service's process gets from the server's configuration."""
    tls, host, port = grpc_endpoint(config)
    return GrpcConfig(
        broker_address=broker_address, host=host, port=port,
        max_request_bytes=config.max_request_bytes,
        max_response_bytes=config.max_response_bytes,
        max_concurrent_rpcs=config.max_connections, key_file=config.key_file,
        certificate_file=config.certificate_file if tls else "",
        private_key_file=config.private_key_file if tls else "",
        log_level=config.log_level, log_format=config.log_format)


class Child:
    """One supervised slot: a worker slot of a model, a front end, the management API, the
    metrics API or the gRPC service."""

    def __init__(self, kind: str, slot_name: str, model: ModelConfig | None = None,
                 gpu_id: int | None = None) -> None:
        self.kind = kind
        self.slot_name = slot_name
        self.model = model
        self.gpu_id = gpu_id
        self.generation = 0
        self.process: subprocess.Popen | None = None
        self.pidfd: int | None = None
        self.worker_id = ""
        self.started_s = 0.0
        self.backoff_s = RESTART_BACKOFF_MIN_S
        self.restart_at_s: float | None = None
        #: scaled down: stopped once idle, and not restarted
        self.retiring = False
        #: the worker of this generation said READY (its startup timeout no longer applies)
        self.loaded = False


class Supervisor:
    def __init__(self, config: ServerConfig, worker_address: str, frontend_address: str,
                 gpu_count: int, http_fd: int | None,
                 preloaded: dict[str, subprocess.Popen] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        #: every child's environment (None: the broker's own)
        self.env = env
        #: where the children keep their metrics, "" without the metrics API
        self.metrics_folder = config.metrics_dir if config.serves_metrics else ""
        #: model key -> its preloaded first worker, until that model's first spawn takes it
        self.preloaded = preloaded if preloaded is not None else {}
        self.worker_address = worker_address
        self.frontend_address = frontend_address
        self.http_fd = http_fd
        self.gpus = GpuAssigner(gpu_count)
        self.children: list[Child] = []
        self.stopping = False
        #: bumped whenever a child starts or is reaped, so the loop re-reads pidfds() only then
        self.changes = 0
        #: when the next restart is due (monotonic seconds), or None
        self.next_wakeup_s: float | None = None
        for model in config.models:
            if model.device_type == "gpu" and gpu_count <= 0 and not model.device_ids:
                log.warning("model %s: deviceType gpu, but no GPU is visible; its workers run "
                            "on the CPU", model.key)
            for index in range(model.workers):
                self.children.append(self._worker_slot(model, index))
        for index in range(config.frontends if http_fd is not None else 0):
            self.children.append(Child("frontend", f"frontend#{index}"))
        #: the management API's listening socket, bound by the broker; None: no such process
        self.management_fd: int | None = None
        #: the metrics API's listening socket, bound by the broker; None: no such process
        self.metrics_fd: int | None = None

    def add_management(self, fd: int) -> None:
        """Supervise the management API's process, serving on the inherited socket fd."""
        self.management_fd = fd
        self.children.append(Child("management", "management"))

    def add_grpc(self) -> None:
        """Supervise the gRPC service's process (it binds grpc_address itself)."""
        self.children.append(Child("grpc", "grpc"))

    def add_metrics(self, fd: int) -> None:
        """Supervise the metrics API's process, serving on the inherited socket fd."""
        self.metrics_fd = fd
        self.children.append(Child("metrics", "metrics"))

    def _worker_slot(self, model: ModelConfig, index: int) -> Child:
        gpu_id = (None if model.device_type == "cpu"
                  else self.gpus.next_gpu(model.key, model.device_ids))
        return Child("worker", f"{model.name}@{model.version}#{index}", model, gpu_id)

    # ------------------------------------------------------------------ scaling

    def scale(self, model: ModelConfig, workers: int) -> list[str]:
        """Start worker slots for `model` up to `workers`, or retire the newest ones down
        to it (0 for a model unregistered); the worker ids of the retired slots whose process
        runs (the broker lets each finish what it was sent, then has it stopped with
        stop_worker). New slots run `model` as given: a registered model, or one whose
        settings a scale call changed."""
        model_key = model.key
        slots = [c for c in self.children
                 if c.kind == "worker" and c.model.key == model_key and not c.retiring]
        retired = []
        if workers > len(slots):
            next_index = 1 + max((int(c.slot_name.rsplit("#", 1)[1]) for c in self.children
                                  if c.kind == "worker" and c.model.key == model_key),
                                 default=-1)
            for index in range(next_index, next_index + workers - len(slots)):
                child = self._worker_slot(model, index)
                self.children.append(child)
                self._spawn(child)
        for child in slots[workers:]:
            child.retiring = True
            child.restart_at_s = None
            if child.process is None:
                self.children.remove(child)
            else:
                retired.append(child.worker_id)
        log.info("model %s: scaled to %d worker(s), %d retiring", model_key, workers,
                 len(retired))
        self._plan()
        return retired

    def stop_worker(self, worker_id: str) -> None:
        """Stop a retired worker (SIGTERM: it says DISCONNECT and exits); its slot goes when
        it has exited."""
        for child in self.children:
            if child.kind == "worker" and child.worker_id == worker_id and child.process:
                log.info("stopping retired worker %s (pid %d)", worker_id, child.process.pid)
                try:
                    child.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    # ------------------------------------------------------------------ spawning

    def start_all(self) -> None:
        for child in self.children:
            self._spawn(child)
        discard_preloaded(self.preloaded, self.metrics_folder)
        self._plan()

    def _spawn(self, child: Child) -> None:
        child.generation += 1
        child.restart_at_s = None
        self.changes += 1
        pass_fds: tuple[int, ...] = ()
        if child.kind == "worker":
            assert child.model is not None
            child.worker_id = f"{child.slot_name}.{child.generation}"
            worker_config = WorkerConfig(worker_id=child.worker_id,
                                         broker_address=self.worker_address,
                                         model=child.model, gpu_id=child.gpu_id,
                                         log_level=self.config.log_level,
                                         log_format=self.config.log_format,
                                         metrics_config=self.config.metrics_config)
            process = self._hand_over(child.model.key, worker_config)
            if process is not None:
                self._started(child, process, "preloaded ")
                return
            argv = module_argv("zerobatch.worker", "--config", worker_config.to_json())
        elif child.kind == "management":
            argv = module_argv("zerobatch.api.management_server",
                               "--config", management_config(self.config).to_json(),
                               "--fd", str(self.management_fd))
            pass_fds = (self.management_fd,)
        elif child.kind == "grpc":
            argv = module_argv("zerobatch.api.grpc_server", "--config",
                               grpc_config(self.config, self.frontend_address).to_json())
        elif child.kind == "metrics":
            argv = module_argv("zerobatch.api.metrics_server",
                               "--config", metrics_config(self.config).to_json(),
                               "--fd", str(self.metrics_fd))
            pass_fds = (self.metrics_fd,)
        else:
            frontend_config = FrontendConfig(
                broker_address=self.frontend_address, host=self.config.host,
                port=self.config.http_port, max_request_bytes=self.config.max_request_bytes,
                request_read_timeout_s=self.config.request_read_timeout_s,
                request_min_rate_bytes_s=self.config.request_min_rate_bytes_s,
                max_header_bytes=self.config.max_header_bytes,
                max_connections=self.config.max_connections,
                certificate_file=(self.config.certificate_file
                                  if self.config.inference_https else ""),
                private_key_file=(self.config.private_key_file
                                  if self.config.inference_https else ""),
                key_file=self.config.key_file,
                log_level=self.config.log_level, log_format=self.config.log_format,
                access_log=self.config.access_log,
                zerobatch_answers=self.config.zerobatch_answers)
            argv = module_argv("zerobatch.api.frontend", "--config", frontend_config.to_json(),
                               "--fd", str(self.http_fd))
            pass_fds = (self.http_fd,)
        self._started(child, subprocess.Popen(argv, pass_fds=pass_fds,
                                              preexec_fn=_die_with_parent,
                                              stdin=subprocess.DEVNULL, env=self.env))

    def _hand_over(self, model_key: str, worker_config: WorkerConfig
                   ) -> subprocess.Popen | None:
        """The model's preloaded worker, now given its configuration; None if there is none
        or it died meanwhile."""
        process = self.preloaded.pop(model_key, None)
        if process is None:
            return None
        try:
            process.stdin.write(worker_config.to_json().encode() + b"\n")
            process.stdin.close()
        except OSError as exc:  # BrokenPipeError: it exited while torch was imported
            log.warning("model %s: its preloaded worker (pid %d) is gone (%s); starting "
                        "another", model_key, process.pid, exc)
            discard_preloaded({model_key: process})
            return None
        return process

    def _started(self, child: Child, process: subprocess.Popen, how: str = "") -> None:
        child.process = process
        child.loaded = False
        child.started_s = time.monotonic()
        try:
            child.pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            child.pidfd = None
        log.info("started %s%s %s (pid %d, gpu %s)", how, child.kind,
                 child.worker_id or child.slot_name, process.pid, child.gpu_id)

    # ------------------------------------------------------------------ watching

    def pidfds(self) -> list[int]:
        return [c.pidfd for c in self.children if c.pidfd is not None]

    def reap(self) -> list[str]:
        """Collect exited children, schedule their restarts; return the exited worker ids."""
        exited = []
        now_s = time.monotonic()
        for child in self.children:
            process = child.process
            if process is None or process.poll() is None:
                continue
            code = process.returncode
            self._close_pidfd(child)
            child.process = None
            if self.metrics_folder:  # its live gauges go; its counters stay
                metrics_dir.mark_process_dead(process.pid, self.metrics_folder)
            if child.kind == "worker":
                exited.append(child.worker_id)
            self.changes += 1
            if self.stopping:
                continue
            if child.retiring:
                log.info("retired worker %s exited with code %s", child.worker_id, code)
                continue
            if now_s - child.started_s > _HEALTHY_AFTER_S:
                child.backoff_s = RESTART_BACKOFF_MIN_S
            child.restart_at_s = now_s + child.backoff_s
            log.warning("%s %s exited with code %s; restarting in %.1f s", child.kind,
                        child.worker_id or child.slot_name, code, child.backoff_s)
            child.backoff_s = min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)
        self.children = [c for c in self.children if not (c.retiring and c.process is None)]
        self._plan()
        return exited

    def restart_due(self) -> None:
        now_s = time.monotonic()
        for child in self.children:
            if child.restart_at_s is not None and child.restart_at_s <= now_s and not self.stopping:
                self._spawn(child)
        self._plan()

    def due(self, now_s: float) -> bool:
        """Whether the loop must reap or restart now even though no pidfd fired."""
        return self.next_wakeup_s is not None and self.next_wakeup_s <= now_s

    def _plan(self) -> None:
        """Set next_wakeup_s: the next restart, or a reap tick where pidfds are missing."""
        times = [c.restart_at_s for c in self.children if c.restart_at_s is not None]
        if any(c.process is not None and c.pidfd is None for c in self.children):
            times.append(time.monotonic() + 0.1)
        self.next_wakeup_s = min(times) if times else None

    def overdue_loads(self, now_s: float, is_ready) -> list[Child]:
        """Worker processes that have not said READY (`is_ready(worker_id)`) within their
        model's startup_timeout_s since they started: the broker kills them, and they are
        restarted with backoff (TorchServe's startup timeout)."""
        overdue = []
        for child in self.children:
            if child.kind != "worker" or child.process is None or child.loaded \
                    or child.retiring:
                continue
            if is_ready(child.worker_id):
                child.loaded = True
            elif now_s - child.started_s > child.model.startup_timeout_s:
                overdue.append(child)
        return overdue

    def kill_worker(self, worker_id: str) -> None:
        """The broker declared this worker lost (silent or stuck): make sure it is gone."""
        for child in self.children:
            if child.kind == "worker" and child.worker_id == worker_id and child.process:
                log.warning("killing lost worker %s (pid %d)", worker_id, child.process.pid)
                child.process.kill()

    # ------------------------------------------------------------------ stopping

    def stop_all(self, grace_s: float = 5.0) -> None:
        self.stopping = True
        running = [c for c in self.children if c.process is not None]
        for child in running:
            try:
                child.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s %s ignored SIGTERM; killing it", child.kind, child.slot_name)
                child.process.kill()
                child.process.wait()
            self._close_pidfd(child)
            child.process = None

    def _close_pidfd(self, child: Child) -> None:
        if child.pidfd is not None:
            os.close(child.pidfd)
            child.pidfd = None
