"""Token authorization for the HTTP apps, as TorchServe 0.11.1+ and 0.12 do it
(util/TokenAuthorization.java, http/TokenAuthorizationHandler.java): three keys in the run
directory's key file (zerobatch/token_keys.py, re-exported here), sent as
`Authorization: Bearer <key>` (`^Bearer\\s+(\\S+)$`).

    inference port     /predictions/...     the inference key
    management port    everything           the management key
                       /token?type=KIND     the API key; replaces the KIND key ("management"
                                            or "inference") and its expiration
    both ports         OPTIONS /, /api-description: no key (TorchServe answers them before
                       its token check too)

The management and inference keys expire token_expiration_min minutes after they were made;
the API key does not. A refused call is answered 400 with TorchServe's
`{"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed. ..."}`
(Gson pretty JSON and a newline), and a refused /token call says "Token Authentication
failed. ..." instead. A /token call answers as TorchServe does: 200 with the body "\\n"
(NettyUtils.sendJsonResponse of the "" that updateKeyFile returns) when it replaced the key;
when `type` is missing or neither "management" nor "inference", TorchServe's
TokenType.valueOf throws inside the same try as the key check, so that is the same 400
"Token Authentication failed" (and so is a key file that cannot be rewritten, which is
logged).

Each process holds a TokenCheck over the key file: it keeps the parsed keys and stats the
file at most once per RELOAD_INTERVAL_S, re-reading it only when (st_ino, st_mtime_ns,
st_size) changed, so a rotation made by the management process reaches every front end within
that bound and a request pays for no system call. A key file that cannot be read or parsed
fails every check (logged once).

Deliberate differences from TorchServe:
- keys are 16 random bytes (22 characters) rather than 6, compared with hmac.compare_digest;
- GET /ping and GET /ready on the inference port need no key: Kubernetes probes cannot carry
  a key that rotates (TorchServe 0.12 asks for the inference key on /ping); neither do paths
  the inference app does not serve (404) nor other methods of /predictions (405);
- a /token call is one whose path is /token (TorchServe takes any request whose text contains
  "/token", headers included);
- the key file is replaced atomically (token_keys), so no reader sees half of one.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from zerobatch.api.management_helpers import JSON, ApiError, error_body, param
from zerobatch.errors import ConfigError
from zerobatch.token_keys import (
    ROTATABLE,
    Keys,
    create_key_file,
    read_keys,
    remove_key_file,
    rotate,
)

if TYPE_CHECKING:
    import falcon.asgi

__all__ = ["AUTHENTICATION_FAILED", "AUTHORIZATION_FAILED", "INVALID_KEY", "INVALID_KEY_BODY",
           "RELOAD_INTERVAL_S", "Keys", "ManagementAuth", "TokenCheck", "TokenResource",
           "bearer_token", "create_key_file", "read_keys", "refuse_without_inference_key",
           "remove_key_file", "rotate"]

log = logging.getLogger(__name__)

#: the longest a process goes on with keys the file no longer holds
RELOAD_INTERVAL_S = 0.5
INVALID_KEY = "InvalidKeyException"
AUTHORIZATION_FAILED = ("Token Authorization failed. Token either incorrect, expired, or not "
                        "provided correctly")
AUTHENTICATION_FAILED = ("Token Authentication failed. Token either incorrect, expired, or not "
                         "provided correctly")
#: what a request refused for its key is answered (400)
INVALID_KEY_BODY = error_body(400, INVALID_KEY, AUTHORIZATION_FAILED)
#: what a successful /token call is answered: sendJsonResponse("") writes "" and a newline
TOKEN_ROTATED_BODY = b"\n"
TOKEN_PATH = "/token"
#: paths TorchServe's ApiDescriptionRequestHandler answers before its token check
DESCRIPTION_PATHS = frozenset({"/", "/api-description"})
#: Java's Pattern `^Bearer\s+(\S+)$` with matches(): \s and \S are ASCII classes there
_BEARER = re.compile(r"Bearer\s+(\S+)", re.ASCII).fullmatch
_NEVER = float("-inf")


def refuse_without_inference_key(check: Callable[[str, str | None], bool] | None,
                                 req: falcon.asgi.Request, resp: falcon.asgi.Response) -> bool:
    """True, with TorchServe's 400 InvalidKeyException answered in resp, when `check` (a
    TokenCheck's, None when token authorization is off) finds no inference key in req."""
    if check is None or check("inference", req.headers.get("authorization")):
        return False
    resp.status = 400
    resp.content_type = JSON
    resp.data = INVALID_KEY_BODY
    return True


