"""TorchServe's `config.properties`, read as TorchServe 0.12 reads it, mapped onto zerobatch.

Owns the Java properties syntax (java.util.Properties.load: `key=value`, `key: value` or
`key value`, `#` and `!` comments, a backslash joining lines, `\\t \\n \\r \\f \\uXXXX` and
`\\c` escapes), TorchServe's `$$NAME$$` substitution of environment variables in values, its
`TS_*` variables overriding the file when `enable_envvars_config=true` (ConfigManager's
resolveEnvVarVals and setSystemVars), and the table of TorchServe keys: each is applied (a
`zerobatch start` setting), stored (a ServerConfig field that nothing acts on yet) or ignored
with a warning. Pure: the only I/O is reading the file it is given; the entry point passes the
environment in. A bad value raises a one-line ConfigError naming the file and the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from zerobatch.errors import ConfigError

#: What `load_models=all` takes from the model store (ModelServer.initModelStore): every
#: directory, and the files with these endings; hidden entries are skipped.
STORE_MODEL_SUFFIXES = (".mar", ".model", ".tar.gz")

_WHITESPACE = " \t\f"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_NEWLINE = re.compile(r"(\r\n|\r|\n)")
_SUBSTITUTION = re.compile(r"\$\$([^$]+[^$])\$\$")  # ConfigManager's `$$NAME$$`
_INTEGER = re.compile(r"[+-]?[0-9]+")
_JAVA_INT_MAX = 2**31 - 1
# ConfigManager.ADDRESS_PATTERN, matched whole
_ADDRESS = re.compile(r"(?i)(https|http)://([^:^/]+)(?::([0-9]+))?|unix:(/.*)")
#: TorchServe's ports for an address that gives none (Connector.parse): (http, https)
INFERENCE_PORTS = (80, 443)
MANAGEMENT_PORTS = (8081, 8444)
METRICS_PORTS = (8082, 8445)


# ---------------------------------------------------------------------- the file syntax

def parse_properties(text: str) -> dict[str, str]:
    """The keys and values of a Java properties text (a later key wins, as in Java)."""
    props: dict[str, str] = {}
    for line in _logical_lines(text):
        key, value = _split_key(line)
        try:
            props[_unescape(key)] = _unescape(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return props


def decode(data: bytes) -> str:
    """The file's text: UTF-8, else ISO 8859-1 (what Properties.load(InputStream) assumes)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _logical_lines(text: str) -> Iterable[str]:
    """Java's LineReader (JDK 9 and later): leading whitespace stripped; a line ending in an
    odd number of backslashes joined to the next; a line that is empty, or starts with `#` or
    `!`, skipped while nothing has been kept (also after a continuation that kept nothing);
    at the end of the file a last odd backslash is dropped."""
    parts = _NEWLINE.split(text)  # natural lines, each followed by its terminator
    naturals, terminators = parts[0::2], parts[1::2] + [""]
    last = len(naturals) - 1
    line = ""
    for index, natural in enumerate(naturals):
        stripped = natural.lstrip(_WHITESPACE)
        if not line and stripped[:1] in ("#", "!"):
            continue
        line += stripped
        if not line:
            continue
        odd = (len(line) - len(line.rstrip("\\"))) % 2 == 1
        if index == last or (index == last - 1 and not naturals[last]):  # the file ends
            # Java keeps an empty line left by a final backslash, but not after one ending
            # in CR LF (it has consumed the LF as part of the continuation)
            if not odd or line[:-1] or terminators[index] != "\r\n":
                yield line[:-1] if odd else line
            return
        if odd:  # continued: a blank next line ends it, as line's backslashes come in pairs
            line = line[:-1]
        else:
            yield line
            line = ""


def _split_key(line: str) -> tuple[str, str]:
    """The key runs to the first unescaped `=`, `:` or whitespace; then whitespace, at most
    one `=` or `:`, and whitespace are skipped. The value keeps its trailing whitespace."""
    escaped = False
    end = len(line)
    for index, char in enumerate(line):
        if not escaped and (char in "=:" or char in _WHITESPACE):
            end = index
            break
        escaped = char == "\\" and not escaped
    key, rest = line[:end], line[end:]
    rest = rest.lstrip(_WHITESPACE)
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(_WHITESPACE)
    return key, rest


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out = []
    index = 0
    while index < len(text):
        char = text[index]
        index += 1
        if char != "\\":
            out.append(char)
            continue
        if index == len(text):  # a dangling backslash: Java drops it
            break
        char = text[index]
        index += 1
        if char == "u":
            digits = text[index:index + 4]
            if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"malformed \\uxxxx escape: \\u{digits}")
            out.append(chr(int(digits, 16)))
            index += 4
        else:
            out.append(_ESCAPES.get(char, char))
    joined = "".join(out)
    # \uD83D\uDE00 is one character written as a UTF-16 surrogate pair
    return joined.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# ---------------------------------------------------------------------- the keys

