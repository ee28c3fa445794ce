"""A model's `model-config.yaml`: TorchServe's front-end keys applied to its ModelConfig.

The file is the model directory's `model-config.yaml`, or the one the manifest's
`model.configFile` names. Its front-end keys override the CLI's global flags for that model
(precedence: model-config.yaml > `zerobatch start` flags > defaults):

    minWorkers -> workers               batchSize -> batch_size
    maxBatchDelay -> max_batch_delay_ms responseTimeout -> response_timeout_s
    startupTimeout -> startup_timeout_s jobQueueSize -> max_queue
    clientTimeoutInMills -> default_timeout_ms
    deviceType ("cpu" | "gpu") -> device_type
    deviceIds -> device_ids (round robin over that list)
    maxWorkers -> max_workers (>= minWorkers): autoscaling runs between the two
    sequenceBatching -> sequence_batching (needs sequenceMaxIdleMSec > 0), with
    sequenceMaxIdleMSec -> sequence_max_idle_ms   sequenceTimeoutMSec -> sequence_timeout_ms
    maxSequenceJobQueueSize -> max_sequence_queue maxNumSequence -> max_sequences

Every other key is left for the handler (`context.model_yaml_config`). A bad value raises a
ConfigError naming the file and the key, and the broker refuses that model only.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from zerobatch import model_files
from zerobatch.config import ModelConfig
from zerobatch.errors import ConfigError

log = logging.getLogger("zerobatch.broker.model_yaml")


#: integer keys: yaml key -> (ModelConfig field, smallest value allowed)
INT_KEYS: dict[str, tuple[str, int]] = {
    "minWorkers": ("workers", 1),
    "batchSize": ("batch_size", 1),
    "maxBatchDelay": ("max_batch_delay_ms", 0),
    "responseTimeout": ("response_timeout_s", 1),
    "startupTimeout": ("startup_timeout_s", 1),
    "jobQueueSize": ("max_queue", 1),
    "clientTimeoutInMills": ("default_timeout_ms", 0),
    "sequenceMaxIdleMSec": ("sequence_max_idle_ms", 0),
    "sequenceTimeoutMSec": ("sequence_timeout_ms", 0),
    "maxSequenceJobQueueSize": ("max_sequence_queue", 0),  # 0 counts as 1, as in TorchServe
    "maxNumSequence": ("max_sequences", 0),
}
#: TorchServe front-end keys zerobatch does not implement: logged, then ignored
UNSUPPORTED_KEYS = ("parallelLevel", "parallelType", "torchrun", "continuousBatching",
                    "useJobTicket", "asyncCommunication")


def apply_front_end_keys(model: ModelConfig, config: dict[str, Any], path: str) -> ModelConfig:
    """model with the front-end keys of config (read from path) applied."""
    changes: dict[str, Any] = {}
    for key, (field_name, minimum) in INT_KEYS.items():
        if key in config:
            changes[field_name] = _integer(config[key], path, key, minimum)
    for field_name in ("max_sequence_queue", "max_sequences"):
        if field_name in changes:
            changes[field_name] = max(1, changes[field_name])
    if "maxWorkers" in config:
        max_workers = _integer(config["maxWorkers"], path, "maxWorkers", 1)
        min_workers = changes.get("workers", model.workers)
        if max_workers < min_workers:
            raise ConfigError(f"{path}: maxWorkers ({max_workers}) is smaller than minWorkers "
                              f"({min_workers}); raise maxWorkers")
        changes["max_workers"] = max_workers
    if "deviceType" in config:
        device_type = config["deviceType"]
        if not isinstance(device_type, str) or device_type.lower() not in ("cpu", "gpu"):
            raise ConfigError(f'{path}: deviceType must be "cpu" or "gpu", got {device_type!r}')
        changes["device_type"] = device_type.lower()
    if "deviceIds" in config:
        device_ids = config["deviceIds"]
        if (not isinstance(device_ids, list) or not device_ids
                or any(not isinstance(i, int) or isinstance(i, bool) or i < 0
                       for i in device_ids)):
            raise ConfigError(f"{path}: deviceIds must be a non-empty list of GPU ids (integers "
                              f">= 0), got {device_ids!r}")
        changes["device_ids"] = tuple(device_ids)
    if "sequenceBatching" in config:
        if not isinstance(config["sequenceBatching"], bool):
            raise ConfigError(f"{path}: sequenceBatching must be true or false, got "
                              f"{config['sequenceBatching']!r}")
        changes["sequence_batching"] = config["sequenceBatching"]
        if changes["sequence_batching"] and not changes.get("sequence_max_idle_ms",
                                                            model.sequence_max_idle_ms):
            raise ConfigError(f"{path}: sequenceBatching needs sequenceMaxIdleMSec (how long "
                              "an idle sequence lives, in ms) above 0; TorchServe serves no "
                              "request of such a model: set sequenceMaxIdleMSec")
    for key in UNSUPPORTED_KEYS:
        if key in config:
            log.warning("model %s: %s: %s is not supported by zerobatch; ignored", model.key,
                        path, key)
    batch_size = changes.get("batch_size", model.batch_size)
    max_queue = changes.get("max_queue", model.max_queue)
    if max_queue < batch_size:
        source = "jobQueueSize" if "max_queue" in changes else "the queue (--max-queue)"
        raise ConfigError(f"{path}: batchSize ({batch_size}) is larger than {source} "
                          f"({max_queue}); set jobQueueSize to at least batchSize")
    try:
        return replace(model, **changes)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def configure(model: ModelConfig, model_dir: str, manifest: dict) -> ModelConfig:
    """model with its model directory's YAML config applied (unchanged when it has none)."""
    path = model_files.model_config_path(model_dir, manifest)
    if path is None:
        return model
    configured = apply_front_end_keys(model, model_files.read_model_config(path), path)
    if configured != model:
        log.info("model %s: settings from %s: workers %d, batch size %d, max batch delay %d ms, "
                 "device %s", model.key, path, configured.workers, configured.batch_size,
                 configured.max_batch_delay_ms, configured.device_type)
    return configured


def _integer(value: Any, path: str, key: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{path}: {key} must be an integer >= {minimum}, got {value!r}")
    return value
