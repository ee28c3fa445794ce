"""Model archives: turning a TorchServe `.mar`, `.tar.gz` or model directory into a directory.

`prepare_model(path, work_root)` returns a directory with `MAR-INF/MANIFEST.json` at its top,
the form the workers load. Directories (`no-archive` output, or any directory holding the
manifest) are used in place. Archives as `torch-model-archiver` 0.12 writes them — zip `.mar`
(deflated or `zip-store`) and `tgz` (`<name>.tar.gz` holding a top-level `<name>/`) — are
extracted into a private directory per archive, `work_root/models/<stem>-<hash>`, where the
hash covers the archive's path, mtime and size, so a restart reuses an unchanged extraction.

Archives are untrusted input. Extraction goes member by member through our own code (never
`extractall`) and refuses, with an ArchiveError naming the archive and the member: `..`
components, absolute paths, zip symlinks, tar links leaving the extraction directory, devices
and fifos, encrypted members, more than `max_members` members, more than `max_bytes`
uncompressed (checked on the declared sizes first, then counted while writing, so a header
that lies is caught), data compressed more than MAX_COMPRESSION_RATIO to 1 once past
RATIO_FLOOR_BYTES (a zip member against the bytes it really occupies in the file, whatever
its header claims, declared and then counted; a tar against the compressed bytes read so
far), and a missing or malformed manifest. Files are opened with O_NOFOLLOW under a parent
checked to lie inside the root, so nothing is written outside it. An archive is extracted
into a staging directory that is renamed into place only once complete; a failure removes
it, and `prepare_models` removes the staging directories a killed broker left behind (it
runs under the run directory's lock, so no other broker is using them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import BinaryIO

from zerobatch import model_files
from zerobatch.broker import model_yaml, py_deps
from zerobatch.config import ModelConfig
from zerobatch.errors import ArchiveError, ConfigError

log = logging.getLogger("zerobatch.broker.archive")

MANIFEST_MEMBER = "MAR-INF/MANIFEST.json"
DEFAULT_MAX_BYTES = 4 << 30
DEFAULT_MAX_MEMBERS = 100_000
#: Output may outgrow the compressed bytes behind it at most this many times (zip-bomb
#: guards use 100 to 200; real model files, weights and text, compress far less), ...
MAX_COMPRESSION_RATIO = 200
#: ... once past this size, so small very compressible files (JSON, vocabularies) pass.
RATIO_FLOOR_BYTES = 1 << 20
ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz")
MODELS_DIR = "models"
STAGING_PREFIX = ".staging-"
_CHUNK_BYTES = 1 << 20
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


# ---------------------------------------------------------------------- public face

def is_archive(path: str) -> bool:
    """True for a regular file (an archive); directories are served in place."""
    return os.path.isfile(path)


def prepare_model(path: str, work_root: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                  max_members: int = DEFAULT_MAX_MEMBERS) -> str:
    """The model directory for `path`: the directory itself, or the archive extracted under
    work_root/models/. Raises ArchiveError (a ConfigError) when the archive is refused."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        check_manifest(path, path)
        return path
    if not os.path.isfile(path):
        raise ArchiveError(f"model archive {path} does not exist")
    if model_files.is_zip_archive(path):
        extract = _extract_zip
    elif _is_tar(path):
        extract = _extract_tar
    else:
        raise ArchiveError(f"{path} is neither a zip (.mar) nor a tar (.tar.gz) model archive")

    models_dir = os.path.join(os.path.abspath(work_root), MODELS_DIR)
    os.makedirs(models_dir, exist_ok=True)
    private_name = _private_name(path)
    private_dir = os.path.join(models_dir, private_name)
    if os.path.isdir(private_dir):
        try:  # extracted by an earlier start from the same archive (same path, mtime, size)
            return check_manifest(_model_root(private_dir, path), path)
        except ArchiveError:
            shutil.rmtree(private_dir, ignore_errors=True)
    staging_dir = os.path.join(models_dir, f"{STAGING_PREFIX}{private_name}-{os.getpid()}")
    shutil.rmtree(staging_dir, ignore_errors=True)
    os.mkdir(staging_dir, 0o755)
    try:
        _extract_or_refuse(extract, path, staging_dir, max_bytes, max_members)
        check_manifest(_model_root(staging_dir, path), path)
        try:
            os.rename(staging_dir, private_dir)
        except OSError:  # another broker finished the same archive first
            if not os.path.isdir(private_dir):
                raise
            shutil.rmtree(staging_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    return check_manifest(_model_root(private_dir, path), path)


def _extract_or_refuse(extract: Callable[[str, str, int, int], None], path: str,
                       staging_dir: str, max_bytes: int, max_members: int) -> None:
    """Run an extractor; whatever the readers raise on a damaged archive becomes an
    ArchiveError (a disk's own failure stays what it is)."""
    try:
        extract(path, staging_dir, max_bytes, max_members)
    except ArchiveError:
        raise
    except (OSError, *model_files.ARCHIVE_READER_ERRORS) as exc:
        if not model_files.is_damage(exc):
            raise
        raise ArchiveError(f"{path}: a damaged archive ({type(exc).__name__}: "
                           f"{exc})") from None


def prepare_models(models: Iterable[ModelConfig], work_root: str, *,
                   install_py_deps: bool = False
                   ) -> tuple[tuple[ModelConfig, ...], list[tuple[ModelConfig, ConfigError]]]:
    """Make every model ready for its workers: extract archives into directories, apply the
    model's model-config.yaml (broker/model_yaml.py) and, with `install_py_deps`, install its
    requirements file (broker/py_deps.py).

    Staging directories that a broker killed while extracting left in work_root/models/ are
    removed first: the caller holds the run directory's lock, so no other broker uses them.
    Returns (models to serve, [(refused model, its error)]); a model that cannot be prepared
    for any reason (a manifest that is not JSON, an archive the zip or tar reader chokes on)
    is refused, never the end of the broker."""
    remove_stale_staging(os.path.join(os.path.abspath(work_root), MODELS_DIR))
    kept: list[ModelConfig] = []
    refused: list[tuple[ModelConfig, ConfigError]] = []
    for model in models:
        try:
            kept.append(prepare_one(model, work_root, install_py_deps))
        except ConfigError as exc:
            refused.append((model, exc))
        except OSError as exc:
            refused.append((model, ArchiveError(f"{model.path}: cannot prepare: {exc}")))
        except Exception as exc:  # untrusted input: whatever a reader raises refuses the model
            log.debug("model %s: preparing %s failed", model.key, model.path, exc_info=True)
            refused.append((model, ArchiveError(f"{model.path}: cannot prepare: "
                                                f"{type(exc).__name__}: {exc}")))
    return tuple(kept), refused


def remove_stale_staging(models_dir: str) -> list[str]:
    """Remove every `.staging-*` entry of models_dir (left by a broker killed while
    extracting) and return their names. Links are unlinked, never followed; a models_dir
    that is itself a link is left alone. Best effort: what cannot be removed is logged."""
    if os.path.islink(models_dir):
        return []
    try:
        entries = list(os.scandir(models_dir))
    except OSError:  # no models directory yet
        return []
    removed = []
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)  # never follows the links inside
            else:
                os.unlink(entry.path)
        except OSError as exc:
            log.warning("cannot remove the stale staging entry %s: %s", entry.path, exc)
            continue
        removed.append(entry.name)
    if removed:
        log.info("removed %d staging entr%s left by an earlier broker in %s", len(removed),
                 "y" if len(removed) == 1 else "ies", models_dir)
    return removed