@dataclass(frozen=True)
class TsConfig:
    """What a config.properties (and, when it allows, the TS_* variables) says.

    `settings` holds only what was given: names of `zerobatch start` options (argparse dests)
    and, for settings with no flag, ServerConfig fields (`startup_timeout_s` is every model's).
    `models` is the `models` JSON: name -> version -> ModelConfig field -> value."""

    path: str
    settings: dict[str, Any]
    models: dict[str, dict[str, dict[str, int]]]
    warnings: tuple[str, ...]


def load(path: str, environ: Mapping[str, str]) -> TsConfig:
    """Read the config.properties at path; environ gives `$$NAME$$` and the TS_* variables."""
    try:
        with open(path, "rb") as handle:
            text = decode(handle.read())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the TorchServe configuration: "
                          f"{exc.strerror or exc}") from None
    try:
        props = parse_properties(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return configure(props, path, environ)


def configure(props: Mapping[str, str], path: str, environ: Mapping[str, str]) -> TsConfig:
    """Map the properties read from path onto zerobatch's settings (see the module doc)."""
    sources = {key: f"{path}: {key}" for key in props}
    values = dict(props)
    for key, value in values.items():  # $$NAME$$, always (resolveEnvVarVals)
        values[key] = _substitute(value, sources[key], environ)
    if _boolean(values.get("enable_envvars_config", "false"), sources.get(
            "enable_envvars_config", "")):
        env_allowed_urls = _boolean(values.get("use_env_allowed_urls", "false"),
                                    sources.get("use_env_allowed_urls", ""))
        for key, env_name in _ENV_NAMES.items():
            if env_name in environ and (key != "allowed_urls" or env_allowed_urls):
                values[key] = environ[env_name]
                sources[key] = f"{path}: {key} (from the environment variable {env_name})"
    settings: dict[str, Any] = {}
    warnings: list[str] = []
    models: dict[str, dict[str, dict[str, int]]] = {}
    for key, value in values.items():
        where = sources[key]
        if key == "models":
            models = _models_json(value, where, warnings)
        elif key in _KEYS:
            settings.update(_KEYS[key](value, where))
        elif key in _WARNED_KEYS:
            settings.update(_WARNED_KEYS[key](value, where, warnings))
        elif key in IGNORED_KEYS:
            warnings.append(f"{where}: a TorchServe setting that zerobatch does not implement; "
                            "ignored" + _IGNORED_ADVICE.get(key, ""))
        else:
            warnings.append(f"{where}: unknown key; ignored")
    return TsConfig(path=path, settings=settings, models=models, warnings=tuple(warnings))


def store_models(entries: Iterable[tuple[str, bool]]) -> list[str]:
    """What `load_models=all` serves from a model store, given its (name, is_directory)
    entries: directories and .mar, .model and .tar.gz files, hidden ones skipped, sorted."""
    return sorted(name for name, is_dir in entries
                  if not name.startswith(".") and (is_dir or name.endswith(STORE_MODEL_SUFFIXES)))


def is_all(specs: list[str]) -> bool:
    """Whether a model list is TorchServe's `all` (any case): every model in the store."""
    return len(specs) == 1 and specs[0].lower() == "all"


def _substitute(value: str, where: str, environ: Mapping[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{where}: $${name}$$ names an environment variable that is not "
                              "set")
        return environ[name]
    return _SUBSTITUTION.sub(replace, value)


def _integer(minimum: int, dest: str) -> Callable[[str, str], dict[str, Any]]:
    def convert(value: str, where: str) -> dict[str, Any]:
        text = value.strip()
        if not _INTEGER.fullmatch(text) or not minimum <= int(text) <= _JAVA_INT_MAX:
            raise ConfigError(f"{where}: must be an integer >= {minimum}, got {value!r}")
        return {dest: int(text)}
    return convert


def _boolean(value: str, where: str) -> bool:
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise ConfigError(f"{where}: must be true or false, got {value!r}")
    return text == "true"


def _flag(dest: str | None) -> Callable[[str, str], dict[str, Any]]:
    def convert(value: str, where: str) -> dict[str, Any]:
        flag = _boolean(value, where)
        return {dest: flag} if dest else {}
    return convert


def split_address(value: str, where: str,
                  default_ports: tuple[int, int]) -> tuple[bool, str, int]:
    """(https, host, port) of an `http://HOST[:PORT]` or `https://HOST[:PORT]` address (any
    case); without a port, default_ports[0] for http and default_ports[1] for https, as
    TorchServe's Connector.parse; unix: is refused."""
    match = _ADDRESS.fullmatch(value.strip())
    if not match:
        raise ConfigError(f"{where}: {value!r} is not an address of the form http://HOST:PORT "
                          "or https://HOST:PORT")
    if match.group(4) is not None:
        raise ConfigError(f"{where}: unix: socket addresses are not supported; use "
                          "http://HOST:PORT")
    https = match.group(1).lower() == "https"
    port = int(match.group(3)) if match.group(3) is not None else default_ports[https]
    if port >= 65535:  # TorchServe's own bound (Connector.parse)
        raise ConfigError(f"{where}: port {port} must be below 65535")
    return https, match.group(2), port


def parse_address(value: str, where: str, default_port: int) -> tuple[str, int]:
    """(host, port) of an http:// or https:// address (see split_address); default_port
    when it gives none."""
    _, host, port = split_address(value, where, (default_port, default_port))
    return host, port


def _minutes(dest: str) -> Callable[[str, str], dict[str, Any]]:
    def convert(value: str, where: str) -> dict[str, Any]:
        try:
            minutes = float(value)
        except ValueError:
            minutes = float("nan")
        if not 0 < minutes < float("inf"):
            raise ConfigError(f"{where}: must be a number of minutes above 0, got {value!r}")
        return {dest: minutes}
    return convert


def _workers(value: str, where: str) -> dict[str, Any]:
    """default_workers_per_model; 0 (TorchServe's "as many as GPUs, else CPUs") leaves
    zerobatch's default, one worker per model."""
    workers = _integer(0, "workers")(value, where)
    return workers if workers["workers"] else {}


def _inference_address(value: str, where: str) -> dict[str, Any]:
    """host and port; https:// also sets inference_https (TLS, with certificate_file and
    private_key_file)."""
    https, host, port = split_address(value, where, INFERENCE_PORTS)
    settings: dict[str, Any] = {"host": host, "http_port": port}
    if https:
        settings["inference_https"] = True
    return settings


def _stored_address(dest: str, default_ports: tuple[int, int]
                    ) -> Callable[[str, str], dict[str, Any]]:
    """The address as a URL with its scheme (http or https) and its port always given."""
    def convert(value: str, where: str) -> dict[str, Any]:
        https, host, port = split_address(value, where, default_ports)
        return {dest: f"{'https' if https else 'http'}://{host}:{port}"}
    return convert


def _text(dest: str) -> Callable[[str, str], dict[str, Any]]:
    def convert(value: str, where: str) -> dict[str, Any]:
        text = value.strip()
        if not text:
            raise ConfigError(f"{where}: must not be empty")
        return {dest: text}
    return convert


def _load_models(value: str, where: str) -> dict[str, Any]:
    """`all`, or a comma list of `NAME=PATH` / `PATH` (TorchServe skips empty items)."""
    specs = [item.strip() for item in value.split(",") if item.strip()]
    return {"models": specs}


def _allowed_urls(value: str, where: str) -> dict[str, Any]:
    patterns = tuple(item for item in value.split(",") if item)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}: {pattern!r} is not a regular expression: {exc}") from None
    if not patterns:
        raise ConfigError(f"{where}: must list at least one regular expression")
    return {"allowed_urls": patterns}


def _model_snapshot(value: str, where: str) -> dict[str, Any]:
    try:
        snapshot = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(snapshot, dict):
        raise ConfigError(f"{where}: must be a JSON object")
    return {"model_snapshot": value}


#: models JSON keys applied to a ModelConfig (ModelManager.createModel, ModelServer)
MODEL_INT_KEYS = {"minWorkers": "workers", "batchSize": "batch_size",
                  "maxBatchDelay": "max_batch_delay_ms", "responseTimeout": "response_timeout_s",
                  "startupTimeout": "startup_timeout_s"}
#: models JSON keys TorchServe reads for snapshots or ignores at load_models: accepted
MODEL_ACCEPTED_KEYS = ("maxWorkers", "defaultVersion", "marName", "runtimeType", "parallelLevel")


def _models_json(value: str, where: str, warnings: list[str]) -> dict[str, dict[str, dict]]:
    """`{"name": {"version": {"minWorkers": 1, "batchSize": 4, ...}}}`. As in TorchServe
    (ConfigManager.getJsonIntValue) a number <= 0 means the default; a value that is not an
    integer is refused (TorchServe logs it and uses the default)."""
    try:
        config = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: not valid JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: must be a JSON object {{name: {{version: {{...}}}}}}")
    models: dict[str, dict[str, dict[str, int]]] = {}
    for name, versions in config.items():
        if not isinstance(versions, dict):
            raise ConfigError(f"{where}: {name}: must be an object of versions, got "
                              f"{type(versions).__name__}")
        for version, settings in versions.items():
            at = f"{where}: {name} {version}"
            if not isinstance(settings, dict):
                raise ConfigError(f"{at}: must be an object of settings, got "
                                  f"{type(settings).__name__}")
            fields: dict[str, int] = {}
            for key, raw in settings.items():
                if key in MODEL_INT_KEYS or key == "maxWorkers":
                    number = _json_integer(raw, f"{at}: {key}")
                    if number <= 0:
                        warnings.append(f"{at}: {key} {number} is not above 0: the default "
                                        "applies, as in TorchServe")
                    elif key in MODEL_INT_KEYS:
                        fields[MODEL_INT_KEYS[key]] = number
                    else:
                        fields["max_workers"] = number
                elif key not in MODEL_ACCEPTED_KEYS:
                    warnings.append(f"{at}: {key} is not a TorchServe model setting; ignored")
            max_workers = fields.pop("max_workers", None)
            if max_workers is not None and "workers" in fields:
                if max_workers < fields["workers"]:
                    raise ConfigError(f"{at}: maxWorkers ({max_workers}) is smaller than "
                                      f"minWorkers ({fields['workers']}); raise maxWorkers")
            if max_workers is not None:
                fields["max_workers"] = max_workers
            models.setdefault(name, {})[version] = fields
    return models


def _json_integer(raw: Any, where: str) -> int:
    """An integer, or a string of one (Gson's getAsInt reads both)."""
    if isinstance(raw, str) and _INTEGER.fullmatch(raw.strip()):
        return int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise ConfigError(f"{where}: must be an integer, got {raw!r}")
    return raw


#: the keys applied or stored: key -> converter(value, where) -> {setting: value}
_KEYS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    # applied
    "inference_address": _inference_address,
    "model_store": _text("model_store"),
    "load_models": _load_models,
    "default_workers_per_model": _workers,
    "number_of_gpu": _integer(0, "number_of_gpu"),
    "job_queue_size": _integer(1, "max_queue"),
    "max_request_size": _integer(1, "max_request_size"),
    "default_response_timeout": _integer(1, "response_timeout"),
    "install_py_dep_per_model": _flag("install_py_dep_per_model"),
    "enable_envvars_config": _flag(None),  # acted on in configure()
    "certificate_file": _text("certificate_file"),  # TLS for the https:// addresses (PEM)
    "private_key_file": _text("private_key_file"),
    "use_env_allowed_urls": _flag(None),
    "default_startup_timeout": _integer(1, "startup_timeout_s"),
    "management_address": _stored_address("management_address", MANAGEMENT_PORTS),
    "metrics_address": _stored_address("metrics_address", METRICS_PORTS),
    "allowed_urls": _allowed_urls,
    "disable_token_authorization": _flag("disable_token_auth"),
    "enable_model_api": _flag("enable_model_api"),
    "model_snapshot": _model_snapshot,
    "token_expiration_min": _minutes("token_expiration_min"),
    # stored, not acted on yet
    "max_response_size": _integer(1, "max_response_bytes"),
    # zerobatch's own key (TorchServe ignores the keys it does not know)
    "zerobatch_answers": _flag("zerobatch_answers"),
}


