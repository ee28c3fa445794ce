"""Helpers of the management app (api/management_app.py): TorchServe's JSON and error answers,
its parameter parsing, the model list's paging, the describe entries in TorchServe's shape
built from the broker's `describe`, the workers' memory and start time read from /proc, and
the OpenAPI descriptions (api/openapi/management.json, and the inference app's
api/openapi/inference.json).

TorchServe 0.12 is the reference; the Java sources named below are under
frontend/server/src/main/java/org/pytorch/serve/ in github.com/pytorch/serve at v0.12.0.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from typing import Any

import falcon

from zerobatch.errors import (
    BadRequest,
    BrokerUnavailable,
    Conflict,
    DeadlineExceeded,
    ModelNotFound,
    ServingError,
    ShuttingDown,
)

JSON = "application/json"
#: exception texts of http/ResourceNotFoundException.java and MethodNotAllowedException.java
NOT_FOUND_MESSAGE = "Requested resource is not found, please refer to API document."
METHOD_NOT_ALLOWED_MESSAGE = "Requested method is not allowed, please refer to API document."
#: ApiUtils.getModelList: a limit outside [0, 100] is 100
MAX_LIST_LIMIT = 100
_INT32 = re.compile(r"[+-]?[0-9]+\Z")
#: the OpenAPI descriptions, one `<api>.json` per port (package data)
_OPENAPI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi")
#: the paths of the per-model description (OpenApiUtils.getModelManagementApi)
_MODEL_PATHS = ("/models/{model_name}", "/models/{model_name}/{model_version}",
                "/models/{model_name}/{model_version}/set-default")


def ts_json(value: Any) -> bytes:
    """JSON as TorchServe sends it (util/NettyUtils.sendJsonResponse): Gson's pretty printing
    (two-space indent, ": " after keys, no HTML escaping, non-ASCII as is), then '\n'."""
    return json.dumps(value, indent=2, ensure_ascii=False).encode() + b"\n"


class ApiError(ServingError):
    """An error answered in TorchServe's shape (http/ErrorResponse.java): the HTTP status,
    the simple name of the Java exception TorchServe answers with, and its message."""

    code = "management_error"

    def __init__(self, status: int, type_name: str, message: str) -> None:
        super().__init__(message, status=status)
        self._type_name = type_name

    @property
    def type_name(self) -> str:
        return self._type_name


def model_not_found(name: str) -> ApiError:
    """ApiUtils.getModelDescription / updateModelWorkers: HttpRequestHandler answers 404."""
    return ApiError(404, "ModelNotFoundException", f"Model not found: {name}")


def version_not_found(name: str, version: str) -> ApiError:
    """wlm/ModelManager.getModel and updateModel (unregister says the same)."""
    return ApiError(404, "ModelVersionNotFoundException",
                    f"Model version: {version} does not exist for model: {name}")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequestException", message)


def not_implemented(message: str) -> ApiError:
    """What TorchServe does and zerobatch's broker cannot do yet (TorchServe has no 501)."""
    return ApiError(501, "NotImplementedException", message)


def error_answer(error: ServingError) -> tuple[int, bytes]:
    """The status and body of a ServingError, as TorchServe's HttpRequestHandler maps its
    exceptions: a broker that does not answer is a ServiceUnavailableException (503)."""
    if isinstance(error, ApiError):
        status, type_name = error.http_status, error.type_name
    elif isinstance(error, ModelNotFound):
        status, type_name = 404, "ModelNotFoundException"
    elif isinstance(error, Conflict):
        status, type_name = 409, "ConflictStatusException"
    elif isinstance(error, BadRequest):
        status, type_name = 400, "BadRequestException"
    elif isinstance(error, (BrokerUnavailable, DeadlineExceeded, ShuttingDown)):
        status, type_name = 503, "ServiceUnavailableException"
    else:
        status, type_name = 500, "InternalServerException"
    return status, error_body(status, type_name, error.message)


def error_body(status: int, type_name: str, message: str) -> bytes:
    return ts_json({"code": status, "type": type_name, "message": message})


def serialize_http_error(req: falcon.Request, resp: falcon.Response,
                         error: falcon.HTTPError) -> None:
    """falcon's own errors in TorchServe's words, for the management and metrics APIs:
    ResourceNotFoundException (an unknown path), MethodNotAllowedException, and the status's
    own name otherwise."""
    status = error.status_code
    if status == 404:
        type_name, message = "ResourceNotFoundException", NOT_FOUND_MESSAGE
    elif status == 405:
        type_name, message = "MethodNotAllowedException", METHOD_NOT_ALLOWED_MESSAGE
    else:
        type_name = "BadRequestException" if status == 400 else type(error).__name__
        message = error.description or error.title or str(status)
    resp.content_type = JSON
    resp.data = error_body(status, type_name, message)


