"""Our model archiver: `zerobatch archive` / `zerobatch-archiver`, flag for flag
`torch-model-archiver` 0.12, and the reading of a manifest out of an archive for the CLI.

It writes what torch-model-archiver 0.12 writes: `MAR-INF/MANIFEST.json` (the same fields, in
the same order, `json.dumps(indent=2)`), and the handler, model file, serialized file, extra
files, requirements and config file copied flat at the archive root. A directory in
`--extra-files` contributes its contents (files at the root, subdirectories kept whole), and
directories named `__pycache__`, `__MACOSX` or starting with `.` are left out, as there.
Formats: `default` (zip, deflated, `NAME.mar`), `zip-store` (zip, stored, `NAME.mar`), `tgz`
(`NAME.tar.gz` holding `NAME/`) and `no-archive` (the directory `NAME/`).

Differences, all on the safe side: files are streamed from where they are (no copy through
`/tmp/NAME`), the output is written under a temporary name and renamed into place, so a failed
run leaves nothing half-written, `--handler file.py:function` copies `file.py`, and errors are
one `ERROR - ...` message and exit status 1, without a traceback. `archiverVersion` says
`0.12.0+zerobatch`.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from datetime import datetime
from typing import IO, BinaryIO

from zerobatch import model_files
from zerobatch.errors import ArchiveError, ConfigError

FORMAT_VERSION = "0.12.0"
ARCHIVER_VERSION = f"{FORMAT_VERSION}+zerobatch"
MAR_INF = "MAR-INF"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_MEMBER = f"{MAR_INF}/{MANIFEST_NAME}"
SUFFIXES = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
RUNTIMES = ("python", "python3", "LSP")
#: handlers TorchServe ships; named, not copied
DEFAULT_HANDLERS = frozenset({"base_handler", "text_classifier", "image_classifier",
                              "object_detector", "image_segmenter", "dali_image_classifier",
                              "vllm_handler", "trt_llm_handler"})
SKIPPED_DIRS = frozenset({"__pycache__", "__MACOSX"})
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
PROGRESS_MIN_BYTES = 10 * 1000 * 1000
MAX_MANIFEST_BYTES = 1 << 20
#: Reading a `.tar.gz` for its manifest inflates the members before it; that stops past this
#: many declared bytes (the broker's extraction limit) or once the bytes inflated outgrow the
#: compressed bytes read by more than MAX_COMPRESSION_RATIO, past RATIO_FLOOR_BYTES (the
#: broker's zip-bomb rule, broker/archive.py).
MAX_READ_BYTES = 4 << 30
MAX_COMPRESSION_RATIO = 200
RATIO_FLOOR_BYTES = 1 << 20
_CHUNK_BYTES = 1 << 20


class ArchiverError(Exception):
    """A problem with the inputs; printed as `ERROR - message`, exit status 1."""


# ---------------------------------------------------------------------- flags

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of torch-model-archiver 0.12, with its defaults."""
    parser.add_argument("--model-name", required=True,
                        help="model name; the archive is MODEL_NAME.mar in --export-path")
    parser.add_argument("--serialized-file", default=None,
                        help="the weights: .pt/.pth state_dict, TorchScript, .onnx, ...")
    parser.add_argument("--model-file", default=None,
                        help="python file defining the model class (eager mode)")
    parser.add_argument("--handler", required=True,
                        help="a default handler name, or the handler file (file.py[:function])")
    parser.add_argument("--extra-files", default=None,
                        help="comma-separated files or directories (a directory's contents "
                             "go to the archive root)")
    parser.add_argument("--runtime", default="python", choices=RUNTIMES,
                        help="runtime of the handler (default: python)")
    parser.add_argument("--export-path", default=os.getcwd(),
                        help="directory to write the archive into (default: the current one)")
    parser.add_argument("--archive-format", default="default", choices=list(SUFFIXES),
                        help="default: NAME.mar (zip); zip-store: NAME.mar, not compressed; "
                             "tgz: NAME.tar.gz; no-archive: the directory NAME/")
    parser.add_argument("-f", "--force", action="store_true",
                        help="overwrite an existing archive of the same name")
    parser.add_argument("-v", "--version", required=True, help="the model's version")
    parser.add_argument("-r", "--requirements-file", default=None,
                        help="requirements.txt with the model's Python dependencies")
    parser.add_argument("-c", "--config-file", default=None,
                        help="model-config.yaml (batch size, workers, ...)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog="zerobatch-archiver",
        description="Package a model for serving, as torch-model-archiver does."))


