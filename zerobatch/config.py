"""Configuration: one frozen object per process, defaults as named constants, checks at startup.

The CLI builds a ServerConfig from flags; the broker hands each worker a WorkerConfig and each
front end a FrontendConfig, serialized as JSON on the child's command line. Only entry points
read the environment; everything here is pure data and validation. Every check's message says
how to fix the problem.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from zerobatch.errors import ConfigError
from zerobatch.protocol import DEFAULT_MAX_BODY_BYTES

# Model defaults, as TorchServe's where it has one.
DEFAULT_VERSION = "1.0"
DEFAULT_WORKERS = 1
DEFAULT_BATCH_SIZE = 1
DEFAULT_MAX_BATCH_DELAY_MS = 100
DEFAULT_RESPONSE_TIMEOUT_S = 120
DEFAULT_MAX_QUEUE = 100
DEFAULT_STARTUP_TIMEOUT_S = 120
#: Longest an HTTP client may take to send its request line and headers, and then its body
#: (plus what DEFAULT_REQUEST_MIN_RATE_BYTES_S earns it; nginx's client_header_timeout and
#: client_body_timeout are 60 s each); a late one is answered 408 and closed, so slow
#: clients cannot hold a front end's connections.
DEFAULT_REQUEST_READ_TIMEOUT_S = 60.0
#: Once its headers are in, a request body earns this many bytes a second of extra time on
#: top of the read timeout (Apache's mod_reqtimeout MinRate): a large upload over a slow link
#: goes through, a body trickled a byte at a time is answered 408 when its time is spent.
DEFAULT_REQUEST_MIN_RATE_BYTES_S = 1024
#: Largest request line plus headers an HTTP front end reads; larger ones answer 431.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: Open connections one HTTP front end keeps; a connection beyond them is answered 503.
DEFAULT_MAX_CONNECTIONS = 1024

#: How the aggregator treats a partial batch while a worker is idle.
#: "adaptive": a free worker takes what waits (batches fill by themselves under load).
#: "full_delay": hold a partial batch for the whole max_batch_delay (TorchServe's behaviour).
BATCH_POLICIES = ("adaptive", "full_delay")
DEFAULT_BATCH_POLICY = "adaptive"

#: Which requests the broker refuses at arrival (503).
#: "deadline": those the queue ahead would keep past their deadline (DeadlineUnreachable),
#:   and any when the queue is full; predicted from the run times the workers showed.
#: "queue": only when the queue is full (TorchServe's behaviour); a request that cannot make
#:   its deadline waits and is answered 504 when it passes.
ADMISSION_POLICIES = ("deadline", "queue")
DEFAULT_ADMISSION = "deadline"

#: Where a model's workers run: "auto" (round robin over the GPUs, CPU when there are none),
#: "gpu" (the same; TorchServe's deviceType: gpu), "cpu" (every worker on the CPU).
DEVICE_TYPES = ("auto", "cpu", "gpu")

# Server defaults.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8080
DEFAULT_CLIENT_PORT = 9500
DEFAULT_FRONTENDS = 1
#: The run directory when none is given: private to the user (see default_run_dir).
DEFAULT_RUN_DIR_PREFIX = "/tmp/zerobatch-"
RESTART_BACKOFF_MIN_S = 0.1
RESTART_BACKOFF_MAX_S = 10.0
#: TorchServe's default addresses of the management and metrics APIs
DEFAULT_MANAGEMENT_PORT = 8081
DEFAULT_MANAGEMENT_ADDRESS = f"http://127.0.0.1:{DEFAULT_MANAGEMENT_PORT}"
#: a management_address that turns the management API off
NO_ADDRESS = "none"
DEFAULT_METRICS_PORT = 8082
DEFAULT_METRICS_ADDRESS = f"http://127.0.0.1:{DEFAULT_METRICS_PORT}"
#: the Open Inference Protocol over gRPC (api/grpc_server.py): off unless an address is given
DEFAULT_GRPC_ADDRESS = NO_ADDRESS
#: its port when the address names none (TorchServe's gRPC inference port)
DEFAULT_GRPC_PORT = 7070
#: TorchServe's metrics_mode values: zerobatch serves the metrics API in each and writes no
#: metric log ("log" and "legacy" are accepted with a warning)
METRICS_MODES = ("prometheus", "log", "legacy")
#: the largest request the metrics API reads (it takes no body)
METRICS_MAX_REQUEST_BYTES = 64 * 1024
#: how long a scrape of the metrics API waits for the broker's figures
METRICS_BROKER_TIMEOUT_MS = 1000
DEFAULT_ALLOWED_URLS = ("file://.*|http(s)?://.*",)
#: TorchServe's token_expiration_min
DEFAULT_TOKEN_EXPIRATION_MIN = 60.0
DEFAULT_SCALE_UP_AFTER_S = 1.0
DEFAULT_SCALE_DOWN_AFTER_S = 60.0
#: how log lines are written: plain text, or one JSON object a line
LOG_FORMATS = ("text", "json")
#: the metrics API's process files (prometheus_client's multiprocess mode), in the run directory
METRICS_DIR = "metrics"
#: the token authorization keys, in the run directory (TorchServe: ./key_file.json)
KEY_FILE = "key_file.json"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ModelConfig:
    """One served model version and its batching settings."""

    name: str
    path: str
    version: str = DEFAULT_VERSION
    workers: int = DEFAULT_WORKERS
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_delay_ms: int = DEFAULT_MAX_BATCH_DELAY_MS
    response_timeout_s: int = DEFAULT_RESPONSE_TIMEOUT_S
    startup_timeout_s: int = DEFAULT_STARTUP_TIMEOUT_S
    max_queue: int = DEFAULT_MAX_QUEUE
    #: default deadline of a request, from its arrival; 0 means response_timeout_s
    default_timeout_ms: int = 0
    batch_policy: str = DEFAULT_BATCH_POLICY
    admission: str = DEFAULT_ADMISSION
    #: GPUs this model may use (round robin); None means all the server's GPUs
    device_ids: tuple[int, ...] | None = None
    #: "auto", "gpu" or "cpu" (every worker of this model gets gpu_id None)
    device_type: str = "auto"
    #: directories the worker puts first on sys.path before importing the handler (the
    #: model's private dependencies, see --install-py-dep-per-model)
    python_path: tuple[str, ...] = ()
    #: the most workers autoscaling may run (TorchServe's maxWorkers); 0 means `workers`
    max_workers: int = 0
    #: where the model came from, as it was given (a model store entry or a URL): what
    #: describe calls modelUrl and a snapshot's marName; "" when unknown
    url: str = ""
    #: TorchServe's sequence batching (model-config.yaml's sequenceBatching and its keys):
    #: a stateful handler gets each sequence's requests one at a time, in order, in one worker
    #: (broker/sequences.py). Times in ms, 0 = none; sequence_max_idle_ms is required (> 0)
    sequence_batching: bool = False
    sequence_max_idle_ms: int = 0
    sequence_timeout_ms: int = 0
    #: requests a sequence may hold waiting beyond the one it runs (maxSequenceJobQueueSize)
    max_sequence_queue: int = 1
    #: open sequences at most (maxNumSequence; batch_size x max workers when that is more)
    max_sequences: int = 1

    def __post_init__(self) -> None:
        if not _MODEL_NAME.match(self.name):
            raise ConfigError(f"model name {self.name!r} must match {_MODEL_NAME.pattern}")
        if not self.version or "/" in self.version:
            raise ConfigError(f"model {self.name}: version {self.version!r} must be non-empty "
                              "and contain no '/'")
        _positive(self, "batch_size", minimum=1)
        _positive(self, "workers", minimum=0)
        _positive(self, "max_batch_delay_ms", minimum=0)
        _positive(self, "response_timeout_s", minimum=1)
        _positive(self, "startup_timeout_s", minimum=1)
        _positive(self, "default_timeout_ms", minimum=0)
        _positive(self, "max_workers", minimum=0)
        if self.max_workers and self.max_workers < self.workers:
            raise ConfigError(f"model {self.name}: max_workers ({self.max_workers}) is smaller "
                              f"than workers ({self.workers}); raise max_workers")
        if self.max_queue < self.batch_size:
            raise ConfigError(f"model {self.name}: max_queue ({self.max_queue}) must be at least "
                              f"batch_size ({self.batch_size}); raise max_queue")
        if self.batch_policy not in BATCH_POLICIES:
            raise ConfigError(f"model {self.name}: batch_policy {self.batch_policy!r} must be one "
                              f"of {', '.join(BATCH_POLICIES)}")
        if self.admission not in ADMISSION_POLICIES:
            raise ConfigError(f"model {self.name}: admission {self.admission!r} must be one of "
                              f"{', '.join(ADMISSION_POLICIES)}")
        if self.device_ids is not None:
            object.__setattr__(self, "device_ids", tuple(self.device_ids))
        if self.device_type not in DEVICE_TYPES:
            raise ConfigError(f"model {self.name}: device_type {self.device_type!r} must be one "
                              f"of {', '.join(DEVICE_TYPES)}")
        object.__setattr__(self, "python_path", tuple(self.python_path))

    @property
    def key(self) -> str:
        """The registry key of this model version."""
        return f"{self.name}/{self.version}"

    @property
    def most_workers(self) -> int:
        """The most workers the model may run: max_workers, or workers when it is 0."""
        return max(self.max_workers, self.workers)

    @property
    def deadline_ms(self) -> int:
        """The default (and longest) deadline a request of this model gets."""
        return self.default_timeout_ms or self.response_timeout_s * 1000


@dataclass(frozen=True)
class ServerConfig:
    """Everything `zerobatch start` decides; owned by the broker process."""

    models: tuple[ModelConfig, ...] = ()
    model_store: str = "."
    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_HTTP_PORT
    client_address: str = f"tcp://{DEFAULT_HOST}:{DEFAULT_CLIENT_PORT}"
    #: an extra endpoint for workers on other hosts; local workers always use ipc in run_dir.
    #: A tcp:// one requires CURVE: curve_secret_key and curve_worker_keys
    worker_address: str = ""
    frontends: int = DEFAULT_FRONTENDS
    #: GPUs to use; None means every GPU of the machine
    number_of_gpu: int | None = None
    run_dir: str = ""
    max_request_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_read_timeout_s: float = DEFAULT_REQUEST_READ_TIMEOUT_S
    request_min_rate_bytes_s: int = DEFAULT_REQUEST_MIN_RATE_BYTES_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: CURVE on the client endpoint: the server's secret key file (`zerobatch keys`) and a
    #: directory of the public key files of the clients it accepts; both or neither
    curve_secret_key: str = ""
    curve_authorized_keys: str = ""
    #: CURVE on the worker endpoint (worker_address): a directory of the public key files of
    #: the remote workers it accepts; the server's key pair is curve_secret_key's
    curve_worker_keys: str = ""
    log_level: str = "INFO"
    #: aggregator twin: "auto" (compiled if built), "compiled" (fail if missing), "python"
    aggregator: str = "auto"
    #: install each model's requirementsFile into a private directory before its workers start
    install_py_dep_per_model: bool = False
    # The control plane's TorchServe settings (config.properties, flags); defaults are
    # TorchServe's. max_response_bytes is stored, not acted on yet.
    management_address: str = DEFAULT_MANAGEMENT_ADDRESS
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    #: the Open Inference Protocol's gRPC service: http://HOST:PORT, https:// (TLS), or none
    grpc_address: str = DEFAULT_GRPC_ADDRESS
    #: TorchServe's max_response_size; not enforced
    max_response_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: regular expressions a registration URL must match (TorchServe's allowed_urls)
    allowed_urls: tuple[str, ...] = DEFAULT_ALLOWED_URLS
    disable_token_authorization: bool = False
    enable_model_api: bool = False
    #: TorchServe's model_snapshot (JSON text), "" for none
    model_snapshot: str = ""
    #: False with --ncs (TorchServe's --no-config-snapshots)
    config_snapshots: bool = True
    #: TLS: the certificate chain and the private key (PEM files) that serve every address
    #: given as https:// (TorchServe's certificate_file and private_key_file)
    certificate_file: str = ""
    private_key_file: str = ""
    #: the inference API over TLS (an https:// inference_address)
    inference_https: bool = False
    #: minutes a management or inference key stays valid (TorchServe's token_expiration_min)
    token_expiration_min: float = DEFAULT_TOKEN_EXPIRATION_MIN
    #: autoscaling between a model's minWorkers and maxWorkers: a worker is added when more
    #: than a batch has kept waiting this long, one is retired after the model has had no
    #: request waiting for this long
    scale_up_after_s: float = DEFAULT_SCALE_UP_AFTER_S
    scale_down_after_s: float = DEFAULT_SCALE_DOWN_AFTER_S
    #: the settings (ModelConfig fields) a model registered through the management API gets
    #: where neither its call nor its archive names them: the `zerobatch start` flags
    model_defaults: dict[str, Any] = field(default_factory=dict)
    #: workers a registration starts when it names none (TorchServe: default_workers_per_model
    #: when configured, else 0)
    registration_workers: int = 0
    #: observability (issue 18): log lines as "text" or "json"; one access-log line per
    #: HTTP request; TorchServe's metrics_mode ("prometheus" or "log") and metrics_config
    #: (its metrics.yaml), for the metrics API on metrics_address
    log_format: str = "text"
    access_log: bool = False
    #: a failed prediction answered in zerobatch's words, not TorchServe's (FrontendConfig)
    zerobatch_answers: bool = False
    metrics_mode: str = "prometheus"
    metrics_config: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "allowed_urls", tuple(self.allowed_urls))
        _positive(self, "max_response_bytes", minimum=1)
        keys = [m.key for m in self.models]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"model versions registered twice: {sorted(keys)}")
        _positive(self, "frontends", minimum=0)
        _positive(self, "max_request_bytes", minimum=1)
        _positive_seconds(self, "request_read_timeout_s")
        _positive(self, "request_min_rate_bytes_s", minimum=1)
        _positive(self, "max_header_bytes", minimum=1024)
        _positive(self, "max_connections", minimum=1)
        if self.curve_worker_keys and not self.curve_secret_key:
            raise ConfigError("--curve-worker-keys needs --curve-secret-key, the server's key "
                              "pair (the workers are given its public .key); `zerobatch keys` "
                              "makes it")
        if bool(self.curve_secret_key) != bool(self.curve_authorized_keys
                                               or self.curve_worker_keys):
            raise ConfigError("CURVE needs both the server's secret key file and the directory "
                              "of authorized client keys (--curve-secret-key and "
                              "--curve-authorized-keys); `zerobatch keys` makes them")
        if self.curve_worker_keys and not self.worker_address:
            raise ConfigError("--curve-worker-keys needs --worker-address, the endpoint remote "
                              "workers connect to")
        if self.worker_address.startswith("tcp://") and not self.curve_worker_keys:
            raise ConfigError(f"worker address {self.worker_address} is TCP: remote workers "
                              "must authenticate; give --curve-secret-key (the server's key "
                              "pair) and --curve-worker-keys DIR (the workers' public keys), "
                              "both made by `zerobatch keys`")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(f"http_port {self.http_port} must be within 0..65535")
        if self.number_of_gpu is not None and self.number_of_gpu < 0:
            raise ConfigError("number_of_gpu must be >= 0")
        if self.aggregator not in ("auto", "compiled", "python"):
            raise ConfigError("aggregator must be auto, compiled or python")
        for address in (self.client_address, self.worker_address):
            if address and not address.startswith(("tcp://", "ipc://", "inproc://")):
                raise ConfigError(f"address {address!r} must start with tcp://, ipc:// or inproc://")
        _positive_seconds(self, "token_expiration_min")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format {self.log_format!r} must be one of "
                              f"{', '.join(LOG_FORMATS)}")
        if self.metrics_mode not in METRICS_MODES:
            raise ConfigError(f"metrics_mode {self.metrics_mode!r} must be one of "
                              f"{', '.join(METRICS_MODES)}")
        _positive_seconds(self, "scale_up_after_s")
        _positive_seconds(self, "scale_down_after_s")
        if bool(self.certificate_file) != bool(self.private_key_file):
            raise ConfigError("TLS needs both certificate_file and private_key_file "
                              "(--certificate-file and --private-key-file)")
        https = [name for name, on in (
            ("inference_address", self.inference_https),
            ("management_address", self.management_address.lower().startswith("https://")),
            ("metrics_address", self.metrics_address.lower().startswith("https://")),
            ("grpc_address", self.grpc_address.lower().startswith("https://")))
            if on]
        if https and not self.certificate_file:
            raise ConfigError(f"{' and '.join(https)}: https:// needs a certificate, and none "
                              "is configured: set certificate_file and private_key_file")

    @property
    def front_ipc(self) -> str:
        """The local endpoint of the HTTP front ends, in the private run directory."""
        return f"ipc://{self.run_dir}/front.sock"

    @property
    def back_ipc(self) -> str:
        """The local endpoint of the workers, in the private run directory."""
        return f"ipc://{self.run_dir}/back.sock"

    @property
    def control_address(self) -> str:
        """The local endpoint for control calls (stop, describe): see control_address()."""
        return control_address(self.run_dir)

    @property
    def serves_metrics(self) -> bool:
        """Whether the metrics API has a process (metrics_address is not "none")."""
        return self.metrics_address.lower() != NO_ADDRESS

    @property
    def serves_grpc(self) -> bool:
        """Whether the gRPC service has a process (grpc_address is not "none")."""
        return self.grpc_address.lower() != NO_ADDRESS

    @property
    def metrics_dir(self) -> str:
        """Where the processes keep their metrics for the metrics API (RUN_DIR/metrics)."""
        return f"{self.run_dir}/{METRICS_DIR}"

    @property
    def serves_management(self) -> bool:
        """Whether the management API has a process (management_address is not "none")."""
        return self.management_address.lower() != NO_ADDRESS

    @property
    def key_file(self) -> str:
        """The token authorization key file, or "" when token authorization is off."""
        return "" if self.disable_token_authorization else f"{self.run_dir}/{KEY_FILE}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServerConfig":
        data = json.loads(text)
        data["models"] = tuple(ModelConfig(**m) for m in data.get("models", ()))
        return cls(**data)

    def with_models(self, models: tuple[ModelConfig, ...]) -> "ServerConfig":
        return replace(self, models=models)


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker process needs: its identity, its broker and its model."""

    worker_id: str
    broker_address: str
    model: ModelConfig
    gpu_id: int | None = None
    heartbeat_interval_ms: int = 1000
    log_level: str = "INFO"
    log_format: str = "text"
    #: TorchServe's metrics.yaml (ServerConfig.metrics_config): its model_metrics are put in
    #: the handler's metric cache before it initializes, as TorchServe's workers do
    metrics_config: str = ""
    #: a remote worker (`zerobatch worker`, docs/remote-workers.md): the broker's public key
    #: file and this worker's secret key file, for CURVE; "" for a local worker. A remote
    #: worker sends its model's digest in READY and is not tied to a parent process
    curve_server_key: str = ""
    curve_secret_key: str = ""

    @property
    def remote(self) -> bool:
        """Whether this is a remote worker (it connects with CURVE)."""
        return bool(self.curve_server_key)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerConfig":
        data = json.loads(text)
        data["model"] = ModelConfig(**data["model"])
        return cls(**data)