# ------------------------------------------------------------------ parameters

def param(params: dict, name: str) -> str | None:
    """A query parameter's first value (Netty's QueryStringDecoder keeps them all and
    NettyUtils.getParameter takes the first; falcon's get_param would take the last)."""
    value = params.get(name)
    if isinstance(value, list):
        return value[0] if value else None
    return value


def java_int(text: str | None) -> int | None:
    """Integer.parseInt's answer, or None where it throws: an optional sign and ASCII
    digits, within 32 bits (Python's int() also takes spaces, '_' and other digits)."""
    if text is None or not _INT32.match(text):
        return None
    value = int(text)
    return value if -2**31 <= value < 2**31 else None


def lenient_int(params: dict, name: str, default: int) -> int:
    """NettyUtils.getIntParameter: missing or not an integer means the default."""
    value = java_int(param(params, name))
    return default if value is None else value


def strict_int(params: dict, name: str, default: int) -> int:
    """An integer parameter that is refused (400) when it is not one. TorchServe's scale
    call reads a bad number as its default (min_worker=abc is 1 worker); zerobatch refuses
    it rather than rescale a model on a typo."""
    text = param(params, name)
    if text is None:
        return default
    value = java_int(text)
    if value is None:
        raise bad_request(f"Parameter {name} must be an integer, got {text[:32]!r}.")
    return value


def java_bool(params: dict, name: str) -> bool:
    """Boolean.parseBoolean: "true" in any case is true, anything else (or nothing) false."""
    value = param(params, name)
    return value is not None and value.lower() == "true"


# ------------------------------------------------------------------ listing

def list_page(models: list[tuple[str, str | None]], limit: int, page_token: int) -> dict:
    """ApiUtils.getModelList over (name, modelUrl) of each model's default version: sorted by
    name, `limit` from `page_token`. As there, nextPageToken is given whenever the page ends
    at or before the last model (so a page that ends exactly at the end has one too)."""
    if limit > MAX_LIST_LIMIT or limit < 0:
        limit = MAX_LIST_LIMIT
    page_token = max(page_token, 0)
    ordered = sorted(models)
    answer: dict[str, Any] = {}
    last = page_token + limit
    if last > len(ordered):
        last = len(ordered)
    else:
        answer["nextPageToken"] = str(last)
    # ListModelsResponse declares nextPageToken before models: Gson writes it first
    answer["models"] = [_without_nulls({"modelName": name, "modelUrl": url})
                        for name, url in ordered[page_token:last]]
    return answer


def _without_nulls(fields: dict) -> dict:
    return {key: value for key, value in fields.items() if value is not None}


# ------------------------------------------------------------------ describe

def versions_of(described: dict, name: str) -> list[dict]:
    """The broker's describe entries of every version of `name`, or ModelNotFoundException."""
    entries = [entry for entry in described.get("models", ())
               if entry.get("modelName") == name]
    if not entries:
        raise model_not_found(name)
    return entries


def select(described: dict, name: str, version: str | None, *,
           all_versions: bool = False) -> list[dict]:
    """The entries a path names: the default version (version None), every version ("all",
    where all_versions), or one version (ModelVersionNotFoundException if absent)."""
    entries = versions_of(described, name)
    if version is None:
        defaults = [entry for entry in entries if entry.get("default")]
        return defaults[:1] or entries[:1]
    if all_versions and version == "all":
        return entries
    for entry in entries:
        if entry.get("modelVersion") == version:
            return [entry]
    raise version_not_found(name, version)


#: broker describe keys that TorchServe's DescribeModelResponse shows under its own name
_TS_KEYS = ("modelName", "modelVersion", "modelUrl", "runtime", "minWorkers", "maxWorkers",
            "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout", "deviceType",
            "deviceIds", "loadedAtStartup", "workers")