# ---------------------------------------------------------------------- manifest

def manifest_json(args: argparse.Namespace, created_on: datetime | None = None) -> str:
    """MAR-INF/MANIFEST.json as torch-model-archiver 0.12 writes it."""
    model: dict[str, str] = {"modelName": args.model_name}
    if args.serialized_file:
        model["serializedFile"] = os.path.basename(args.serialized_file)
    model["handler"] = os.path.basename(args.handler)
    if args.model_file:
        model["modelFile"] = args.model_file.split("/")[-1]
    if args.version:
        model["modelVersion"] = args.version
    if args.requirements_file:
        model["requirementsFile"] = args.requirements_file.split("/")[-1]
    if args.config_file:
        model["configFile"] = os.path.basename(args.config_file)
    manifest = {
        "createdOn": (created_on or datetime.now()).strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": args.runtime,
        "model": model,
        "archiverVersion": ARCHIVER_VERSION,
    }
    return json.dumps(manifest, indent=2)


# ---------------------------------------------------------------------- members

def _handler_source(handler: str, runtime: str) -> str | None:
    """The handler file to copy, or None for a default handler."""
    if runtime == "LSP":
        if handler in ("BaseHandler", "TorchScriptHandler"):
            return None
        suffix = ".so" if sys.platform.startswith("linux") else ".dylib"
        return handler.split(":")[0] + suffix
    if handler in DEFAULT_HANDLERS:
        return None
    if ".py" not in handler:
        return handler.split(":")[0] + ".py"
    if not os.path.isfile(handler) and ":" in handler:
        return handler.rsplit(":", 1)[0]
    return handler


def _add_file(members: dict[str, str], source: str, what: str) -> None:
    if not os.path.isfile(source):
        raise ArchiverError(f"{what} {source} does not exist or is not a file")
    arcname = os.path.basename(source)
    members.pop(arcname, None)  # a later file of the same name wins, and goes last
    members[arcname] = source


def _add_tree(members: dict[str, str], folder: str, prefix: str) -> None:
    for entry in sorted(os.listdir(folder)):
        source = os.path.join(folder, entry)
        arcname = f"{prefix}{entry}"
        if os.path.isdir(source):
            _add_tree(members, source, f"{arcname}/")
        elif os.path.isfile(source):
            members.pop(arcname, None)
            members[arcname] = source


def _add_extra_files(members: dict[str, str], extra_files: str) -> None:
    for item in extra_files.split(","):
        pattern = item.strip()
        wildcard = any(c in pattern for c in "*?") or ("[" in pattern and "]" in pattern)
        if not wildcard and not os.path.exists(pattern):
            raise ArchiverError(f"File does not exist: {item}")
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                _add_file(members, path, "extra file")
            elif os.path.isdir(path):
                _add_tree(members, path, "")  # the directory's contents, at the root
            else:
                raise ArchiverError(f"Invalid extra file given {path}")


def _wanted(arcname: str) -> bool:
    """torch-model-archiver's directory filter: no __pycache__, __MACOSX or hidden dirs."""
    folders = arcname.split("/")[:-1]
    return not any(part in SKIPPED_DIRS or part.startswith(".") for part in folders)


def collect_members(args: argparse.Namespace) -> dict[str, str]:
    """arcname -> source file, in torch-model-archiver's order (a later one of the same name
    replaces an earlier one)."""
    members: dict[str, str] = {}
    if args.model_file:
        _add_file(members, args.model_file, "model file")
    if args.serialized_file:
        _add_file(members, args.serialized_file, "serialized file")
    handler = _handler_source(args.handler, args.runtime)
    if handler:
        _add_file(members, handler, "handler file")
    if args.extra_files:
        _add_extra_files(members, args.extra_files)
    if args.requirements_file:
        _add_file(members, args.requirements_file, "requirements file")
    if args.config_file:
        _add_file(members, args.config_file, "config file")
    return {name: source for name, source in members.items()
            if _wanted(name) and name != MANIFEST_MEMBER}


# ---------------------------------------------------------------------- progress

