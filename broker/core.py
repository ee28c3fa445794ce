"""The broker's logic, with no sockets: models, queues, workers, in-flight batches, liveness.

`BrokerCore` is driven by three calls: `on_front(frames, now_ns)` for a message from a client
or front end, `on_back(frames, now_ns)` for a message from a worker, and `on_tick(now_ns)`.
Each appends what must be sent to `out_front` / `out_back` (lists of frame lists, identity
first); the socket loop (broker/loop.py) sends them and clears the lists. The clock is always
passed in, so every timing rule is a deterministic unit test. (One figure reads a clock of
its own, perf_counter_ns: the broker's time on the last batch, `worker_thread_ns`, which the
metrics API reports as TorchServe's WorkerThreadTime; no decision depends on it.)

Request bodies and metas are never decoded here: they are stored as received and handed to
the worker as they are. Only the rid and the route of a request head are read (and the
route's decoding is cached, since a client usually repeats the same model and timeout). The
one exception is a model with sequence batching (broker/sequences.py: stateful handlers),
whose requests' metas are read for the sequence headers (and, with zerobatch's own answers
on, whose answers get the sequence id); every other model takes the path it would take
without that feature.

The batching policy is not here: the aggregator twins form batches, and each model's
`BatchingPolicy` (broker/batching_policy.py) says when a free worker waits, what goes ahead or
together, and what is refused at arrival. This module routes, tracks, and acts on their
decisions; every frame it sends is built by zerobatch.protocol.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import deque
from dataclasses import replace
from time import perf_counter_ns
from typing import Any, Callable

from zerobatch import protocol as p
from zerobatch.broker.autoscale import Autoscaler
from zerobatch.broker.batching_policy import BatchingPolicy
from zerobatch.broker.model_stats import QUEUE_BUCKETS_NS, ModelStats, answer
from zerobatch.broker.remote_workers import refusal
from zerobatch.broker.sequences import (
    SEQUENCE_END_HEADER,
    SEQUENCE_ID_HEADER,
    SEQUENCE_START_HEADER,
    SequenceRefused,
    Sequences,
    refusal_error,
)
from zerobatch.config import ModelConfig
from zerobatch.errors import (
    BadRequest,
    Conflict,
    DeadlineExceeded,
    DeadlineUnreachable,
    Forbidden,
    ModelLoadFailed,
    ModelNotFound,
    ModelVersionNotFound,
    ProtocolError,
    QueueFull,
    RequestTooLarge,
    ServingError,
    ShuttingDown,
    WorkerLost,
    client_safe,
)

log = logging.getLogger("zerobatch.broker")

_NS_PER_MS = 1_000_000
_ROUTE_CACHE_MAX = 4096
#: the most workers a `scale` call may ask for one model
MAX_WORKERS_PER_MODEL = 64
#: Control operations any client may call on the client endpoint: liveness (`ping`, the
#: verdict alone, as TorchServe's /ping) and readiness (`ready`: model names, no paths or
#: errors), nothing more. The others (stop, describe, the management calls) need the local
#: control socket, a client that authenticated with CURVE, or, with token authorization on,
#: the management key as the call's "token" (the same key the management API asks for).
PUBLIC_CONTROL_OPS = frozenset({"ping", "ready", "models"})
#: Control operations that change nothing: an accepted one is logged at DEBUG (`zerobatch
#: start` polls `describe` while the models load, the metrics API asks for `metrics` at each
#: scrape); the others at INFO.
READ_ONLY_CONTROL_OPS = frozenset({"describe", "metrics"})
#: Refused control calls logged one by one per window; beyond, one line counts the rest.
_REFUSAL_LOG_LINES = 20
_REFUSAL_LOG_WINDOW_NS = 10_000_000_000


def _unknown_peer(_frames: list) -> tuple[str, str | None]:
    return "unknown", None


class ModelQueue:
    """One model version: its aggregator and batching policy, waiting payloads, and idle
    workers (LRU first)."""

    __slots__ = ("config", "aggregator", "policy", "pending", "idle", "workers", "batch_sizes",
                 "requests_total", "deadline_ns", "load_error", "batch_messages", "max_workers",
                 "target_workers", "autoscaler", "stats", "sequences")

    def __init__(self, config: ModelConfig, aggregator: Any,
                 autoscaler: Autoscaler | None = None, strict_sequences: bool = False) -> None:
        self.config = config
        self.aggregator = aggregator
        self.policy = BatchingPolicy(aggregator, config.key,
                                     refuses_late=config.admission == "deadline")
        #: request id -> (client identity, rid head, meta, body frame, arrival ns)
        self.pending: dict[int, tuple] = {}
        self.idle: deque[WorkerRecord] = deque()
        self.workers: dict[bytes, WorkerRecord] = {}
        #: batch size -> batches of that size run (the handler calls), and the messages that
        #: carried them (fewer when batches were grouped)
        self.batch_sizes: dict[int, int] = {}
        self.batch_messages = 0
        self.requests_total = 0
        self.deadline_ns = config.deadline_ms * _NS_PER_MS
        #: why the last worker failed to load the model; cleared when a worker says READY
        self.load_error: str | None = None
        #: TorchServe's maxWorkers, as the last `scale` set it (config.workers is minWorkers)
        self.max_workers = config.most_workers
        #: the worker slots last asked of the supervisor (at start, by `scale`, by autoscaling)
        self.target_workers = config.workers
        #: moves target_workers between config.workers and max_workers with the load
        self.autoscaler = autoscaler
        #: the counters the `metrics` control call reports (broker/model_stats.py)
        self.stats = ModelStats()
        #: with sequence batching: which worker and which request next for each sequence
        #: (broker/sequences.py; strict: zerobatch's rules, not TorchServe's); None for every
        #: other model
        self.sequences = None if not config.sequence_batching else Sequences(
            batch_size=config.batch_size,
            max_sequences=max(config.max_sequences, config.batch_size * config.most_workers),
            max_queued=config.max_sequence_queue,
            max_idle_ns=config.sequence_max_idle_ms * _NS_PER_MS,
            timeout_ns=config.sequence_timeout_ms * _NS_PER_MS, strict=strict_sequences)

    def drain(self) -> list[int]:
        """Take every waiting request id out (the model stops serving them)."""
        drained = self.aggregator.drain()
        if self.sequences is not None:
            drained += self.sequences.drain()
        return drained


class WorkerRecord:
    """A connected worker: where it is, what it serves, when it was last heard, what it runs,
    and the full batch sent ahead to it (see `BrokerCore._prefetch`)."""

    __slots__ = ("identity", "worker_id", "model", "gpu_id", "pid", "expiry_ns", "batch",
                 "next_batch", "retiring")

    def __init__(self, identity: bytes, worker_id: str, model: ModelQueue,
                 gpu_id: int | None, pid: int, expiry_ns: int) -> None:
        self.identity = identity
        self.worker_id = worker_id
        self.model = model
        self.gpu_id = gpu_id
        self.pid = pid
        self.expiry_ns = expiry_ns
        self.batch: InFlightBatch | None = None
        #: a full batch sent while `batch` runs; it starts when `batch` is answered
        self.next_batch: InFlightBatch | None = None
        #: being scaled down: gets no new batch, and is stopped once its batches are answered
        self.retiring = False


class InFlightBatch:
    """A batch message a worker is running (one batch, or several grouped): whom to answer,
    the size of each batch in it, since when it runs, and what sending it cost the broker."""

    __slots__ = ("batch_id", "worker", "requests", "sizes", "dispatched_ns", "send_ns")

    def __init__(self, batch_id: int, worker: WorkerRecord, requests: list, sizes: list[int],
                 dispatched_ns: int) -> None:
        self.batch_id = batch_id
        self.worker = worker
        #: [(client identity, rid head), ...] in the order the worker answers
        self.requests = requests
        #: the size of each batch in the message, in order (one entry unless grouped)
        self.sizes = sizes
        self.dispatched_ns = dispatched_ns
        #: the broker's own time taking the requests from the queue and encoding the message
        self.send_ns = 0


class BrokerCore:
    """Routing, batching and liveness decisions of the broker; see the module docstring."""

    def __init__(self, aggregator_class: Callable[..., Any], *,
                 max_request_bytes: int = p.DEFAULT_MAX_BODY_BYTES,
                 heartbeat_interval_ms: int = p.HEARTBEAT_INTERVAL_MS,
                 heartbeat_liveness: int = p.HEARTBEAT_LIVENESS,
                 scale_up_after_ns: int = 0, scale_down_after_ns: int = 0,
                 cpu_limit: int | None = None, gpu_count: int = 0,
                 zerobatch_answers: bool = False) -> None:
        self._aggregator_class = aggregator_class
        #: zerobatch's own answers (--zerobatch-answers) where they differ from TorchServe's:
        #: here, sequence batching's stricter rules (broker/sequences.py)
        self.zerobatch_answers = zerobatch_answers
        #: autoscaling delays (0: off), and the cap for models whose workers run on the CPU
        self.scale_up_after_ns = scale_up_after_ns
        self.scale_down_after_ns = scale_down_after_ns
        self.cpu_limit = cpu_limit
        self.gpu_count = gpu_count
        self.max_request_bytes = max_request_bytes
        self.heartbeat_interval_ns = heartbeat_interval_ms * _NS_PER_MS
        self.worker_ttl_ns = heartbeat_liveness * self.heartbeat_interval_ns
        #: model name -> {version -> ModelQueue}; the first registered version is the default
        self.models: dict[str, dict[str, ModelQueue]] = {}
        self.default_version: dict[str, str] = {}
        self.workers: dict[bytes, WorkerRecord] = {}
        #: model key -> its directory's digest, for remote workers (broker/remote_workers.py);
        #: filled at start when the worker endpoint takes remote workers
        self.model_digests: dict[str, str] = {}
        self.batches: dict[int, InFlightBatch] = {}
        #: the broker's own time on the last batch answered: sending it, then routing its
        #: replies (TorchServe's WorkerThreadTime: its worker thread's time outside the
        #: backend); None before the first
        self.worker_thread_ns: int | None = None
        self.out_front: list[list] = []
        self.out_back: list[list] = []
        #: replies on the local control socket
        self.out_control: list[list] = []
        #: who sent a message: (address, CURVE key or None); the socket loop sets the real one
        self.peer_of: Callable[[list], tuple[str, str | None]] = _unknown_peer
        #: with token authorization on: whether a control call's "token" is the management
        #: key (zerobatch/token_keys.py), which authorizes it on the client endpoint too
        self.management_key_check: Callable[[str], bool] | None = None
        self._refusal_window_ns = 0
        self._refusals_logged = 0
        self._refusals_unlogged = 0
        #: worker ids declared lost (silent, timed out, disconnected): the supervisor reaps them
        self.lost_worker_ids: list[str] = []
        #: (model, worker count) asked by `scale`, `register` and `unregister` control calls:
        #: the socket loop has the supervisor add or retire worker slots, and calls `retire`
        #: for the ones retired
        self.scale_requests: list[tuple[ModelConfig, int]] = []
        #: set when the registry or a worker count changed: the loop saves a snapshot
        self.registry_changed = False
        #: retiring workers with nothing in flight: the supervisor stops them (SIGTERM)
        self.retired_worker_ids: list[str] = []
        self.stop_requested = False
        self.shutting_down = False
        self._next_request_id = 1
        self._next_batch_id = 1
        self._next_heartbeat_ns = 0
        self._route_cache: dict[bytes, tuple[str, str | None, int]] = {}
        self.control_handlers: dict[str, Callable[[dict], Any]] = {
            "ping": lambda _args: {"status": self.health()},
            "ready": lambda _args: self.readiness(),
            "models": lambda _args: self.model_list(),
            "describe": lambda _args: self.describe(),
            "metrics": lambda _args: self.metrics(),
            "stop": self._control_stop,
            "scale": self._control_scale,
            "register": self._control_register,
            "unregister": self._control_unregister,
            "set_default": self._control_set_default,
        }

    # ------------------------------------------------------------------ registry

    def add_model(self, config: ModelConfig) -> ModelQueue:
        aggregator = self._aggregator_class(
            config.batch_size, config.max_batch_delay_ms * _NS_PER_MS, config.max_queue,
            config.batch_policy == "adaptive")
        autoscaler = None
        if self.scale_up_after_ns:
            on_cpu = config.device_type == "cpu" or (self.gpu_count <= 0
                                                     and not config.device_ids)
            autoscaler = Autoscaler(self.scale_up_after_ns, self.scale_down_after_ns,
                                    self.cpu_limit if on_cpu else None)
        queue = ModelQueue(config, aggregator, autoscaler,
                           strict_sequences=self.zerobatch_answers)
        versions = self.models.setdefault(config.name, {})
        versions[config.version] = queue
        self.default_version.setdefault(config.name, config.version)
        return queue

    def find_model(self, name: str, version: str | None) -> ModelQueue:
        versions = self.models.get(name)
        if versions is None:
            raise ModelNotFound(f"Model not found: {name}")
        queue = versions.get(version or self.default_version[name])
        if queue is None:
            raise ModelVersionNotFound(f"Model version not found: {name}/{version}")
        return queue

    # ------------------------------------------------------------------ front side

    def on_front(self, frames: list, now_ns: int) -> None:
        """A message from a client or front end: [identity, VERSION, command, ...]."""
        identity = _as_bytes(frames[0])
        try:
            command = p.check_envelope(frames[1:], 4)
            if command == p.REQUEST:
                self._on_requests(identity, frames, now_ns)
                return
            rid = p.rid_head(_as_bytes(frames[3]))
        except ProtocolError as exc:
            log.warning("dropped a malformed client message: %s", exc)
            return
        try:
            if command == p.CONTROL:
                self._on_control(identity, rid, frames, now_ns, self.out_front, local=False)
            else:
                raise ProtocolError(f"unknown client command {command!r}")
        except ServingError as exc:
            if isinstance(exc, ProtocolError):
                log.warning("bad client message: %s", exc)
            self.out_front.append([identity] + p.encode_error(rid, *exc.to_wire()))

    def on_control(self, frames: list, now_ns: int) -> None:
        """A message on the local control socket (in the private run directory, so from this
        user): [identity, VERSION, CONTROL, rid, control]; every operation is allowed."""
        identity = _as_bytes(frames[0])
        try:
            command = p.check_envelope(frames[1:], 4)
            rid = p.rid_head(_as_bytes(frames[3]))
        except ProtocolError as exc:
            log.warning("dropped a malformed control message: %s", exc)
            return
        try:
            if command != p.CONTROL:
                raise ProtocolError("the control socket takes CONTROL messages only")
            self._on_control(identity, rid, frames, now_ns, self.out_control, local=True)
        except ServingError as exc:
            self.out_control.append([identity] + p.encode_error(rid, *exc.to_wire()))

    def _on_requests(self, identity: bytes, frames: list, now_ns: int) -> None:
        """A REQUEST message: one or more (head, body) pairs, each answered on its own (an
        error for one request never touches the others). A request whose head does not even
        hold a readable rid is dropped: there is nobody to answer."""
        count, extra = divmod(len(frames) - 3, 2)
        if extra or count > p.MAX_BATCH_ITEMS:
            error = ProtocolError("REQUEST must be [VERSION, REQUEST] and 1 to "
                                  f"{p.MAX_BATCH_ITEMS} (head, body) pairs")
            rid = p.split_request_head(_as_bytes(frames[3]))[0]  # else: nobody to answer
            log.warning("bad client message: %s", error)
            self.out_front.append([identity] + p.encode_error(rid, *error.to_wire()))
            return
        for base in range(3, len(frames), 2):
            try:
                rid, route, meta = p.split_request_head(_as_bytes(frames[base]))
            except ProtocolError as exc:
                log.warning("dropped a client request: %s", exc)
                continue
            try:
                self._on_request(identity, rid, route, meta, frames[base + 1], now_ns)
            except ServingError as exc:
                if isinstance(exc, ProtocolError):
                    log.warning("bad client request: %s", exc)
                self.out_front.append([identity] + p.encode_error(rid, *exc.to_wire()))

    def _on_request(self, identity: bytes, rid: bytes, route_bytes: bytes, meta: bytes,
                    body: Any, now_ns: int) -> None:
        """One request; rid is its rid head (protocol.rid_head), which every answer starts with."""
        if self.shutting_down:
            raise ShuttingDown("the server is stopping")
        route = self._route_cache.get(route_bytes)
        if route is None:
            route = p.parse_route(route_bytes)
            if len(self._route_cache) >= _ROUTE_CACHE_MAX:
                self._route_cache.clear()
            self._route_cache[route_bytes] = route
        model_name, version, timeout_ms = route
        queue = self.find_model(model_name, version)
        if queue.load_error is not None and not queue.workers:
            raise ModelLoadFailed(queue.load_error)
        body_len = len(body.buffer) if hasattr(body, "buffer") else len(body)
        if body_len > self.max_request_bytes:
            raise RequestTooLarge(f"request body of {body_len} bytes exceeds the limit of "
                                  f"{self.max_request_bytes} bytes")
        timeout_ns = timeout_ms * _NS_PER_MS
        if not timeout_ns or timeout_ns > queue.deadline_ns:
            timeout_ns = queue.deadline_ns
        deadline_ns = now_ns + timeout_ns
        if queue.sequences is not None:
            self._on_sequence_request(queue, identity, rid, meta, body, now_ns, deadline_ns)
            return
        policy = queue.policy
        late_ns = policy.lateness_ns(now_ns, deadline_ns, len(queue.workers), len(queue.idle),
                                     self._sent_ahead(queue)) if policy.refuses_late else 0
        if late_ns:
            policy.refusals.add(DeadlineUnreachable.code, now_ns)
            # Until the queue has drained by the excess, a request with this route would be
            # refused too: the client may refuse those itself meanwhile (protocol: error_info).
            raise DeadlineUnreachable(
                f"Model {queue.config.name} cannot answer before this request's deadline "
                f"({timeout_ns // _NS_PER_MS} ms): {len(queue.aggregator)} requests wait ahead "
                "of it, behind the batches its workers run; retry later or with a longer "
                "timeout",
                retry_after_ms=min(-(-late_ns // _NS_PER_MS), timeout_ns // _NS_PER_MS))
        request_id = self._next_request_id
        self._next_request_id = request_id + 1
        if not queue.aggregator.push(request_id, now_ns, deadline_ns):
            policy.refusals.add(QueueFull.code, now_ns)
            raise QueueFull(f"Model {queue.config.name} has {queue.config.max_queue} requests "
                            "waiting, its queue is full; retry later")
        queue.pending[request_id] = (identity, rid, meta, body, now_ns)
        queue.requests_total += 1
        policy.arrived()
        self._schedule(queue, now_ns)

    @staticmethod
    def _sent_ahead(queue: ModelQueue) -> bool:
        """Whether a batch waits in one of the model's workers behind its running one."""
        for worker in queue.workers.values():
            if worker.next_batch is not None:
                return True
        return False

    def _on_control(self, identity: bytes, rid: bytes, frames: list, now_ns: int,
                    out: list, local: bool) -> None:
        """Run a control operation and answer on `out`. Anything beyond PUBLIC_CONTROL_OPS
        needs the local control socket or a CURVE-authenticated client; each such call is
        logged with its peer, accepted or refused."""
        if len(frames) != 5:
            raise ProtocolError("CONTROL must be [VERSION, CONTROL, rid, control]")
        control = p.parse_control(_as_bytes(frames[4]))
        op = control["op"]
        handler = self.control_handlers.get(op)
        if handler is None:
            raise ProtocolError(f"unknown control op {op!r}; known: "
                                f"{', '.join(sorted(self.control_handlers))}")
        if op not in PUBLIC_CONTROL_OPS:
            address, key = self.peer_of(frames)
            token = control.pop("token", None)
            if not (local or key) and isinstance(token, str) \
                    and self.management_key_check is not None \
                    and self.management_key_check(token):
                key = "(management key)"
            if not (local or key):
                self._log_refused_control(op, address, now_ns)
                raise Forbidden(f"control operation {op!r} is not accepted from an "
                                "unauthenticated client on the client endpoint; use the "
                                "server's local control socket (RUN_DIR/control.sock), CURVE "
                                "keys (zerobatch keys), or the management key of token "
                                "authorization as the call's \"token\"")
            log.log(logging.DEBUG if op in READ_ONLY_CONTROL_OPS else logging.INFO,
                    "control %s accepted from %s", op,
                    f"the local control socket (peer {address})" if local
                    else f"client {key} at {address}" if key.startswith("(")
                    else f"CURVE client {key} at {address}")
        out.append(p.encode_control_reply(identity, rid, handler(control)))

    def _log_refused_control(self, op: str, address: str, now_ns: int) -> None:
        """Log a refused control call with its peer: each one, up to _REFUSAL_LOG_LINES per
        window, then one line per window that counts the rest (a flood of refused calls
        cannot flood the log)."""
        if now_ns - self._refusal_window_ns >= _REFUSAL_LOG_WINDOW_NS:
            if self._refusals_unlogged:
                log.warning("%d more control calls refused from unauthenticated clients in "
                            "the last %d s", self._refusals_unlogged,
                            _REFUSAL_LOG_WINDOW_NS // 1_000_000_000)
            self._refusal_window_ns = now_ns
            self._refusals_logged = self._refusals_unlogged = 0
        if self._refusals_logged < _REFUSAL_LOG_LINES:
            self._refusals_logged += 1
            log.warning("control %s refused: client at %s is not authenticated (the client "
                        "endpoint accepts control calls only from CURVE clients)", op, address)
        else:
            self._refusals_unlogged += 1

    def _control_scale(self, args: dict) -> dict:
        """{"op": "scale", "model": name, "version": v or absent, "workers": n}: the socket
        loop has the supervisor start workers up to n, or retire the newest down to n (each
        finishes what it was sent first, so no request is lost)."""
        model, version, workers = args.get("model"), args.get("version"), args.get("workers")
        max_workers = args.get("max_workers", workers)
        if not isinstance(model, str) or (version is not None and not isinstance(version, str)):
            raise ProtocolError('scale needs "model" (and optionally "version") as strings')
        for name, value in (("workers", workers), ("max_workers", max_workers)):
            if (not isinstance(value, int) or isinstance(value, bool)
                    or not 0 <= value <= MAX_WORKERS_PER_MODEL):
                raise BadRequest(f'scale needs "{name}" as an integer from 0 to '
                                 f"{MAX_WORKERS_PER_MODEL}, got {value!r}")
        if max_workers < workers:
            raise BadRequest("max_workers cannot be less than workers")
        queue = self.find_model(model, version)
        queue.config = replace(queue.config, workers=workers, max_workers=max_workers)
        queue.max_workers = max_workers
        queue.target_workers = workers
        self.scale_requests.append((queue.config, workers))
        self.registry_changed = True
        return {"status": f"Processing worker updates: model {queue.config.key} to "
                          f"{workers} worker(s)"}

    def _control_register(self, args: dict) -> dict:
        """{"op": "register", "model": {ModelConfig fields}}: serve a model version that is
        ready for its workers (a directory: the management API extracted the archive), with
        `workers` workers started now and up to `max_workers` under load. The socket loop
        has the supervisor start them; the caller watches `describe` for them to say READY."""
        fields = args.get("model")
        if not isinstance(fields, dict):
            raise ProtocolError('register needs "model" as an object of ModelConfig fields')
        try:
            config = ModelConfig(**fields)
        except TypeError as exc:
            raise BadRequest(f"register: {exc}") from None
        if config.most_workers > MAX_WORKERS_PER_MODEL:
            raise BadRequest(f"register: at most {MAX_WORKERS_PER_MODEL} workers a model")
        if config.version in self.models.get(config.name, {}):
            raise Conflict(f"Model version {config.version} is already registered for model "
                           f"{config.name}")
        self.add_model(config)
        if config.workers:
            self.scale_requests.append((config, config.workers))
        self.registry_changed = True
        log.info("model %s registered (url %s), %d worker(s)", config.key, config.url or "-",
                 config.workers)
        return {"status": f"Model {config.key} registered"}

    def _control_unregister(self, args: dict) -> dict:
        """{"op": "unregister", "model": name, "version": v or absent (the default)}: new
        requests get 404 at once, waiting ones are answered 503, the workers finish what
        they run and stop. The default version goes last (TorchServe's rule)."""
        name, version = args.get("model"), args.get("version")
        if not isinstance(name, str) or (version is not None and not isinstance(version, str)):
            raise ProtocolError('unregister needs "model" (and optionally "version") as strings')
        queue = self.find_model(name, version)
        versions = self.models[name]
        version = queue.config.version
        if version == self.default_version[name] and len(versions) > 1:
            raise BadRequest(f"Cannot remove default version for model {name}")
        del versions[version]
        if not versions:
            del self.models[name]
            del self.default_version[name]
        error = ShuttingDown(f"Model {name} version {version} was unregistered")
        for request_id in queue.drain():
            identity, rid, _meta, _body, _arrived_ns = queue.pending.pop(request_id)
            self.out_front.append([identity] + p.encode_error(rid, *error.to_wire()))
        queue.idle.clear()
        for worker in queue.workers.values():
            worker.retiring = True
        self.scale_requests.append((queue.config, 0))
        self.registry_changed = True
        log.info("model %s unregistered", queue.config.key)
        return {"status": f'Model "{name}" unregistered', "url": queue.config.url}

    def _control_set_default(self, args: dict) -> dict:
        """{"op": "set_default", "model": name, "version": v}: requests that name no version
        go to v from now on."""
        name, version = args.get("model"), args.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            raise ProtocolError('set_default needs "model" and "version" as strings')
        if name not in self.models:
            raise ModelNotFound(f"Model not found: {name}")
        if version not in self.models[name]:
            raise ModelNotFound(f"Model version {version} does not exist for model {name}")
        self.default_version[name] = version
        self.registry_changed = True
        return {"status": f'Default version successfully updated for model "{name}" to '
                          f'"{version}"'}

    def retire(self, worker_id: str) -> bool:
        """Give a worker no new batch, and stop it (retired_worker_ids) once what it was sent
        is answered; False when no such worker is connected."""
        worker = self.workers.get(worker_id.encode())
        if worker is None:
            return False
        worker.retiring = True
        try:
            worker.model.idle.remove(worker)
        except ValueError:
            pass
        if worker.batch is None and worker.next_batch is None:
            self.retired_worker_ids.append(worker_id)
        return True

    def _control_stop(self, _args: dict) -> dict:
        self.stop_requested = True
        return {"status": "stopping"}

    # ------------------------------------------------------------------ batching

    def _schedule(self, queue: ModelQueue, now_ns: int) -> None:
        """Answer expired requests and hand batches to idle workers, as the aggregator and the
        policy decide; then send full batches ahead to busy workers."""
        if queue.sequences is not None:
            self._schedule_sequences(queue, now_ns)
            return
        aggregator = queue.aggregator
        policy = queue.policy
        while True:
            expired, batch = aggregator.poll(now_ns, policy.worker_free(len(queue.idle), now_ns))
            if expired:
                self._expire(queue, expired, now_ns)
            if not batch:
                break
            worker = queue.idle.popleft()
            worker.batch = self._dispatch(queue, worker, self._group(queue, batch, now_ns),
                                          now_ns)
        if not queue.idle and policy.may_send_ahead(now_ns):
            self._send_ahead(queue, now_ns)

    def _send_ahead(self, queue: ModelQueue, now_ns: int) -> None:
        """Send a full batch (or a group of them) to each busy worker that has none queued, so
        that it starts the moment its running batch ends instead of a broker round trip later
        (the worker runs batches one at a time; the next one waits in its socket)."""
        aggregator = queue.aggregator
        policy = queue.policy
        for worker in queue.workers.values():
            if worker.batch is None or worker.next_batch is not None or worker.retiring:
                continue
            if not policy.may_send_ahead(now_ns):
                return
            expired, batch = aggregator.poll(now_ns, True)  # rule 1: a full batch
            if expired:
                self._expire(queue, expired, now_ns)
            if batch:
                worker.next_batch = self._dispatch(queue, worker,
                                                   self._group(queue, batch, now_ns), now_ns)

    def _group(self, queue: ModelQueue, first: list[int], now_ns: int) -> list[list[int]]:
        """`first`, and the full batches the policy lets join it in one message."""
        batches = [first]
        aggregator = queue.aggregator
        policy = queue.policy
        while policy.may_grow_group(now_ns, len(first), len(batches)):
            expired, batch = aggregator.poll(now_ns, True)  # rule 1: a full batch
            if expired:
                self._expire(queue, expired, now_ns)
            if not batch:
                break
            batches.append(batch)
        return batches

    def _dispatch(self, queue: ModelQueue, worker: WorkerRecord, batches: list[list[int]],
                  now_ns: int) -> InFlightBatch:
        """Send these batches to the worker in one message: BATCH, or BATCHES for several."""
        started_ns = perf_counter_ns()
        batch_id = self._next_batch_id
        self._next_batch_id = batch_id + 1
        sizes = [len(batch) for batch in batches]
        items = []
        requests = []
        pending = queue.pending
        waits = queue.stats.queue_counts  # each request's queue time, for `metrics`
        bounds = QUEUE_BUCKETS_NS
        waited_ns = 0
        for batch in batches:
            for request_id in batch:
                identity, rid, meta, body, arrived_ns = pending.pop(request_id)
                items.append(meta)
                items.append(body)
                requests.append((identity, rid))
                wait_ns = now_ns - arrived_ns
                waits[bisect_left(bounds, wait_ns)] += 1
                waited_ns += wait_ns
        queue.stats.queue_ns_total += waited_ns
        record = InFlightBatch(batch_id, worker, requests, sizes, now_ns)
        self.batches[batch_id] = record
        counts = queue.batch_sizes
        for size in sizes:
            counts[size] = counts.get(size, 0) + 1
        queue.batch_messages += 1
        self.out_back.append(p.encode_batch(worker.identity, batch_id, sizes, items))
        record.send_ns = perf_counter_ns() - started_ns
        return record

    def _expire(self, queue: ModelQueue, expired: list[int], now_ns: int) -> None:
        queue.policy.refusals.add_expired(len(expired), now_ns)  # an INFO summary, not a line each
        name = queue.config.name
        for request_id in expired:
            identity, rid, _meta, _body, _arrived_ns = queue.pending.pop(request_id)
            self.out_front.append([identity] + p.encode_error(
                rid, DeadlineExceeded.code,
                f"the deadline of this request to model {name} passed while it waited in the "
                "queue; it never reached a worker", DeadlineExceeded.http_status))

    # ------------------------------------------------------------------ sequence batching

    def _on_sequence_request(self, queue: ModelQueue, identity: bytes, rid: bytes,
                             meta: bytes, body: Any, now_ns: int, deadline_ns: int) -> None:
        """A request to a model with sequence batching: its meta is read for the sequence
        headers, and gets the id and start headers when it starts a sequence the broker
        names (broker/sequences.py decides the rest; the end header counts only when strict,
        as TorchServe 0.12's sequence batching never reads it)."""
        content_type, headers, request_tag = p.parse_meta(meta)
        headers = headers or {}
        named = headers.get(SEQUENCE_ID_HEADER)
        ends = (queue.sequences.strict
                and str(headers.get(SEQUENCE_END_HEADER, "")).strip().lower() == "true")
        request_id = self._next_request_id
        self._next_request_id = request_id + 1
        try:
            sequence_id, made = queue.sequences.admit(
                named if isinstance(named, str) else None, request_id, deadline_ns, ends,
                now_ns)
        except SequenceRefused as refused:
            error = refusal_error(refused, queue.config.name)
            if isinstance(error, QueueFull):
                queue.policy.refusals.add(QueueFull.code, now_ns)
            raise error from None
        if made:
            meta = p.encode_meta(content_type, {**headers, SEQUENCE_ID_HEADER: sequence_id,
                                                SEQUENCE_START_HEADER: "true"}, request_tag)
        queue.pending[request_id] = (identity, rid, meta, body, now_ns)
        queue.requests_total += 1
        self._schedule_sequences(queue, now_ns)

    def _schedule_sequences(self, queue: ModelQueue, now_ns: int) -> None:
        """Answer the requests whose deadline passed while they waited, then give each idle
        worker (least recently used first) what its sequences have ready, and new sequences
        up to its share."""
        sequences = queue.sequences
        expired = sequences.expire(now_ns)
        if expired:
            self._expire(queue, expired, now_ns)
        if not queue.idle:
            return
        serving = _serving(queue)
        for worker in list(queue.idle):
            batch = sequences.next_batch(worker.identity, serving)
            if batch:
                queue.idle.remove(worker)
                worker.batch = self._dispatch(queue, worker, [batch], now_ns)

    def _sequence_answers(self, worker: WorkerRecord, items: list, now_ns: int) -> list:
        """The worker answered: the sequences may go on. Strict, each answer gets its
        sequence id as the `ts_request_sequence_id` response header (unless the handler set
        one); else the answers are the handler's, as TorchServe sends them."""
        sequences = worker.model.sequences
        sequence_ids = sequences.answered(worker.identity, now_ns)
        if not sequences.strict:
            return items
        items = list(items)
        for index, sequence_id in enumerate(sequence_ids):
            answer = _as_bytes(items[2 * index])
            if answer[:1] == p.REPLY:
                try:
                    items[2 * index] = p.REPLY + p.add_reply_header(
                        answer[1:], SEQUENCE_ID_HEADER, sequence_id)
                except ProtocolError:
                    pass  # answered as a bad reply below
        return items

    def _sequences_lost(self, queue: ModelQueue, worker: WorkerRecord, now_ns: int,
                        why: str) -> None:
        """The sequences pinned to a lost worker lost their state. Strict, their waiting
        requests are answered `worker_lost` (later ones naming them too: broker/sequences.py);
        else they go on, on the next worker free."""
        error = WorkerLost(f"worker {worker.worker_id} of model {queue.config.name}, which held "
                           f"this request's sequence, was lost ({why}); the sequence's state "
                           "is gone: start a new sequence")
        for request_id in queue.sequences.worker_lost(worker.identity, now_ns):
            client, rid, _meta, _body, _arrived_ns = queue.pending.pop(request_id)
            self.out_front.append([client] + p.encode_error(rid, *error.to_wire()))
        self._schedule_sequences(queue, now_ns)

    # ------------------------------------------------------------------ back side

    def on_back(self, frames: list, now_ns: int) -> None:
        """A message from a worker: [identity, VERSION, command, ...]."""
        identity = _as_bytes(frames[0])
        if identity.endswith(p.HEARTBEAT_SUFFIX):
            worker = self.workers.get(identity[:-len(p.HEARTBEAT_SUFFIX)])
            if worker is not None:
                worker.expiry_ns = now_ns + self.worker_ttl_ns
            return
        try:
            command = p.check_envelope(frames[1:], 2)
            worker = self.workers.get(identity)
            if worker is not None:
                worker.expiry_ns = now_ns + self.worker_ttl_ns
            if command == p.W_REPLY:
                self._on_worker_reply(worker, frames, now_ns)
            elif command == p.W_PARTIAL:
                self._on_worker_partial(worker, frames)
            elif command == p.W_READY:
                self._on_ready(identity, worker, frames, now_ns)
            elif command == p.W_HEARTBEAT:
                pass
            elif command == p.W_LOAD_FAILED:
                self._on_load_failed(frames)
            elif command == p.W_DISCONNECT:
                if worker is not None:
                    self.worker_lost(worker.worker_id, now_ns, "it disconnected")
            else:
                raise ProtocolError(f"unknown worker command {command!r}")
        except ProtocolError as exc:
            log.warning("dropped a malformed message from worker %r: %s", identity, exc)

    def _on_ready(self, identity: bytes, worker: WorkerRecord | None, frames: list,
                  now_ns: int) -> None:
        if len(frames) != 4:
            raise ProtocolError("READY must be [VERSION, W_READY, info]")
        info = p.parse_ready(_as_bytes(frames[3]))
        if info["worker_id"].encode() != identity:  # worker_lost finds workers by their id
            raise ProtocolError(f"READY from {identity!r} names worker {info['worker_id']!r}: "
                                "a worker's identity is its worker id")
        if worker is not None:
            raise ProtocolError(f"worker {info['worker_id']} said READY twice")
        try:
            queue = self.find_model(info["model"], info["version"])
        except ModelNotFound:
            log.warning("worker %s serves unknown model %s/%s; told to disconnect",
                        info["worker_id"], info["model"], info["version"])
            self.out_back.append(p.encode_disconnect_for(identity))
            return
        curve_key = self.peer_of(frames)[1]
        why = refusal(info, curve_key, self.model_digests.get(queue.config.key))
        if why is not None:
            log.warning("worker %s (key %s) refused, told to disconnect: %s",
                        info["worker_id"], curve_key, why)
            self.out_back.append(p.encode_disconnect_for(identity, f"refused: {why}"))
            return
        worker = WorkerRecord(identity, info["worker_id"], queue, info["gpu_id"], info["pid"],
                              now_ns + self.worker_ttl_ns)
        self.workers[identity] = worker
        queue.workers[identity] = worker
        queue.load_error = None
        queue.idle.append(worker)
        log.info("worker %s ready: model %s gpu %s pid %s%s", worker.worker_id,
                 queue.config.key, worker.gpu_id, worker.pid,
                 f" (remote, key {curve_key})" if curve_key else "")
        self._schedule(queue, now_ns)

    def _on_load_failed(self, frames: list) -> None:
        """A worker could not load its model: say why to everyone waiting, and to every new
        request while the model has no worker (the supervisor keeps retrying with backoff)."""
        if len(frames) != 4:
            raise ProtocolError("LOAD_FAILED must be [VERSION, W_LOAD_FAILED, info]")
        info = p.parse_load_failed(_as_bytes(frames[3]))
        try:
            queue = self.find_model(info["model"], info["version"])
        except ModelNotFound:
            return
        self._load_failed(queue, info["worker_id"], info["error"])

    def load_timed_out(self, model: ModelConfig, worker_id: str) -> None:
        """A worker has not said READY within its model's startup_timeout (the supervisor
        kills it and starts another, with backoff): a load failure, as TorchServe counts
        it."""
        queue = self.models.get(model.name, {}).get(model.version)
        if queue is not None:
            self._load_failed(queue, worker_id, "it did not finish loading within the model's "
                                                f"startup timeout ({model.startup_timeout_s} s)")

    def _load_failed(self, queue: ModelQueue, worker_id: str, error: str) -> None:
        # the log keeps the worker's full text; clients (503s, describe) get it without the
        # server's paths
        message = f"model {queue.config.key} failed to load in worker {worker_id}: "
        log.error("%s%s", message, error)
        queue.load_error = message + client_safe(error)
        queue.stats.load_failures += 1
        if queue.workers:
            return
        error = ModelLoadFailed(queue.load_error)
        for request_id in queue.drain():
            identity, rid, _meta, _body, _arrived_ns = queue.pending.pop(request_id)
            self.out_front.append([identity] + p.encode_error(rid, *error.to_wire()))

    def _on_worker_reply(self, worker: WorkerRecord | None, frames: list, now_ns: int) -> None:
        started_ns = perf_counter_ns()
        batch_id, items = p.split_worker_reply(frames[1:])
        batch = self.batches.get(batch_id)
        if worker is None or batch is None or batch is not worker.batch:
            raise ProtocolError(f"reply for batch {batch_id} that this worker does not run")
        requests = batch.requests
        if len(items) != 2 * len(requests):
            raise ProtocolError(f"batch {batch_id} has {len(requests)} requests but the reply "
                                f"has {len(items) // 2} items")
        del self.batches[batch_id]
        next_batch = worker.batch = worker.next_batch
        worker.next_batch = None
        if next_batch is not None:
            next_batch.dispatched_ns = now_ns  # it starts now: run times count from here
        if worker.model.sequences is not None:
            items = self._sequence_answers(worker, items, now_ns)
        out = self.out_front
        encode_client_reply = p.encode_client_reply
        for index, (identity, rid) in enumerate(requests):
            try:
                out.append(encode_client_reply(identity, rid, _as_bytes(items[2 * index]),
                                               items[2 * index + 1]))
            except ProtocolError:
                out.append([identity] + p.encode_error(
                    rid, "internal_error", "the worker sent an unknown reply command", 500))
        self.worker_thread_ns = batch.send_ns + perf_counter_ns() - started_ns
        queue = worker.model
        queue.policy.answered(batch.sizes, now_ns - batch.dispatched_ns, now_ns)
        if next_batch is None:
            if worker.retiring:
                self.retired_worker_ids.append(worker.worker_id)
            else:
                queue.idle.append(worker)
        self._schedule(queue, now_ns)

    def _on_worker_partial(self, worker: WorkerRecord | None, frames: list) -> None:
        """A streamed chunk: forward it as PARTIAL; the request stays in flight."""
        batch_id, index, meta, body = p.parse_worker_partial(frames[1:])
        batch = self.batches.get(batch_id)
        if worker is None or batch is None or batch.worker is not worker:
            raise ProtocolError(f"chunk for batch {batch_id} that this worker does not run")
        if index >= len(batch.requests):
            raise ProtocolError(f"chunk for request {index} of batch {batch_id}, which has "
                                f"{len(batch.requests)}")
        identity, rid = batch.requests[index]
        meta = _as_bytes(meta)
        sequences = worker.model.sequences
        if sequences is not None and sequences.strict:
            meta = p.add_reply_header(meta, SEQUENCE_ID_HEADER,
                                      sequences.running_ids(worker.identity)[index])
        self.out_front.append(p.encode_client_partial(identity, rid, meta, body))

    # ------------------------------------------------------------------ liveness

    def worker_lost(self, worker_id: str, now_ns: int, why: str) -> None:
        """Forget a worker and answer every request of its in-flight batch with an error."""
        identity = worker_id.encode()
        worker = self.workers.pop(identity, None)
        if worker is None:
            return
        queue = worker.model
        queue.workers.pop(identity, None)
        try:
            queue.idle.remove(worker)
        except ValueError:
            pass
        message = (f"worker {worker_id} of model {queue.config.name} was lost while running "
                   f"this request ({why})")
        for batch in (worker.batch, worker.next_batch):
            if batch is None:
                continue
            del self.batches[batch.batch_id]
            for identity_rid in batch.requests:
                self.out_front.append([identity_rid[0]] + p.encode_error(
                    identity_rid[1], WorkerLost.code, message, WorkerLost.http_status))
        if queue.sequences is not None:
            self._sequences_lost(queue, worker, now_ns, why)
        if worker.retiring and worker.batch is None and worker.next_batch is None:
            log.info("worker %s retired: %s", worker_id, why)  # the supervisor stops it
        else:
            self.lost_worker_ids.append(worker_id)
            queue.stats.worker_restarts += 1
            log.warning("worker %s lost: %s", worker_id, why)

    def on_tick(self, now_ns: int) -> None:
        """Timers: expire queued requests, run due dispatches, check workers, send heartbeats."""
        for versions in self.models.values():
            for queue in versions.values():
                self._schedule(queue, now_ns)
                queue.policy.refusals.log_due(now_ns)
                if queue.autoscaler is not None and queue.max_workers > queue.config.workers:
                    self._autoscale(queue, now_ns)
        for worker in list(self.workers.values()):
            if worker.expiry_ns <= now_ns:
                self.worker_lost(worker.worker_id, now_ns, "it stopped sending heartbeats")
            elif worker.batch is not None:
                limit_ns = worker.model.config.response_timeout_s * 1_000_000_000
                if now_ns - worker.batch.dispatched_ns > limit_ns:
                    self.worker_lost(worker.worker_id, now_ns,
                                     "its batch ran past the model's response timeout")
        if now_ns >= self._next_heartbeat_ns:
            self._next_heartbeat_ns = now_ns + self.heartbeat_interval_ns
            for identity in self.workers:
                self.out_back.append(p.encode_heartbeat_for(identity))

    def _autoscale(self, queue: ModelQueue, now_ns: int) -> None:
        """Ask the supervisor for one worker more or fewer where the autoscaler says so. A
        model counts as idle only with nothing waiting and no worker busy: a busy worker
        counts as one request waiting (not a backlog, which is more than a batch). Requests
        waiting in sequences (sequence batching) count too."""
        waiting = len(queue.aggregator)
        if queue.sequences is not None:
            waiting += len(queue.sequences)
        queued = waiting or int(len(queue.idle) < len(queue.workers))
        target = queue.autoscaler.decide(
            now_ns, queued=queued, batch_size=queue.config.batch_size,
            workers=queue.target_workers, minimum=queue.config.workers,
            maximum=queue.max_workers)
        if target is not None:
            log.info("model %s: autoscaling from %d to %d worker(s), %d waiting",
                     queue.config.key, queue.target_workers, target, waiting)
            queue.target_workers = target
            self.scale_requests.append((queue.config, target))

    def next_wakeup_ns(self, now_ns: int) -> int:
        """The time of the next timer; the loop polls its sockets until then."""
        wakeup = self._next_heartbeat_ns
        for versions in self.models.values():
            for queue in versions.values():
                at = queue.policy.next_wakeup_ns(now_ns, len(queue.idle))
                if 0 <= at < wakeup:
                    wakeup = at
                if queue.sequences is not None:
                    at = queue.sequences.next_wakeup_ns()
                    if 0 <= at < wakeup:
                        wakeup = at
                if queue.autoscaler is not None and queue.max_workers > queue.config.workers:
                    at = queue.autoscaler.next_decision_ns(now_ns)
                    if at is not None and at < wakeup:
                        wakeup = at
        for worker in self.workers.values():
            if worker.expiry_ns < wakeup:
                wakeup = worker.expiry_ns
        return wakeup

    # ------------------------------------------------------------------ shutdown and stats

    def begin_shutdown(self, now_ns: int) -> None:
        """Refuse new requests and answer every waiting one; in-flight batches may finish."""
        self.shutting_down = True
        for versions in self.models.values():
            for queue in versions.values():
                for request_id in queue.drain():
                    identity, rid, _meta, _body, _arrived_ns = queue.pending.pop(request_id)
                    self.out_front.append([identity] + p.encode_error(
                        rid, *ShuttingDown("the server is stopping").to_wire()))

    def health(self) -> str:
        """The `ping` verdict, in TorchServe's words, from each model's live workers (said
        READY, not lost, not retiring) against its minimum (`ModelConfig.workers`,
        TorchServe's minWorkers), over each model's default version as TorchServe's
        ApiUtils.isModelHealthy counts:

        - "Healthy" (HTTP 200): every model has at least its minimum;
        - "Unhealthy" (HTTP 500): some model has no live worker and its last load failed
          (W_LOAD_FAILED): it cannot serve, and restarting its worker has not mended it;
        - "Partial Healthy" (HTTP 200): otherwise some model is below its minimum (loading,
          a worker restarting, scaled up and not loaded yet); what it has serves.

        TorchServe 0.8+ answers only Healthy or Unhealthy: a worker counts as healthy while it
        loads or restarts, until it has failed to recover for maxRetryTimeoutInSec (5 min).
        The broker needs no clock for it: a failed load is the failure it reports, at once,
        and "Partial Healthy" (TorchServe before 0.8) says that not every worker is there
        while keeping a liveness probe's 200 through a load or a restart. O(models): the
        front ends' /ping and liveness probes call it."""
        verdict = "Healthy"
        for name, versions in self.models.items():
            queue = versions[self.default_version[name]]
            live = _serving(queue)
            if live >= queue.config.workers:
                continue
            if not live and queue.load_error is not None:
                return "Unhealthy"
            verdict = "Partial Healthy"
        return verdict

    def readiness(self) -> dict:
        """The `ready` answer, for readiness probes (GET /ready): {"ready": bool, "loading":
        [model names]}. Ready once every model (each version) with a minimum above 0 has a
        live worker: 503 at start until each has said READY once, and again later while a
        model has none (crashed or hung and restarting, or failing to load), since its
        requests could then only wait or fail here while another replica serves them.
        Fewer workers than the minimum still serve, and stay ready. Names only: no paths,
        no errors (anyone on the client endpoint may ask)."""
        loading = sorted({queue.config.name for versions in self.models.values()
                          for queue in versions.values()
                          if queue.config.workers and not _serving(queue)})
        return {"ready": not loading, "loading": loading}

    def model_list(self) -> dict:
        """The `models` answer, for the Open Inference Protocol's metadata and readiness:
        {"models": [{"modelName", "modelVersion", "default": bool, "ready": bool,
        "maxQueue": n}]}, ready when a live worker that is not retiring serves it. Names and
        numbers only, like `ready` (anyone on the client endpoint may ask)."""
        return {"models": [
            {"modelName": name, "modelVersion": version,
             "default": self.default_version.get(name) == version,
             "ready": _serving(queue) > 0, "maxQueue": queue.config.max_queue}
            for name, versions in self.models.items() for version, queue in versions.items()]}

    def registered(self) -> list[tuple[ModelConfig, bool, int]]:
        """(model, is its name's default version, maxWorkers) of every model version: what a
        snapshot keeps (zerobatch/snapshot.py)."""
        return [(queue.config, self.default_version[name] == version, queue.max_workers)
                for name, versions in self.models.items()
                for version, queue in versions.items()]

    def describe(self) -> dict:
        models = []
        for name, versions in self.models.items():
            for version, queue in versions.items():
                models.append({
                    "modelName": name,
                    "modelVersion": version,
                    "default": self.default_version[name] == version,
                    "batchSize": queue.config.batch_size,
                    "maxBatchDelay": queue.config.max_batch_delay_ms,
                    # TorchServe's names: the worker counts a scale asked for, the queue bound
                    "minWorkers": queue.config.workers,
                    "maxWorkers": queue.max_workers,
                    "maxQueue": queue.config.max_queue,
                    "responseTimeout": queue.config.response_timeout_s,
                    "startupTimeout": queue.config.startup_timeout_s,
                    "modelUrl": queue.config.url,
                    "queued": len(queue.aggregator) + len(queue.sequences or ()),
                    "requests": queue.requests_total,
                    # refused at arrival: late (deadline_unreachable), or the queue full
                    "refusedLate": queue.policy.refusals.counts[DeadlineUnreachable.code],
                    "refusedQueueFull": queue.policy.refusals.counts[QueueFull.code],
                    "batchSizes": {str(k): v for k, v in sorted(queue.batch_sizes.items())},
                    # messages that carried those batches: fewer where batches were grouped
                    "batchMessages": queue.batch_messages,
                    # the learned run time (dispatch to reply) of each batch size seen
                    "batchRunMs": {str(k): queue.aggregator.expected_run_ns(k) / _NS_PER_MS
                                   for k in sorted(queue.batch_sizes)},
                    "loadError": queue.load_error,
                    "workers": [
                        {"id": w.worker_id, "pid": w.pid, "gpu": w.gpu_id,
                         "status": "BUSY" if w.batch is not None else "READY",
                         "retiring": w.retiring}
                        for w in queue.workers.values()
                    ],
                })
        return {"models": models}


    # ------------------------------------------------------------------ metrics

    def metrics(self) -> dict:
        """The `metrics` control call's answer (broker/model_stats.py): each model version's
        queue, workers, refusals, expirations, restarts, load failures, requests, batch
        sizes and queue times, for the metrics API (api/metrics_app.py). Read-only; O(models
        + workers)."""
        return answer((queue for versions in self.models.values()
                       for queue in versions.values()), self.default_version,
                      self.worker_thread_ns)


def _serving(queue: ModelQueue) -> int:
    """The model's live workers that take new batches (a retiring one finishes and goes)."""
    return sum(not worker.retiring for worker in queue.workers.values())


def _as_bytes(frame: Any) -> bytes:
    """The bytes of a frame received with copy=False (zmq.Frame) or copy=True (bytes)."""
    return frame.bytes if hasattr(frame, "bytes") else frame