def _metrics_mode(value: str, where: str, warnings: list[str]) -> dict[str, Any]:
    """TorchServe's metrics_mode (MetricBuilder.MetricMode, whitespace removed, any case):
    prometheus; log and legacy are accepted, with a warning, and serve as prometheus does."""
    mode = "".join(value.split()).lower()
    if mode not in ("prometheus", "log", "legacy"):
        raise ConfigError(f"{where}: must be prometheus, log or legacy, got {value!r}")
    if mode != "prometheus":
        warnings.append(f"{where}: {mode}: zerobatch writes no metric log; its metrics are "
                        "served as Prometheus text by the metrics API on metrics_address, as "
                        "with metrics_mode=prometheus")
    return {"metrics_mode": mode}


def _metrics_config(value: str, where: str, warnings: list[str]) -> dict[str, Any]:
    """TorchServe's metrics_config, a metrics.yaml: its model_metrics reach the handlers'
    metric caches (worker.service); a warning says that its ts_metrics change nothing."""
    settings = _text("metrics_config")(value, where)
    warnings.append(f"{where}: its model_metrics are declared in each "
                    "handler's metric cache, as in TorchServe; its ts_metrics are not applied: "
                    "the front end's, broker's and metrics API's families are fixed")
    return settings


#: the keys applied or stored with a warning: key -> converter(value, where, warnings)
_WARNED_KEYS: dict[str, Callable[[str, str, list[str]], dict[str, Any]]] = {
    "metrics_mode": _metrics_mode,
    "metrics_config": _metrics_config,
}