def prepare_one(model: ModelConfig, work_root: str, install_py_deps: bool) -> ModelConfig:
    if is_archive(model.path):
        model_dir = prepare_model(model.path, work_root)
        log.info("model %s: archive %s extracted to %s", model.key, model.path, model_dir)
        model = replace(model, path=model_dir)
    if not os.path.isdir(model.path):  # left for the worker to report, as before
        return model
    manifest = load_manifest(model.path, model.path)
    model = model_yaml.configure(model, model.path, manifest)
    return py_deps.install(model, model.path, manifest, work_root, install_py_deps)


def check_manifest(model_dir: str, archive: str) -> str:
    """Return model_dir if its MAR-INF/MANIFEST.json is JSON with a "model" naming a handler."""
    load_manifest(model_dir, archive)
    return model_dir


def load_manifest(model_dir: str, archive: str) -> dict:
    """The checked MAR-INF/MANIFEST.json of model_dir (zerobatch.model_files); errors name
    `archive` first."""
    try:
        return model_files.read_manifest(model_dir)
    except ArchiveError:
        raise
    except ConfigError as exc:
        raise ArchiveError(f"{archive}: {exc}") from None
    except RecursionError:  # JSON nested deeper than the parser goes
        raise ArchiveError(f"{archive}: {MANIFEST_MEMBER}: cannot read the manifest: nested "
                           "too deeply") from None


# ---------------------------------------------------------------------- helpers