class _Progress:
    """A one-line progress bar on a terminal; silent elsewhere."""

    WIDTH = 30

    def __init__(self, label: str, total: int, stream: IO[str]) -> None:
        self.label, self.total, self.stream = label, max(total, 1), stream
        self.done = 0
        self.shown_at = 0.0

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.shown_at >= 0.1 or self.done >= self.total:
            self.shown_at = now
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * self.WIDTH)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                              f"{fraction * 100:5.1f}% {self.done / 1e6:.1f}/"
                              f"{self.total / 1e6:.1f} MB")
            self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class _Reader:
    """A file whose reads advance a progress bar."""

    def __init__(self, handle: BinaryIO, progress: _Progress | None) -> None:
        self.handle, self.progress = handle, progress

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if self.progress is not None:
            self.progress.update(len(data))
        return data


def _open_source(source: str, arcname: str, stream: IO[str] | None):
    size = os.path.getsize(source)
    show = stream is not None and size > PROGRESS_MIN_BYTES and stream.isatty()
    progress = _Progress(arcname, size, stream) if show and stream is not None else None
    return _Reader(open(source, "rb"), progress), progress


def _copy_member(source: str, arcname: str, out: BinaryIO, stream: IO[str] | None) -> None:
    reader, progress = _open_source(source, arcname, stream)
    try:
        shutil.copyfileobj(reader, out, _CHUNK_BYTES)
    finally:
        reader.handle.close()
        if progress is not None:
            progress.close()


# ---------------------------------------------------------------------- writing

def _write_zip(path: str, members: dict[str, str], manifest: str, stored: bool,
               stream: IO[str] | None) -> None:
    compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression) as zf:
        for arcname, source in members.items():
            info = zipfile.ZipInfo.from_file(source, arcname)
            info.compress_type = compression
            with zf.open(info, "w") as out:
                _copy_member(source, arcname, out, stream)
        zf.writestr(MANIFEST_MEMBER, manifest)


def _write_tgz(path: str, model_name: str, members: dict[str, str], manifest: str,
               stream: IO[str] | None) -> None:
    with tarfile.open(path, "w:gz", dereference=True) as tar:
        for arcname, source in members.items():
            info = tar.gettarinfo(source, f"{model_name}/{arcname}")
            reader, progress = _open_source(source, arcname, stream)
            try:
                tar.addfile(info, reader)  # type: ignore[arg-type]
            finally:
                reader.handle.close()
                if progress is not None:
                    progress.close()
        data = manifest.encode("utf-8")
        info = tarfile.TarInfo(f"{model_name}/{MANIFEST_MEMBER}")
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))


