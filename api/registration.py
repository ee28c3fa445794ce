"""Registering a model through the management API: from `POST /models` parameters to the
ModelConfig the broker's `register` control call takes.

The steps, each refusing bad input with TorchServe's answer (ModelArchive.downloadModel,
ArchiveUtils, ApiUtils.registerModel at v0.12.0):

1. `url` is checked: required (400), no `..` anywhere (404 "Relative path is not allowed in
   url"), and an http(s):// or file:// URL must match one of `allowed_urls` (404 "Given URL
   ... does not match any allowed URL(s)").
2. It is resolved to a file or directory: a model store entry (a name, never leaving the
   store), a file:// path (used where it is, not copied), or an http(s):// archive
   downloaded into the model store under its file name (500 when that name exists there;
   at most `max_download_bytes`, counted while reading, so an endless body costs a bounded
   amount of disk; a failed download leaves nothing behind: 400).
3. The manifest names the model (unless `model_name` does) and its version.
4. The archive is extracted into the run directory, its model-config.yaml applied, its
   requirements installed when configured: by `python -m zerobatch.broker.prepare_model`, the
   broker's own preparation (broker/archive.py, with its limits) in a process of its own.

Everything here blocks (disk, network): the management app runs it in a thread, one
registration at a time, so loading never holds up the broker or the other models. Messages
quote the URL as the client gave it and never a server path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from zerobatch import model_files
from zerobatch.api import archiver
from zerobatch.api.management_helpers import ApiError
from zerobatch.config import DEFAULT_VERSION, ModelConfig
from zerobatch.errors import ConfigError, client_safe
from zerobatch.launch import module_argv

log = logging.getLogger("zerobatch.management")

#: the exit status of zerobatch.broker.prepare_model for a refused model
EXIT_REFUSED = 2

#: ArchiveUtils.VALID_URL_PATTERN: what counts as a URL (the rest names a model store entry)
VALID_URL = re.compile(r"(?i)(file?://.*|http(s)?://.*)")
DOWNLOAD_CHUNK_BYTES = 1 << 20
#: the longest one read of a download may wait, and the longest a whole download may take
DOWNLOAD_TIMEOUT_S = 60.0
DOWNLOAD_TOTAL_S = 900.0
#: TorchServe's runtime names for a Python handler; others are refused
PYTHON_RUNTIMES = ("python", "python3")


@dataclass(frozen=True)
class Source:
    """Where a registration's model is: `path` on this host, and whether it was downloaded
    into the model store for this registration (removed again if the registration fails, and
    when the model is unregistered, as TorchServe does)."""

    path: str
    downloaded: bool = False


def not_found(message: str) -> ApiError:
    return ApiError(404, "ModelNotFoundException", message)


def check_url(url: str | None, allowed_urls: tuple[str, ...]) -> str:
    """The url, if a registration may use it (step 1)."""
    if url is None:
        raise ApiError(400, "BadRequestException", "Parameter url is required.")
    if not url:
        raise not_found("empty url")
    if ".." in url:
        raise not_found(f"Relative path is not allowed in url: {url}")
    if VALID_URL.fullmatch(url) and not is_allowed(url, allowed_urls):
        raise not_found(f"Given URL {url} does not match any allowed URL(s)")
    return url


def resolve(url: str, model_store: str, max_download_bytes: int,
            allowed_urls: tuple[str, ...]) -> Source:
    """The file or directory a checked url names (step 2)."""
    lowered = url.lower()
    if lowered.startswith(("http://", "https://")):
        return Source(download(url, model_store, max_download_bytes, allowed_urls),
                      downloaded=True)
    if lowered.startswith("file://"):
        path = urllib.parse.unquote(url[len("file://"):])
    else:
        # a model store entry: a relative name, even when it starts with '/'
        path = os.path.join(model_store, url.lstrip("/"))
    if not os.path.exists(path):
        raise not_found(f"Model not found at: {url}")
    return Source(path)


def file_name_of(url: str) -> str:
    """The file name an http(s) URL downloads to (ArchiveUtils.getFilenameFromUrl)."""
    return os.path.basename(urllib.parse.urlsplit(url).path)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL that allowed_urls admits too (and with no '..'): a
    redirect must not take a download where the URL itself could not go."""

    def __init__(self, allowed_urls: tuple[str, ...]) -> None:
        self.allowed_urls = allowed_urls

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if ".." in newurl or not is_allowed(newurl, self.allowed_urls) \
                or not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.URLError(f"redirected to a URL outside allowed_urls: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def is_allowed(url: str, allowed_urls: tuple[str, ...]) -> bool:
    return any(re.fullmatch(pattern, url, re.IGNORECASE) for pattern in allowed_urls)


def download(url: str, model_store: str, max_bytes: int,
             allowed_urls: tuple[str, ...] = (".*",)) -> str:
    """Fetch url into the model store under its file name; the file's path. Redirects are
    followed only where allowed_urls admits them; the download is bounded in bytes (counted
    as they arrive) and in time (DOWNLOAD_TIMEOUT_S per read, DOWNLOAD_TOTAL_S in all)."""
    name = file_name_of(url)
    if not name or name.startswith(".") or "\\" in name:
        raise ApiError(400, "DownloadArchiveException",
                       f"Failed to download archive from: {url}: no file name in the URL")
    target = os.path.join(model_store, name)
    if os.path.lexists(target):
        raise ApiError(500, "InternalServerException", f"Model file already exists {name}")
    partial = f"{target}.{os.getpid()}.download"
    opener = urllib.request.build_opener(_CheckedRedirects(allowed_urls))
    deadline_s = time.monotonic() + DOWNLOAD_TOTAL_S
    try:
        with opener.open(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(partial, "xb") as out:
            received = 0
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                received += len(chunk)
                if received > max_bytes:
                    raise ApiError(400, "DownloadArchiveException",
                                   f"Failed to download archive from: {url}: larger than "
                                   f"{max_bytes} bytes")
                if time.monotonic() > deadline_s:
                    raise ApiError(400, "DownloadArchiveException",
                                   f"Failed to download archive from: {url}: it took longer "
                                   f"than {DOWNLOAD_TOTAL_S:.0f} s")
                out.write(chunk)
        os.link(partial, target)  # fails, rather than replaces, if the name appeared meanwhile
    except ApiError:
        raise
    except FileExistsError:
        raise ApiError(500, "InternalServerException",
                       f"Model file already exists {name}") from None
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise ApiError(400, "DownloadArchiveException",
                       f"Failed to download archive from: {url}: "
                       f"{client_safe(str(getattr(exc, 'reason', exc)))}") from None
    finally:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
    return target


def read_manifest(path: str, url: str) -> dict:
    """The manifest of a model directory or archive, without extracting (step 3)."""
    try:
        if os.path.isdir(path):
            return model_files.read_manifest(path)
        return archiver.read_archive_manifest(path)
    except (ConfigError, OSError, RecursionError) as exc:
        raise ApiError(400, "InvalidModelException",
                       f"{url} is not a model archive or directory: "
                       f"{client_safe(str(exc))}") from None


def model_config(source: Source, url: str, params: dict[str, Any],
                 defaults: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of a registration: the manifest's name and version (model_name wins),
    the call's settings over the server's defaults. `params` holds the parsed call:
    model_name, runtime, handler, batch_size, max_batch_delay, response_timeout,
    startup_timeout, initial_workers (ints already checked, None where not given)."""
    manifest = read_manifest(source.path, url)
    runtime = params.get("runtime")
    if runtime is not None and runtime.lower() not in PYTHON_RUNTIMES:
        raise ApiError(400, "BadRequestException",
                       f"runtime {runtime!r} is not supported: zerobatch runs Python handlers "
                       f"({', '.join(PYTHON_RUNTIMES)})")
    handler = params.get("handler")
    if handler and handler != manifest["model"].get("handler"):
        raise ApiError(400, "BadRequestException",
                       "handler: the archive's own handler runs; naming another one at "
                       "registration is not supported (rebuild the archive with "
                       "torch-model-archiver --handler)")
    name = params.get("model_name") or manifest["model"].get("modelName") or ""
    version = str(manifest["model"].get("modelVersion") or DEFAULT_VERSION)
    settings = dict(defaults)
    for param, field_name in (("batch_size", "batch_size"),
                              ("max_batch_delay", "max_batch_delay_ms"),
                              ("response_timeout", "response_timeout_s"),
                              ("startup_timeout", "startup_timeout_s")):
        value = params.get(param)
        if value is not None and value > 0:  # TorchServe: <= 0 means the default
            settings[field_name] = value
    settings["workers"] = max(params.get("initial_workers") or 0, 0)
    settings["max_queue"] = max(settings.get("max_queue", 0), settings.get("batch_size", 1))
    try:
        return ModelConfig(name=name, version=version, path=source.path, url=url, **settings)
    except ConfigError as exc:
        raise ApiError(400, "BadRequestException", str(exc)) from None


def prepare(model: ModelConfig, run_dir: str, install_py_deps: bool,
            timeout_s: float) -> ModelConfig:
    """The model ready for its workers (step 4), prepared by `python -m
    zerobatch.broker.prepare_model` (an archive extracted under the run directory, its
    model-config.yaml applied, minWorkers and maxWorkers included as in TorchServe's
    registration, its requirements installed when configured)."""
    argv = module_argv("zerobatch.broker.prepare_model", "--run-dir", run_dir,
                       "--model", json.dumps(dataclasses.asdict(model)))
    if install_py_deps:
        argv.append("--install-py-deps")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ApiError(500, "InternalServerException",
                       f"Failed to save model: {model.url}: preparing it took longer than "
                       f"{timeout_s:.0f} s") from None
    if done.returncode == EXIT_REFUSED:
        raise ApiError(400, "InvalidModelException",
                       client_safe(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                                   else "the model was refused"))
    if done.returncode != 0:
        log.error("preparing model %s failed (exit %s): %s", model.key, done.returncode,
                  done.stderr.strip())
        raise ApiError(500, "InternalServerException", f"Failed to save model: {model.url}")
    return ModelConfig(**json.loads(done.stdout))


def remove_download(source: Source) -> None:
    """Remove what a failed registration downloaded (best effort)."""
    if source.downloaded:
        try:
            os.unlink(source.path)
        except OSError:
            pass