@dataclass(frozen=True)
class FrontendConfig:
    """What one HTTP front-end process needs."""

    broker_address: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_HTTP_PORT
    max_request_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_read_timeout_s: float = DEFAULT_REQUEST_READ_TIMEOUT_S
    request_min_rate_bytes_s: int = DEFAULT_REQUEST_MIN_RATE_BYTES_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: default deadline of an HTTP request when the model gives none the front end knows
    default_timeout_ms: int = DEFAULT_RESPONSE_TIMEOUT_S * 1000
    log_level: str = "INFO"
    #: the token authorization key file (api/token_auth.py), "" for none (no token needed)
    key_file: str = ""
    #: TLS: the certificate chain and private key (PEM files), "" for plain HTTP
    certificate_file: str = ""
    private_key_file: str = ""
    log_format: str = "text"
    access_log: bool = False
    #: a failed prediction answered in zerobatch's words (the handler's exception and its
    #: text) instead of TorchServe's (api.http_helpers)
    zerobatch_answers: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "FrontendConfig":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class ManagementConfig:
    """What the management API's process needs (api/management_server.py)."""

    #: the broker's local control socket (zerobatch.config.control_address)
    control_address: str
    run_dir: str
    model_store: str
    host: str = DEFAULT_HOST
    port: int = 8081
    allowed_urls: tuple[str, ...] = DEFAULT_ALLOWED_URLS
    enable_model_api: bool = False
    install_py_dep_per_model: bool = False
    #: the settings a registered model gets where its call and its archive name none
    model_defaults: dict[str, Any] = field(default_factory=dict)
    #: workers a registration starts when it names none (TorchServe's
    #: default_workers_per_model when configured, else 0)
    default_workers: int = 0
    #: the largest archive a registration may download from an http(s) URL
    max_download_bytes: int = 2 * 1024**3
    key_file: str = ""
    token_expiration_min: float = DEFAULT_TOKEN_EXPIRATION_MIN
    certificate_file: str = ""
    private_key_file: str = ""
    max_request_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_read_timeout_s: float = DEFAULT_REQUEST_READ_TIMEOUT_S
    request_min_rate_bytes_s: int = DEFAULT_REQUEST_MIN_RATE_BYTES_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_urls", tuple(self.allowed_urls))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ManagementConfig":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class MetricsConfig:
    """What the metrics API's process needs (api/metrics_server.py): where to serve, the
    broker's control socket for the broker's figures, and the folder of the other processes'
    figures (zerobatch/metrics_dir.py)."""

    #: the broker's local control socket (zerobatch.config.control_address)
    control_address: str
    #: the processes' prometheus_client files (ServerConfig.metrics_dir)
    metrics_dir: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_METRICS_PORT
    #: how long a scrape waits for the broker's figures before it answers without them
    broker_timeout_ms: int = METRICS_BROKER_TIMEOUT_MS
    certificate_file: str = ""
    private_key_file: str = ""
    max_request_bytes: int = METRICS_MAX_REQUEST_BYTES
    request_read_timeout_s: float = DEFAULT_REQUEST_READ_TIMEOUT_S
    request_min_rate_bytes_s: int = DEFAULT_REQUEST_MIN_RATE_BYTES_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    log_level: str = "INFO"
    log_format: str = "text"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "MetricsConfig":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class GrpcConfig:
    """What the gRPC service's process needs (api/grpc_server.py): where to serve, the
    broker's client endpoint, the inference key and the limits."""

    broker_address: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_GRPC_PORT
    max_request_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_response_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: deadline of a call that sets none shorter
    default_timeout_ms: int = DEFAULT_RESPONSE_TIMEOUT_S * 1000
    #: calls served at once; one more is refused RESOURCE_EXHAUSTED (max_connections)
    max_concurrent_rpcs: int = DEFAULT_MAX_CONNECTIONS
    key_file: str = ""
    certificate_file: str = ""
    private_key_file: str = ""
    log_level: str = "INFO"
    log_format: str = "text"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "GrpcConfig":
        return cls(**json.loads(text))


def default_run_dir(uid: int) -> str:
    """The run directory of user `uid` when none is given: one per user, so that two users of
    a machine never share sockets, lock files or logs (the broker makes it mode 0700)."""
    return f"{DEFAULT_RUN_DIR_PREFIX}{uid}"


def control_address(run_dir: str) -> str:
    """The broker's control endpoint in `run_dir`: stop, describe and the other control calls
    are accepted here (only this user can reach the private run directory) and, with CURVE,
    from authorized clients on the client endpoint; never from anonymous clients."""
    return f"ipc://{run_dir}/control.sock"


def _positive_seconds(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not 0 < value < float("inf")):
        raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")


def _positive(obj: Any, name: str, minimum: int) -> None:
    value = getattr(obj, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        owner = getattr(obj, "name", type(obj).__name__)
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