#: TorchServe 0.12's other keys (ConfigManager, ts/model_server.py): warned and ignored
IGNORED_KEYS = frozenset({
    "debug", "blacklist_env_vars", "unregister_model_timeout", "number_of_netty_threads",
    "netty_client_threads", "model_metrics_auto_detect",
    "disable_system_metrics", "ipex_enable", "cpu_launcher_enable", "cpu_launcher_args",
    "ipex_gpu_enable", "async_logging", "cors_allowed_origin", "cors_allowed_methods",
    "cors_allowed_headers", "decode_input_request", "keystore", "keystore_pass",
    "keystore_type", "limit_max_image_pixels",
    "default_service_handler", "service_envelope", "model_server_home",
    "prefer_direct_buffer", "enable_metrics_api", "grpc_inference_address",
    "grpc_management_address", "grpc_inference_port", "grpc_management_port",
    "grpc_inference_max_connection_age_ms", "grpc_management_max_connection_age_ms",
    "grpc_inference_max_connection_age_grace_ms", "grpc_management_max_connection_age_grace_ms",
    "enable_grpc_ssl", "initial_worker_port", "initial_distribution_port", "workflow_store",
    "cpp_log_config", "ts_open_inference_protocol",
    "ts_header_key_sequence_id", "ts_header_key_sequence_start", "ts_header_key_sequence_end",
    "use_native_io", "io_ratio", "metric_time_interval", "system_metrics_cmd", "python",
    "vmargs", "plugins_path",
})