def _is_tar(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, zlib.error):
        return False


def _private_name(path: str) -> str:
    info = os.stat(path)
    digest = hashlib.sha256(f"{path}\0{info.st_mtime_ns}\0{info.st_size}".encode()).hexdigest()
    stem = os.path.basename(path)
    for suffix in ARCHIVE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = _UNSAFE_NAME_CHARS.sub("_", stem).lstrip(".") or "model"
    return f"{stem[:64]}-{digest[:12]}"


def _model_root(extracted: str, archive: str) -> str:
    """The directory holding MAR-INF: the extraction root, or its single top-level directory
    (the `tgz` layout)."""
    if os.path.isdir(os.path.join(extracted, "MAR-INF")):
        return extracted
    entries = os.listdir(extracted)
    if len(entries) == 1:
        inner = os.path.join(extracted, entries[0])
        if os.path.isdir(inner) and not os.path.islink(inner):
            return inner
    raise ArchiveError(f"{archive}: {MANIFEST_MEMBER} is missing (not at the top of the archive "
                       "nor under one top-level directory)")


def _safe_parts(name: str, archive: str) -> list[str]:
    """The path components of member `name`, refusing absolute paths and `..`."""
    if "\0" in name:
        raise ArchiveError(f"{archive}: member {name!r} has a NUL byte in its name")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path")
    parts = [part for part in re.split(r"[/\\]", name) if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{archive}: member {name!r} has a '..' component (path traversal)")
    return parts


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _check_ratio(uncompressed: int, compressed: int, archive: str, member: str) -> None:
    """Refuse `uncompressed` bytes out of `compressed` bytes of the archive when they are
    past RATIO_FLOOR_BYTES and more than MAX_COMPRESSION_RATIO times as many."""
    if uncompressed > RATIO_FLOOR_BYTES and uncompressed > MAX_COMPRESSION_RATIO * compressed:
        raise ArchiveError(f"{os.path.basename(archive)}: member {member!r} is compressed more "
                           f"than {MAX_COMPRESSION_RATIO}:1 ({uncompressed} bytes out of "
                           f"{compressed} compressed bytes); refusing a likely zip bomb")


class _Budget:
    """Counts uncompressed bytes written across the whole archive; given `compressed_read`
    (the compressed bytes read so far: a tar's stream), also their ratio to those."""

    def __init__(self, archive: str, max_bytes: int,
                 compressed_read: Callable[[], int] | None = None) -> None:
        self.archive = archive
        self.max_bytes = max_bytes
        self.compressed_read = compressed_read
        self.written = 0

    def add(self, count: int, member: str) -> None:
        self.written += count
        if self.written > self.max_bytes:
            raise ArchiveError(f"{self.archive}: uncompressed size exceeds the limit of "
                               f"{self.max_bytes} bytes while extracting member {member!r} "
                               "(a zip bomb, or raise the limit)")
        if self.compressed_read is not None:
            _check_ratio(self.written, self.compressed_read(), self.archive, member)


class _Extractor:
    """Writes members under root; every write is checked to stay inside it."""

    def __init__(self, root: str, archive: str, budget: _Budget) -> None:
        self.root = os.path.realpath(root)
        self.archive = archive
        self.budget = budget

    def target(self, parts: list[str], name: str) -> str:
        path = os.path.join(self.root, *parts)
        parent = os.path.realpath(os.path.dirname(path))
        if not _inside(self.root, parent):
            raise ArchiveError(f"{self.archive}: member {name!r} would be written outside the "
                               "extraction directory (through a link)")
        return path

    def make_dir(self, parts: list[str], name: str) -> None:
        if not parts:
            return
        for depth in range(1, len(parts) + 1):
            path = self.target(parts[:depth], name)
            if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
                raise ArchiveError(f"{self.archive}: member {name!r} needs a directory where "
                                   "another member is a file or link")
            if not os.path.isdir(path):
                os.mkdir(path, 0o755)

    def write_file(self, parts: list[str], name: str, source: BinaryIO, declared: int,
                   executable: bool = False, compressed: int | None = None) -> None:
        """Write one member from source; `compressed`: the bytes it really occupies in the
        archive (a zip member), against which its output is counted."""
        if not parts:
            raise ArchiveError(f"{self.archive}: member {name!r} has an empty name")
        self.make_dir(parts[:-1], name)
        path = self.target(parts, name)
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                raise ArchiveError(f"{self.archive}: member {name!r} is a file where another "
                                   "member is a directory")
            os.unlink(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o755 if executable else 0o644)
        with os.fdopen(fd, "wb") as out:
            written = 0
            while True:
                chunk = source.read(_CHUNK_BYTES)
                if not chunk:
                    break
                written += len(chunk)
                self.budget.add(len(chunk), name)
                if compressed is not None:
                    _check_ratio(written, compressed, self.archive, name)
                if written > declared:
                    raise ArchiveError(f"{self.archive}: member {name!r} is larger than the "
                                       f"{declared} bytes its header declares")
                out.write(chunk)
        if written != declared:
            raise ArchiveError(f"{self.archive}: member {name!r} holds {written} bytes, not the "
                               f"{declared} its header declares")


def _check_manifest_listed(paths: Iterable[tuple[str, ...]], archive: str) -> None:
    """Fail before extracting when no member is MAR-INF/MANIFEST.json at the top or under one
    top-level directory."""
    paths = list(paths)
    if ("MAR-INF", "MANIFEST.json") in paths:
        return
    tops = {path[0] for path in paths if path}
    if len(tops) == 1 and (*tops, "MAR-INF", "MANIFEST.json") in paths:
        return
    raise ArchiveError(f"{archive}: {MANIFEST_MEMBER} is missing (not a model archive written "
                       "by torch-model-archiver?)")


def _check_count(count: int, max_members: int, archive: str) -> None:
    if count > max_members:
        raise ArchiveError(f"{archive}: more than {max_members} members; refusing (raise the "
                           "limit if the archive is genuine)")


def _check_declared(total: int, max_bytes: int, archive: str, member: str) -> None:
    if total > max_bytes:
        raise ArchiveError(f"{archive}: declared uncompressed size exceeds the limit of "
                           f"{max_bytes} bytes at member {member!r} (a zip bomb, or raise the "
                           "limit)")


# ---------------------------------------------------------------------- zip (.mar)

def _extract_zip(archive: str, root: str, max_bytes: int, max_members: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_count(len(infos), max_members, archive)
            spans = _zip_data_spans(infos, getattr(zf, "start_dir", None),
                                    os.path.getsize(archive))
            planned = []
            declared_total = 0
            for info in infos:
                parts = _safe_parts(info.filename, archive)
                mode = info.external_attr >> 16
                kind = stat.S_IFMT(mode)
                if kind == stat.S_IFLNK:
                    raise ArchiveError(f"{archive}: member {info.filename!r} is a symlink; "
                                       "links are not allowed in a .mar")
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise ArchiveError(f"{archive}: member {info.filename!r} is a device, fifo "
                                       "or socket; only files and directories are allowed")
                if info.flag_bits & 0x1:
                    raise ArchiveError(f"{archive}: member {info.filename!r} is encrypted")
                # not info.is_dir(), which raises on an empty name
                is_dir = info.filename.endswith("/") or kind == stat.S_IFDIR
                compressed = min(info.compress_size, spans[info.header_offset])
                if not is_dir:
                    declared_total += info.file_size
                    _check_declared(declared_total, max_bytes, archive, info.filename)
                    _check_ratio(info.file_size, compressed, archive, info.filename)
                planned.append((info, parts, is_dir, bool(mode & stat.S_IXUSR), compressed))
            _check_manifest_listed((tuple(p[1]) for p in planned), archive)
            extractor = _Extractor(root, archive, _Budget(archive, max_bytes))
            for info, parts, is_dir, executable, compressed in planned:
                if is_dir:
                    extractor.make_dir(parts, info.filename)
                    continue
                try:
                    with zf.open(info) as source:
                        extractor.write_file(parts, info.filename, source, info.file_size,
                                             executable, compressed)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise ArchiveError(f"{archive}: member {info.filename!r} is corrupt or its "
                                       f"data does not match the size and CRC its header "
                                       f"declares ({exc})") from None
                except NotImplementedError as exc:
                    raise ArchiveError(f"{archive}: member {info.filename!r}: {exc}") from None
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{archive}: not a readable zip archive: {exc}") from None


def _zip_data_spans(infos: list[zipfile.ZipInfo], central_dir_offset: int | None,
                    size_bytes: int) -> dict[int, int]:
    """header offset -> bytes from there to the next member's header (or the central
    directory): the most compressed data a member can really hold, whatever its header
    claims. Members that overlap (a known zip-bomb trick) get only their own share."""
    offsets = sorted({info.header_offset for info in infos})
    if not offsets:
        return {}
    end = size_bytes
    if central_dir_offset is not None and offsets and central_dir_offset > offsets[-1]:
        end = min(central_dir_offset, size_bytes)
    return {offset: max(bound - offset, 0)
            for offset, bound in zip(offsets, offsets[1:] + [end], strict=True)}


# ---------------------------------------------------------------------- tar (.tar.gz)

def _tar_members(tar: tarfile.TarFile, archive: str, max_bytes: int, max_members: int,
                 compressed_read: Callable[[], int]) -> list[tarfile.TarInfo]:
    """Read the member headers, stopping as soon as a limit is passed. Reaching a header
    means the data of the members before it was inflated (and skipped): their declared sizes
    are checked against the compressed bytes read so far."""
    members: list[tarfile.TarInfo] = []
    declared_total = 0
    for member in tar:
        if members:
            _check_ratio(declared_total, compressed_read(), archive, members[-1].name)
        members.append(member)
        _check_count(len(members), max_members, archive)
        if member.isreg():
            declared_total += member.size
            _check_declared(declared_total, max_bytes, archive, member.name)
    if members:
        _check_ratio(declared_total, compressed_read(), archive, members[-1].name)
    return members


def _extract_tar(archive: str, root: str, max_bytes: int, max_members: int) -> None:
    try:
        # our own handle on the file: its position is the compressed bytes read so far
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            members = _tar_members(tar, archive, max_bytes, max_members, raw.tell)
            _check_manifest_listed((tuple(_safe_parts(m.name, archive)) for m in members),
                                   archive)
            extractor = _Extractor(root, archive, _Budget(archive, max_bytes, raw.tell))
            real_root = extractor.root
            extracted: dict[tuple[str, ...], str] = {}
            links: list[tuple[str, str]] = []
            for member in members:
                parts = _safe_parts(member.name, archive)
                if member.isdir():
                    extractor.make_dir(parts, member.name)
                elif member.isreg():
                    source = tar.extractfile(member)
                    assert source is not None  # a regular member always has a file object
                    with source:
                        extractor.write_file(parts, member.name, source, member.size,
                                             bool(member.mode & stat.S_IXUSR))
                    extracted[tuple(parts)] = extractor.target(parts, member.name)
                elif member.issym():
                    links.append(_tar_symlink(extractor, member, parts, archive))
                elif member.islnk():
                    _tar_hardlink(extractor, member, parts, extracted, archive)
                else:
                    raise ArchiveError(f"{archive}: member {member.name!r} is a device, fifo or "
                                       "other special file; only files, directories and links "
                                       "inside the archive are allowed")
            for name, link_path in links:  # the final word: every symlink resolves inside
                if not _inside(real_root, os.path.realpath(link_path)):
                    raise ArchiveError(f"{archive}: symlink member {name!r} points outside the "
                                       "extraction directory")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{archive}: not a readable tar archive: {exc}") from None


def _tar_symlink(extractor: _Extractor, member: tarfile.TarInfo, parts: list[str],
                 archive: str) -> tuple[str, str]:
    target = member.linkname
    if not parts or not target or os.path.isabs(target) or "\0" in target:
        raise ArchiveError(f"{archive}: symlink member {member.name!r} -> {target!r} points "
                           "outside the extraction directory")
    link_dir = os.path.join(extractor.root, *parts[:-1])
    resolved = os.path.normpath(os.path.join(link_dir, target))
    if not _inside(extractor.root, resolved):
        raise ArchiveError(f"{archive}: symlink member {member.name!r} -> {target!r} points "
                           "outside the extraction directory")
    extractor.make_dir(parts[:-1], member.name)
    path = extractor.target(parts, member.name)
    if os.path.lexists(path):
        raise ArchiveError(f"{archive}: symlink member {member.name!r} replaces another member")
    os.symlink(target, path)
    return member.name, path


def _tar_hardlink(extractor: _Extractor, member: tarfile.TarInfo, parts: list[str],
                  extracted: dict[tuple[str, ...], str], archive: str) -> None:
    """A hard link becomes a copy of a file extracted earlier from this archive."""
    try:
        target_parts = _safe_parts(member.linkname, archive)
    except ArchiveError:
        target_parts = None
    source_path = extracted.get(tuple(target_parts)) if target_parts else None
    if source_path is None:
        raise ArchiveError(f"{archive}: hard link member {member.name!r} -> "
                           f"{member.linkname!r} does not name a file extracted from the archive")
    size = os.path.getsize(source_path)
    with open(source_path, "rb") as source:
        extractor.write_file(parts, member.name, source, size)
    extracted[tuple(parts)] = extractor.target(parts, member.name)