def bearer_token(authorization: str | None) -> str | None:
    """The key in an `Authorization: Bearer <key>` header value, or None."""
    if authorization is None:
        return None
    match = _BEARER(authorization)
    return None if match is None else match.group(1)


class TokenCheck:
    """Whether an Authorization header carries a valid key, against the key file at path.

    `now` is the wall clock the file's expiration times are read against; `monotonic` paces
    the file's re-reads (both injectable for tests)."""

    def __init__(self, path: str, now: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 reload_interval_s: float = RELOAD_INTERVAL_S) -> None:
        self.path = path
        self._now = now
        self._monotonic = monotonic
        self._reload_interval_s = reload_interval_s
        self._next_stat_s = _NEVER
        self._stamp: tuple[int, int, int] | None = None
        #: kind -> (key bytes, expiration in epoch seconds or None); empty: every check fails
        self._table: dict[str, tuple[bytes, float | None]] = {}
        self._problem: str | None = None

    def check(self, kind: str, authorization: str | None) -> bool:
        """True when authorization is `Bearer <the current key of kind>` and that key has not
        expired; kind is "inference", "management" or "api"."""
        if self._monotonic() >= self._next_stat_s:
            self._reload()
        entry = self._table.get(kind)
        if entry is None or authorization is None:
            return False
        match = _BEARER(authorization)
        if match is None:
            return False
        key, expires_s = entry
        return (hmac.compare_digest(match.group(1).encode(), key)
                and (expires_s is None or self._now() < expires_s))

    def refresh(self) -> None:
        """Look at the file again at the next check (after this process rotated a key)."""
        self._next_stat_s = _NEVER

    def _reload(self) -> None:
        self._next_stat_s = self._monotonic() + self._reload_interval_s
        try:
            info = os.stat(self.path)
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp == self._stamp:
                return
            keys = read_keys(self.path)
        except (OSError, ConfigError) as exc:
            self._stamp = None
            self._table = {}
            self._report(f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}")
            return
        self._stamp = stamp
        self._table = {
            "management": (keys.management.encode(), keys.management_expires_s),
            "inference": (keys.inference.encode(), keys.inference_expires_s),
            "api": (keys.api.encode(), None),
        }
        if self._problem is not None:
            log.info("token key file %s readable again", self.path)
            self._problem = None

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            log.error("token key file %s cannot be read (%s): every request that needs a "
                      "key is refused", self.path, problem)
            self._problem = problem


class ManagementAuth:
    """Falcon ASGI middleware of the management app: a request needs the management key,
    a /token call the API key; OPTIONS / and /api-description need none. A refusal is
    raised as TorchServe's 400 InvalidKeyException (the app's ServingError handler answers
    it), before routing, so unknown paths are refused alike."""

    def __init__(self, check: TokenCheck) -> None:
        self._check = check.check

    async def process_request(self, req: falcon.asgi.Request,
                              resp: falcon.asgi.Response) -> None:
        path = req.path
        if path in DESCRIPTION_PATHS:
            return
        if path == TOKEN_PATH:
            if not self._check("api", req.get_header("Authorization")):
                raise ApiError(400, INVALID_KEY, AUTHENTICATION_FAILED)
            return
        if not self._check("management", req.get_header("Authorization")):
            raise ApiError(400, INVALID_KEY, AUTHORIZATION_FAILED)


class TokenResource:
    """/token?type=management|inference, any method: replace that key in the key file with a
    new one valid for expiration_min minutes. It checks the API key itself as well, so it is
    never an open door even when mounted without ManagementAuth."""

    def __init__(self, check: TokenCheck, expiration_min: float,
                 now: Callable[[], float] = time.time) -> None:
        self._check = check
        self._expiration_min = expiration_min
        self._now = now
        for method in ("post", "put", "delete", "patch", "head", "options"):
            setattr(self, f"on_{method}", self.on_get)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        check = self._check
        if not check.check("api", req.get_header("Authorization")):
            raise ApiError(400, INVALID_KEY, AUTHENTICATION_FAILED)
        kind = param(req.params, "type")
        if kind not in ROTATABLE:  # TokenType.valueOf("WRONG TYPE" / "NO TYPE PROVIDED")
            raise ApiError(400, INVALID_KEY, AUTHENTICATION_FAILED)
        try:
            rotate(check.path, kind, self._expiration_min, now=self._now)
        except (OSError, ConfigError) as exc:
            log.error("failed to update key file %s (%s key): %s", check.path, kind, exc)
            raise ApiError(400, INVALID_KEY, AUTHENTICATION_FAILED) from None
        check.refresh()
        log.info("the %s key was replaced (a /token call)", kind)
        resp.status = 200
        resp.content_type = JSON
        resp.data = TOKEN_ROTATED_BODY