#: what to do instead of an ignored key, appended to its warning
_IGNORED_ADVICE = dict.fromkeys(
    ("keystore", "keystore_pass", "keystore_type"),
    ": zerobatch reads no Java keystore; give the certificate chain and the private key as "
    "PEM files with certificate_file and private_key_file (`openssl pkcs12 -in KEYSTORE "
    "-nodes` prints both from a PKCS12 keystore)")

#: keys with no TS_* variable (ConfigManager's constants without the TS_ prefix)
_NOT_FROM_ENV = frozenset({"enable_envvars_config", "use_env_allowed_urls", "model_snapshot",
                           "zerobatch_answers",
                           "models", "use_native_io", "io_ratio", "metric_time_interval",
                           "system_metrics_cmd", "python", "vmargs", "plugins_path"})
#: key -> its TS_* variable: the ConfigManager constant's name, TS_ + the key in capitals but
#: for these
_ENV_NAMES = {key: "TS_" + key.upper()
              for key in sorted((set(_KEYS) | set(_WARNED_KEYS) | IGNORED_KEYS)
                                - _NOT_FROM_ENV)}
_ENV_NAMES.update({key: key.upper() for key in _ENV_NAMES if key.startswith("ts_")})
_ENV_NAMES["token_expiration_min"] = "TS_TOKEN_EXPIRATION_TIME_MIN"


def env_name(key: str) -> str | None:
    """The TS_* variable that sets key when enable_envvars_config is true (None: none does)."""
    return _ENV_NAMES.get(key)
