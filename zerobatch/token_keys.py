"""The token authorization key file: TorchServe's key_file.json, made, rotated and removed.

    {
      "management": {"key": "...", "expiration time": "2024-02-16T21:12:24.801167Z"},
      "inference": {"key": "...", "expiration time": "..."},
      "API": {"key": "..."}
    }

written as TorchServe writes it (util/TokenAuthorization.java, 0.11.1 and later): Gson's
pretty printing (two-space indent, no final newline), the expiration times as Java's
Instant.toString (UTC, ISO-8601, the fraction in groups of three digits), mode 0600. The
broker makes it at start (create_key_file) in the private run directory and removes it when it
stops; the management app replaces the management or inference key and its expiration on a
/token call (rotate); every HTTP process reads it (api/token_auth.py TokenCheck), so a rotation
reaches all of them. The API key does not expire.

Deliberate differences from TorchServe: a key is 16 random bytes in URL-safe base64 without
padding (22 characters; TorchServe's are 6 bytes, 8 characters), and the file is replaced
atomically (a temporary file in the same directory, created O_EXCL|O_NOFOLLOW with mode 0600,
then os.replace), so a reader never sees half a file; writers of one directory take turns
(flock on the directory).

This is contract code (the broker makes the file, the api processes read and rotate it): no
falcon, no api or broker imports.
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from zerobatch.errors import ConfigError

#: the kinds of key a /token call may replace (TorchServe's TokenType MANAGEMENT, INFERENCE)
ROTATABLE = ("management", "inference")
#: random bytes per key (TorchServe: 6)
KEY_BYTES = 16
#: the largest key file read; the broker writes about 300 bytes
MAX_KEY_FILE_BYTES = 64 * 1024
_EXPIRATION = "expiration time"
_INSTANT = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z\Z")
_KEY = re.compile(r"[\x21-\x7e]+\Z")  # what `Bearer\s+(\S+)` can carry: printable ASCII


@dataclass(frozen=True)
class Keys:
    """The three keys of a key file; expirations in seconds since the epoch."""

    management: str
    management_expires_s: float
    inference: str
    inference_expires_s: float
    api: str

    def key(self, kind: str) -> str:
        """The key of kind "management", "inference" or "api"."""
        if kind not in ("management", "inference", "api"):
            raise ValueError(f"no key of kind {kind!r}")
        return getattr(self, kind)

    def expires_s(self, kind: str) -> float | None:
        """When the key of kind expires (None for the API key, which does not)."""
        if kind == "api":
            return None
        if kind not in ROTATABLE:
            raise ValueError(f"no key of kind {kind!r}")
        return getattr(self, f"{kind}_expires_s")

    def to_json(self) -> bytes:
        """The file's bytes, as Gson's pretty printing writes them (no final newline)."""
        return json.dumps({
            "management": {"key": self.management,
                           _EXPIRATION: format_instant(self.management_expires_s)},
            "inference": {"key": self.inference,
                          _EXPIRATION: format_instant(self.inference_expires_s)},
            "API": {"key": self.api},
        }, indent=2).encode()


def new_key() -> str:
    """A fresh key: KEY_BYTES random bytes, URL-safe base64 without padding."""
    return secrets.token_urlsafe(KEY_BYTES)


def format_instant(seconds: float) -> str:
    """seconds since the epoch as Java's Instant.toString: 2024-02-16T21:12:24.801167Z
    (microseconds here; the fraction is left out when 0, three digits when it is whole ms)."""
    micros = round(seconds * 1_000_000)
    whole, fraction = divmod(micros, 1_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    if fraction == 0:
        return text + "Z"
    if fraction % 1000 == 0:
        return f"{text}.{fraction // 1000:03d}Z"
    return f"{text}.{fraction:06d}Z"


def parse_instant(text: str) -> float:
    """The seconds since the epoch of an Instant.toString text; ValueError if it is not one."""
    match = _INSTANT.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an ISO-8601 UTC instant: {str(text)[:40]!r}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    nanos = int((match.group(7) or "").ljust(9, "0"))
    micros = calendar.timegm((year, month, day, hour, minute, second)) * 1_000_000
    return _microseconds(micros + (nanos + 500) // 1000)


def _microseconds(micros: int) -> float:
    """Seconds as a float that format_instant and parse_instant both map to `micros`."""
    return micros / 1_000_000


def parse_keys(data: bytes) -> Keys:
    """The Keys of a key file's bytes; ConfigError (one line) when they are not a key file."""
    try:
        document = json.loads(data)
        management, inference = document["management"], document["inference"]
        keys = Keys(management=management["key"],
                    management_expires_s=parse_instant(management[_EXPIRATION]),
                    inference=inference["key"],
                    inference_expires_s=parse_instant(inference[_EXPIRATION]),
                    api=document["API"]["key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a token key file: {type(exc).__name__}: {exc}") from None
    for key in (keys.management, keys.inference, keys.api):
        if not isinstance(key, str) or not _KEY.match(key):
            raise ConfigError("not a token key file: a key is not printable ASCII")
    return keys


def read_keys(path: str) -> Keys:
    """The keys in the file at path (not followed if it is a symbolic link). OSError when it
    cannot be read (FileNotFoundError: no server with token authorization made it),
    ConfigError when it is not a key file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"not a token key file: larger than {MAX_KEY_FILE_BYTES} bytes")
    return parse_keys(data)


def key_is_valid(path: str, kind: str, token: str, now_s: float | None = None) -> bool:
    """Whether token is the current, unexpired key of kind in the key file at path (read each
    time: for the broker's ZeroMQ control calls, which are few). An unreadable file: False."""
    try:
        keys = read_keys(path)
    except (OSError, ConfigError):
        return False
    expires_s = keys.expires_s(kind)
    now_s = time.time() if now_s is None else now_s
    return (hmac.compare_digest(token.encode(), keys.key(kind).encode())
            and (expires_s is None or now_s < expires_s))


def create_key_file(path: str, expiration_min: float,
                    now: Callable[[], float] = time.time) -> Keys:
    """Write a key file with three new keys at path (replacing any left by an earlier run),
    the management and inference keys valid for expiration_min minutes; ConfigError when it
    cannot be written."""
    expires_s = _microseconds(round((now() + expiration_min * 60) * 1_000_000))
    keys = Keys(management=new_key(), management_expires_s=expires_s,
                inference=new_key(), inference_expires_s=expires_s, api=new_key())
    try:
        with _writer_turn(path):
            _write_atomically(path, keys.to_json())
    except OSError as exc:
        raise ConfigError(f"cannot write the token key file {path}: "
                          f"{exc.strerror or exc}") from None
    return keys


def rotate(path: str, kind: str, expiration_min: float,
           now: Callable[[], float] = time.time) -> Keys:
    """Replace the key of kind ("management" or "inference") in the file at path with a new
    one valid for expiration_min minutes from now; the other keys stay. The new Keys.
    ValueError for another kind, OSError or ConfigError when the file cannot be read or
    written."""
    if kind not in ROTATABLE:
        raise ValueError(f"only the management and inference keys rotate, not {kind!r}")
    with _writer_turn(path):
        keys = read_keys(path)
        expires_s = _microseconds(round((now() + expiration_min * 60) * 1_000_000))
        if kind == "management":
            keys = Keys(new_key(), expires_s, keys.inference, keys.inference_expires_s,
                        keys.api)
        else:
            keys = Keys(keys.management, keys.management_expires_s, new_key(), expires_s,
                        keys.api)
        _write_atomically(path, keys.to_json())
    return keys


def remove_key_file(path: str) -> None:
    """Remove the key file (at stop); a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def _writer_turn(path: str) -> Iterator[None]:
    """An exclusive flock on the file's directory, so two writers never lose a rotation."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(path: str, data: bytes) -> None:
    """data at path, mode 0600, through a new file in the same directory and os.replace."""
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
