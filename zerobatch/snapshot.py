"""Model snapshots: the registered models and their worker counts, kept across restarts.

TorchServe's semantics (docs/snapshot.md): after startup, after each management call that
changes the models, and at a requested stop, the server saves a `config.properties` whose
`model_snapshot` key holds the models as JSON:

    {"name": "<file>", "modelCount": N, "created": <epoch ms>,
     "models": {name: {version: {"defaultVersion": bool, "marName": "m.mar",
                                 "minWorkers": 1, "maxWorkers": 1, "batchSize": 1,
                                 "maxBatchDelay": 100, "responseTimeout": 120,
                                 "startupTimeout": 120, "runtimeType": "python"}}}}

The files are `RUN_DIR/config/<yyyyMMddHHmmssSSS>-<startup|snapshot|shutdown>.cfg` (TorchServe:
./logs/config/), private to the user, written whole or not at all; the newest KEEP_FILES stay.
`zerobatch start` with neither --ts-config nor --models restores the newest one, and
`--ts-config FILE.cfg` a chosen one, as in TorchServe; with `--ncs` (--no-config-snapshots)
nothing is saved or restored. (TorchServe restores the newest snapshot even when --models is
given, and ignores those models; zerobatch lets the explicit command line win.) The broker
builds the model table from its registry; this module only formats, writes and reads.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from zerobatch.config import ModelConfig, ServerConfig

SNAPSHOT_DIR = "config"
SUFFIX = ".cfg"
#: snapshot files kept; older ones are removed when a new one is saved
KEEP_FILES = 20
#: snapshot keys -> ModelConfig fields
MODEL_FIELDS = {"minWorkers": "workers", "maxWorkers": "max_workers",
                "batchSize": "batch_size", "maxBatchDelay": "max_batch_delay_ms",
                "responseTimeout": "response_timeout_s", "startupTimeout": "startup_timeout_s"}


def mar_name(model: ModelConfig) -> str:
    """What restores the model from the model store: the entry it was given as, the path of a
    file:// URL, the file name an http(s) URL was downloaded to, or its directory."""
    url = model.url
    if url.startswith("file://"):
        return url[len("file://"):]
    if url.startswith(("http://", "https://")):
        return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return url or model.path


def model_table(models: Iterable[tuple[ModelConfig, bool, int]]) -> dict[str, dict[str, dict]]:
    """{name: {version: {...}}} of (model, is the default version, maxWorkers) triples."""
    table: dict[str, dict[str, dict]] = {}
    for model, default, max_workers in models:
        table.setdefault(model.name, {})[model.version] = {
            "defaultVersion": default, "marName": mar_name(model),
            "minWorkers": model.workers, "maxWorkers": max(max_workers, model.workers),
            "batchSize": model.batch_size, "maxBatchDelay": model.max_batch_delay_ms,
            "responseTimeout": model.response_timeout_s,
            "startupTimeout": model.startup_timeout_s, "runtimeType": "python"}
    return table


def properties_text(config: ServerConfig, name: str, table: dict[str, dict[str, dict]],
                    created_ms: int) -> str:
    """The snapshot file: the server settings `zerobatch start --ts-config` reads back, and
    model_snapshot. Unlike TorchServe's, it leaves out the settings that open the server
    (enable_model_api, disable_token_authorization): a restore never relaxes security that
    the command line restoring it did not relax itself."""
    snapshot = {"name": name, "modelCount": sum(len(v) for v in table.values()),
                "created": created_ms, "models": table}
    inference = "https" if config.inference_https else "http"
    lines = [
        "# zerobatch model snapshot (TorchServe's format); `zerobatch start --ts-config FILE`",
        f"inference_address={inference}://{config.host}:{config.http_port}",
        f"management_address={config.management_address}",
        f"model_store={config.model_store}",
        f"max_request_size={config.max_request_bytes}",
        f"allowed_urls={','.join(config.allowed_urls)}",
        f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}",
    ]
    if config.number_of_gpu is not None:
        lines.append(f"number_of_gpu={config.number_of_gpu}")
    if config.certificate_file:
        lines += [f"certificate_file={config.certificate_file}",
                  f"private_key_file={config.private_key_file}"]
    # a properties value keeps its backslashes only escaped
    return "\n".join(line.replace("\\", "\\\\") for line in lines) + "\n"


def save(run_dir: str, kind: str, config: ServerConfig, table: dict[str, dict[str, dict]],
         now_s: float | None = None) -> str:
    """Write a snapshot of `kind` (startup, snapshot, shutdown); its path."""
    now_s = time.time() if now_s is None else now_s
    directory = os.path.join(run_dir, SNAPSHOT_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now_s)) + f"{int(now_s * 1000) % 1000:03d}"
    name = f"{stamp}-{kind}{SUFFIX}"
    path = os.path.join(directory, name)
    text = properties_text(config, name, table, int(now_s * 1000))
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)
    _prune(directory)
    return path


def _files(directory: str) -> list[str]:
    """The snapshot files of directory, oldest first (their names sort by time)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names if n.endswith(SUFFIX) and n[:17].isdigit())


def _prune(directory: str) -> None:
    for name in _files(directory)[:-KEEP_FILES]:
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def latest(run_dir: str) -> str | None:
    """The newest snapshot file of run_dir, or None."""
    directory = os.path.join(run_dir, SNAPSHOT_DIR)
    files = _files(directory)
    return os.path.join(directory, files[-1]) if files else None


def models_of(snapshot_text: str, where: str
              ) -> tuple[list[str], dict[str, dict[str, dict[str, Any]]]]:
    """The model specs (`name=marName`, each model's default version first) and the
    per-version ModelConfig settings of a model_snapshot value. Raises ValueError naming
    `where` for a snapshot that is not TorchServe's shape."""
    snapshot = json.loads(snapshot_text)
    models = snapshot.get("models", {}) if isinstance(snapshot, Mapping) else None
    if not isinstance(models, Mapping):
        raise ValueError(f"{where}: model_snapshot has no \"models\" object")
    specs: list[str] = []
    settings: dict[str, dict[str, dict[str, Any]]] = {}
    for name, versions in models.items():
        if not isinstance(versions, Mapping):
            raise ValueError(f"{where}: model_snapshot: {name}: not an object of versions")
        ordered = sorted(versions.items(),
                         key=lambda item: not (isinstance(item[1], Mapping)
                                               and item[1].get("defaultVersion")))
        for version, entry in ordered:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("marName"), str):
                raise ValueError(f"{where}: model_snapshot: {name} {version}: no marName")
            specs.append(f"{name}={entry['marName']}")
            fields = {}
            for key, field_name in MODEL_FIELDS.items():
                value = entry.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    fields[field_name] = value
            settings.setdefault(name, {})[str(version)] = fields
    return specs, settings
