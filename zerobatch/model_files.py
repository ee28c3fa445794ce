"""The model directory format that the CLI, the broker and the workers all read.

A model directory is laid out as TorchServe's `no-archive` format: `MAR-INF/MANIFEST.json`,
the handler file, the serialized weights, extra files, and optionally a YAML config
(`model-config.yaml`, or the file the manifest's `model.configFile` names). This module
reads and checks those two files once for everyone. Every failure is a ConfigError that names
the file and says what is wrong. PyYAML is imported only when a model carries a config.
"""

from __future__ import annotations

import errno
import json
import lzma
import os
import tarfile
import zipfile
import zlib
from typing import Any

from zerobatch.errors import ArchiveError, ConfigError

#: what the standard library's zip, tar and compression readers raise on a damaged archive
#: (an OSError too, where it carries no errno or EINVAL: see is_damage)
ARCHIVE_READER_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError, ValueError,
    IndexError, NotImplementedError, RuntimeError)


def is_damage(exc: BaseException) -> bool:
    """Whether a reader's exception says the archive is damaged (not that a disk failed)."""
    if isinstance(exc, OSError):
        return exc.errno in (None, errno.EINVAL)
    return isinstance(exc, ARCHIVE_READER_ERRORS)


def is_zip_archive(path: str) -> bool:
    """zipfile.is_zipfile, with an ArchiveError where it raises on a damaged zip."""
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{os.path.basename(path)}: not a readable zip archive: "
                           f"{exc}") from None

MANIFEST_PATH = os.path.join("MAR-INF", "MANIFEST.json")
MODEL_CONFIG_FILE = "model-config.yaml"
MAX_MANIFEST_BYTES = 1 << 20
MAX_MODEL_CONFIG_BYTES = 1 << 20
_STRING_KEYS = ("modelName", "serializedFile", "modelFile", "modelVersion")


def manifest_file(model_dir: str) -> str:
    return os.path.join(model_dir, MANIFEST_PATH)


def read_manifest(model_dir: str) -> dict[str, Any]:
    """Load and check the manifest of model_dir."""
    if not os.path.isdir(model_dir):
        raise ConfigError(f"model directory {model_dir!r} does not exist or is not a directory")
    path = manifest_file(model_dir)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: manifest not found; {MANIFEST_PATH} is missing (a model "
                          "directory needs it, as torch-model-archiver writes it)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the manifest: {exc}") from None
    return parse_manifest(data, path)


def parse_manifest(data: bytes, path: str) -> dict[str, Any]:
    """Check a manifest's bytes; errors name path."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ConfigError(f"{path}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the manifest: not valid JSON ({exc})") from None
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise ConfigError(f'{path}: the manifest needs a "model" object')
    handler = model.get("handler")
    if not isinstance(handler, str) or not handler.strip():
        raise ConfigError(f'{path}: "model.handler" must name the handler file or module')
    for key in _STRING_KEYS:
        if model.get(key) is not None and not isinstance(model[key], str):
            raise ConfigError(f'{path}: "model.{key}" must be a string')
    runtime = manifest.get("runtime", "python")
    if runtime not in ("python", "python3"):
        raise ConfigError(f'{path}: runtime {runtime!r} is not supported; use "python"')
    return manifest


def model_config_path(model_dir: str, manifest: dict[str, Any]) -> str | None:
    """The model's YAML config file, or None when it has none."""
    named = manifest["model"].get("configFile")
    if named:
        if not isinstance(named, str):
            raise ConfigError(f'{manifest_file(model_dir)}: "model.configFile" must be a '
                              "file name")
        path = os.path.realpath(os.path.join(model_dir, named))
        if not path.startswith(os.path.realpath(model_dir) + os.sep):
            raise ConfigError(f'{manifest_file(model_dir)}: "model.configFile" {named!r} lies '
                              "outside the model directory")
        if not os.path.isfile(path):
            raise ConfigError(f'{manifest_file(model_dir)}: "model.configFile" names {named}, '
                              f"which is not in {model_dir}")
        return path
    path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    return path if os.path.isfile(path) else None


def read_model_config(path: str) -> dict[str, Any]:
    """yaml.safe_load of path: a mapping ({} for an empty file), or a ConfigError."""
    import yaml  # only models that carry a config pay for the import

    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_MODEL_CONFIG_BYTES + 1)
        if len(text) > MAX_MODEL_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_MODEL_CONFIG_BYTES} bytes")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the model config: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the model config must be a YAML mapping, not "
                          f"{type(data).__name__}")
    return data


def load_model_config(model_dir: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The model's YAML config as a dict, {} when it has none (context.model_yaml_config)."""
    path = model_config_path(model_dir, manifest)
    return {} if path is None else read_model_config(path)


#: what model_digest leaves out: bytecode a handler's import writes next to its source, which
#: differs between hosts that imported it and hosts that did not
_DIGEST_SKIPPED_DIRS = frozenset({"__pycache__"})
_DIGEST_CHUNK_BYTES = 1 << 20


def model_digest(model_dir: str) -> str:
    """"sha256:" and the hex SHA-256 over a model directory's files: each regular file's path
    (relative, "/"-separated, in sorted order), size and contents, so that a renamed, added,
    removed or changed file changes it. `__pycache__` folders and symbolic links to folders
    are left out (bytecode differs between hosts; a linked folder is not walked). A remote
    worker sends it in READY and the broker compares it with its own (docs/remote-workers.md).
    Reads every byte once: about a second per GB."""
    if not os.path.isdir(model_dir):
        raise ConfigError(f"model directory {model_dir!r} does not exist or is not a directory")
    import hashlib

    digest = hashlib.sha256()
    files = []
    for folder, dirs, names in os.walk(model_dir):
        dirs[:] = [name for name in dirs if name not in _DIGEST_SKIPPED_DIRS]
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                files.append(os.path.relpath(path, model_dir).replace(os.sep, "/"))
    for relative in sorted(files):
        path = os.path.join(model_dir, relative)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                digest.update(f"{relative}\0{size}\0".encode("utf-8", "surrogateescape"))
                while chunk := handle.read(_DIGEST_CHUNK_BYTES):
                    digest.update(chunk)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it for the model digest: {exc}") from None
    return "sha256:" + digest.hexdigest()