def ts_describe(entry: dict) -> dict:
    """One DescribeModelResponse (ApiUtils.createModelResponse) from a broker describe entry,
    in Gson's field order, with every other figure the broker gives under "zerobatch".

    Until the broker's describe reports them: minWorkers is the live worker count,
    maxWorkers is minWorkers, runtime is "python" (the only runtime zerobatch loads),
    loadedAtStartup is true (every model is loaded at start), and modelUrl and
    jobQueueStatus.remainingCapacity are left out as Gson leaves out a null."""
    workers = [worker for worker in entry.get("workers") or () if isinstance(worker, dict)]
    min_workers = entry.get("minWorkers", len(workers))
    queued = entry.get("queued", 0)
    max_queue = entry.get("maxQueue")
    described = _without_nulls({
        "modelName": entry.get("modelName"),
        "modelVersion": entry.get("modelVersion"),
        "modelUrl": entry.get("modelUrl"),
        "runtime": entry.get("runtime", "python"),
        "minWorkers": min_workers,
        "maxWorkers": entry.get("maxWorkers", min_workers),
        "batchSize": entry.get("batchSize"),
        "maxBatchDelay": entry.get("maxBatchDelay"),
        "responseTimeout": entry.get("responseTimeout"),
        "startupTimeout": entry.get("startupTimeout"),
        "deviceType": entry.get("deviceType"),
        "deviceIds": entry.get("deviceIds"),
        "loadedAtStartup": entry.get("loadedAtStartup", True),
    })
    described["workers"] = [ts_worker(worker) for worker in workers]
    described["jobQueueStatus"] = _without_nulls({
        "remainingCapacity": max(max_queue - queued, 0) if isinstance(max_queue, int) else None,
        "pendingRequests": queued,
    })
    own = {key: value for key, value in entry.items() if key not in _TS_KEYS}
    own["workerStatus"] = {str(worker.get("id")): worker.get("status") for worker in workers}
    described["zerobatch"] = own
    return described


def ts_worker(worker: dict) -> dict:
    """One DescribeModelResponse.Worker: status READY (running, model loaded: zerobatch's
    READY and BUSY) or UNLOADING (retiring), memoryUsage as the process's resident bytes
    (0 when unknown, as TorchServe shows before its first memory metric), gpu when it has a
    gpu id, gpuUsage "N/A" (zerobatch does not measure it)."""
    pid = worker.get("pid")
    start_ms = worker.get("startTime")
    if not isinstance(start_ms, int) and isinstance(pid, int):
        start_ms = process_start_ms(pid)
    retiring = worker.get("retiring") or worker.get("status") in ("RETIRING", "UNLOADING")
    gpu = worker.get("gpu")
    return _without_nulls({
        "id": str(worker.get("id")),
        "startTime": gson_date(start_ms) if isinstance(start_ms, int) else None,
        "status": "UNLOADING" if retiring else "READY",
        "memoryUsage": resident_bytes(pid) if isinstance(pid, int) else 0,
        "pid": pid,
        "gpu": isinstance(gpu, int) and not isinstance(gpu, bool) and gpu >= 0,
        "gpuUsage": "N/A",
    })


def gson_date(epoch_ms: int) -> str:
    """util/JsonUtils's date format, yyyy-MM-dd'T'HH:mm:ss.SSS'Z', in UTC (TorchServe prints
    the JVM's local time before its literal Z: the same in a UTC container)."""
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def resident_bytes(pid: int) -> int:
    """The process's resident memory (VmRSS) in bytes, 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@functools.lru_cache(maxsize=1)
def _boot_time_s() -> int | None:
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def process_start_ms(pid: int) -> int | None:
    """When the process started (ms since the epoch), from /proc; None when unreadable."""
    boot_s = _boot_time_s()
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime, field 22, counted after "pid (comm)"
    except (OSError, ValueError, IndexError):
        return None
    if boot_s is None:
        return None
    return boot_s * 1000 + ticks * 1000 // os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ OpenAPI

@functools.lru_cache(maxsize=2)
def _openapi_text(api: str) -> str:
    with open(os.path.join(_OPENAPI_DIR, f"{api}.json"), encoding="utf-8") as handle:
        return handle.read()


def openapi(version: str, api: str = "management") -> dict:
    """An API's OpenAPI description (OpenApiUtils.listApis), info.version set: api is
    "management" (api/openapi/management.json) or "inference" (api/openapi/inference.json)."""
    document = json.loads(_openapi_text(api))
    document["info"]["version"] = version
    return document


def model_openapi(name: str, version: str) -> dict:
    """OpenApiUtils.getModelManagementApi: the model paths alone, titled for the model."""
    document = openapi(version)
    document["info"] = {"title": f"RESTful Management API for: {name}", "version": version}
    document["paths"] = {path: document["paths"][path] for path in _MODEL_PATHS}
    return document