def _write_dir(path: str, members: dict[str, str], manifest: str,
               stream: IO[str] | None) -> None:
    for arcname, source in members.items():
        target = os.path.join(path, *arcname.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            _copy_member(source, arcname, out, stream)
        shutil.copystat(source, target)
    os.makedirs(os.path.join(path, MAR_INF), exist_ok=True)
    with open(os.path.join(path, MAR_INF, MANIFEST_NAME), "w", encoding="utf-8") as out:
        out.write(manifest)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def export_path_of(args: argparse.Namespace) -> str:
    return os.path.join(args.export_path, args.model_name + SUFFIXES[args.archive_format])


def write_archive(args: argparse.Namespace, stream: IO[str] | None = None) -> str:
    """Write the archive the flags describe; return its path. Raises ArchiverError."""
    if not MODEL_NAME.match(args.model_name):
        raise ArchiverError("Model name contains special characters.\nThe allowed regular "
                            f"expression filter for model name is: {MODEL_NAME.pattern}")
    if not os.path.isdir(os.path.abspath(args.export_path)):
        raise ArchiverError(f"Given export-path {args.export_path} is not a directory. Point to "
                            "a valid export-path directory.")
    output = export_path_of(args)
    if os.path.lexists(output) and not args.force:
        raise ArchiverError(f"{output} already exists.\nPlease specify --force/-f option to "
                            "overwrite the model archive output file.\nSee -h/--help for more "
                            "details.")
    members = collect_members(args)
    manifest = manifest_json(args)
    fmt = args.archive_format
    if fmt == "no-archive":
        temporary = tempfile.mkdtemp(prefix=f".{args.model_name}.", dir=args.export_path)
    else:
        handle, temporary = tempfile.mkstemp(prefix=f".{args.model_name}.", suffix=".tmp",
                                             dir=args.export_path)
        os.close(handle)
    try:
        if fmt == "no-archive":
            os.chmod(temporary, 0o755 & ~_umask())
            _write_dir(temporary, members, manifest, stream)
        elif fmt == "tgz":
            _write_tgz(temporary, args.model_name, members, manifest, stream)
        else:
            _write_zip(temporary, members, manifest, fmt == "zip-store", stream)
        if fmt != "no-archive":
            os.chmod(temporary, 0o644 & ~_umask())
        if os.path.lexists(output):  # only with --force
            _remove(output)
        os.rename(temporary, output)
    except BaseException:
        _remove(temporary)
        raise
    return output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run(args: argparse.Namespace) -> int:
    """Run from parsed flags (`zerobatch archive` or `zerobatch-archiver`)."""
    try:
        write_archive(args, stream=sys.stderr)
    except (ArchiverError, OSError) as exc:
        print(f"ERROR - {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


# ---------------------------------------------------------------------- reading

def _manifest_from_bytes(data: bytes, archive: str) -> dict:
    try:
        return model_files.parse_manifest(data, f"{archive}!{MANIFEST_MEMBER}")
    except ConfigError as exc:
        raise ArchiveError(str(exc)) from None
    except RecursionError:  # JSON nested deeper than the parser goes
        raise ArchiveError(f"{archive}!{MANIFEST_MEMBER}: cannot read the manifest: nested "
                           "too deeply") from None


def _is_manifest_name(name: str) -> bool:
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return parts[-2:] == [MAR_INF, MANIFEST_NAME] and len(parts) in (2, 3)


def read_archive_manifest(path: str) -> dict:
    """The manifest inside a `.mar` or `.tar.gz`, read without extracting anything else.

    Raises ArchiveError when the file is no archive or holds no readable manifest (whatever
    the zip or tar reader raises on a damaged one)."""
    if model_files.is_zip_archive(path):
        try:
            return _zip_manifest(path)
        except ArchiveError:  # a ValueError too: ours, already saying what is wrong
            raise
        except (OSError, *model_files.ARCHIVE_READER_ERRORS) as exc:
            raise ArchiveError(f"{path}: cannot read {MANIFEST_MEMBER}: "
                               f"{type(exc).__name__}: {exc}") from None
    try:
        return _tar_manifest(path)
    except ArchiveError:
        raise
    except (OSError, *model_files.ARCHIVE_READER_ERRORS) as exc:
        raise ArchiveError(f"{path} is neither a .mar (zip) nor a .tar.gz model archive: "
                           f"{exc}") from None


def _zip_manifest(path: str) -> dict:
    with zipfile.ZipFile(path) as zf:
        infos = sorted((i for i in zf.infolist() if _is_manifest_name(i.filename)),
                       key=lambda i: i.filename.count("/"))
        if not infos:
            raise ArchiveError(f"{path}: {MANIFEST_MEMBER} is missing")
        if infos[0].file_size > MAX_MANIFEST_BYTES:  # zipfile reads no more than declared
            raise ArchiveError(f"{path}: {MANIFEST_MEMBER} is too large")
        return _manifest_from_bytes(zf.read(infos[0]), path)


def _tar_manifest(path: str) -> dict:
    """The first manifest of a tar, inflating what lies before it within the limits."""
    # our own handle on the file: its position is the compressed bytes read so far
    with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
        declared_total = 0
        for member in tar:
            # reaching this header inflated (and skipped) the data of the members before it
            if (declared_total > RATIO_FLOOR_BYTES
                    and declared_total > MAX_COMPRESSION_RATIO * raw.tell()):
                raise ArchiveError(f"{os.path.basename(path)}: compressed more than "
                                   f"{MAX_COMPRESSION_RATIO}:1 ({declared_total} bytes out of "
                                   f"{raw.tell()} compressed bytes) before member "
                                   f"{member.name!r}; refusing a likely zip bomb")
            if member.isreg() and _is_manifest_name(member.name):
                if member.size > MAX_MANIFEST_BYTES:
                    raise ArchiveError(f"{path}: {MANIFEST_MEMBER} is too large")
                handle = tar.extractfile(member)
                if handle is not None:
                    return _manifest_from_bytes(handle.read(), path)
            if member.isreg():
                declared_total += member.size
                if declared_total > MAX_READ_BYTES:  # before inflating it to skip it
                    raise ArchiveError(f"{os.path.basename(path)}: more than {MAX_READ_BYTES} "
                                       f"bytes before {MANIFEST_MEMBER} (at member "
                                       f"{member.name!r}); refusing")
    raise ArchiveError(f"{path}: {MANIFEST_MEMBER} is missing")


if __name__ == "__main__":
    sys.exit(main())
