"""The values the client core works with, and the one socket both client pumps open: the
Reply type, body encoding, the cache of encoded route/meta frames, the broker's refusal
hints, reply decoding and the clients' constants.

Frames are built and parsed only through `zerobatch.protocol`; this module decides what a
Python value becomes on the wire (bytes pass through, str is UTF-8 text, dict/list is JSON)
and turns what comes back into a `Reply` or the typed error from `zerobatch.errors`. Nothing
here reads a clock: times come in as monotonic `now_ns`.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import zmq

from zerobatch import protocol
from zerobatch.errors import ConfigError, DeadlineUnreachable, ProtocolError, error_from_wire

DEFAULT_ADDRESS = "tcp://127.0.0.1:9500"
#: how long a client waits past a request's own timeout before giving up locally
GRACE_MS = 1000
#: how long a client waits when a request names no timeout (the model's default applies)
DEFAULT_WAIT_MS = 130_000
#: queued messages per direction before a send fails (broker gone or not reading)
HIGH_WATER_MARK = 100_000
#: encoded (route, meta) pairs kept per client; the cache is emptied when full
CACHE_SIZE = 1024

OCTET_STREAM = "application/octet-stream"
TEXT_PLAIN = "text/plain; charset=utf-8"
APPLICATION_JSON = "application/json"

_REPLY = protocol.REPLY
_ERROR = protocol.ERROR


def connect_dealer(context: zmq.Context, address: str, curve_server_key: str | None = None,
                   curve_secret_key: str | None = None) -> zmq.Socket:
    """The client's one DEALER to the broker: no linger on close, deep queues both ways; with
    CURVE when given the server's public key file and the client's secret key file (both
    made by `zerobatch keys`)."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    if curve_server_key or curve_secret_key:
        from zerobatch import curve  # only CURVE clients pay for it

        if not (curve_server_key and curve_secret_key):
            sock.close()
            raise ConfigError("CURVE needs both the server's public key file "
                              "(curve_server_key) and this client's secret key file "
                              "(curve_secret_key)")
        try:
            sock.curve_serverkey = curve.load_public(curve_server_key)
            sock.curve_publickey, sock.curve_secretkey = curve.load_secret(curve_secret_key)
        except ConfigError:
            sock.close()
            raise
    sock.connect(address)
    return sock


class Reply:
    """One answer to a request: HTTP-style status, content type, headers and the raw body."""

    __slots__ = ("status", "content_type", "headers", "body")

    def __init__(self, status: int, content_type: str | None, headers: dict[str, str] | None,
                 body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.headers = headers if headers is not None else {}
        self.body = body

    @property
    def text(self) -> str:
        """The body decoded with the charset of the content type (UTF-8 when none is named)."""
        charset = "utf-8"
        content_type = self.content_type
        if content_type and "charset=" in content_type:
            charset = content_type.split("charset=", 1)[1].split(";", 1)[0].strip().strip('"')
        return self.body.decode(charset or "utf-8")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return (f"Reply(status={self.status}, content_type={self.content_type!r}, "
                f"body={bytes(self.body[:64])!r}{'...' if len(self.body) > 64 else ''})")


def encode_body(body: Any, content_type: str | None) -> tuple[Any, str]:
    """(payload, content type) for a request body: bytes-like as is, str as UTF-8, dict/list
    as JSON; content_type, when given, overrides the default of the body's kind."""
    kind = type(body)
    if kind is bytes or kind is bytearray or kind is memoryview:
        return body, content_type or OCTET_STREAM
    if kind is str:
        return body.encode(), content_type or TEXT_PLAIN
    if isinstance(body, (dict, list, tuple)):
        return (json.dumps(body, separators=(",", ":")).encode(),
                content_type or APPLICATION_JSON)
    if isinstance(body, str):
        return body.encode(), content_type or TEXT_PLAIN
    try:
        memoryview(body)  # anything with the buffer protocol (numpy arrays...) goes as bytes
    except TypeError:
        raise TypeError(f"cannot send a body of type {kind.__name__}; pass bytes, str, "
                        "or a JSON-serializable dict or list") from None
    return body, content_type or OCTET_STREAM


class RefusalHints:
    """Routes the broker is refusing for a while, so that the client refuses them itself.

    When the broker refuses a request as `deadline_unreachable`, it says for how long it
    expects to refuse requests with that route (model, version, timeout): until its queue has
    drained by what the request would have been late. Until then this client raises
    DeadlineUnreachable for that route at once, without sending. Under overload most requests
    are refused, and a refusal from the broker costs the front end, the broker and their
    libzmq I/O threads about what an admitted request's trip costs: CPU the admitted requests
    need, on a machine that has none to spare. The hint only ever delays asking: the first
    request after it runs out goes to the broker, which decides again. Times are monotonic
    nanoseconds, passed in.
    """

    __slots__ = ("_until",)

    def __init__(self) -> None:
        #: route -> (monotonic ns until which it is refused, the broker's message)
        self._until: dict[bytes, tuple[int, str]] = {}

    def __bool__(self) -> bool:
        return bool(self._until)

    def refusal(self, route: bytes, now_ns: int) -> DeadlineUnreachable | None:
        """The DeadlineUnreachable to answer a request on route with while the broker's hint
        holds at now_ns; None once it ran out (or there was none)."""
        hint = self._until.get(route)
        if hint is None:
            return None
        until_ns, message = hint
        left_ns = until_ns - now_ns
        if left_ns > 0:
            return DeadlineUnreachable(message, retry_after_ms=-(-left_ns // 1_000_000))
        del self._until[route]
        return None

    def note(self, route: bytes, error_info: Any, now_ns: int) -> None:
        """Read an ERROR's error_info frame; keep its hint if it is a deadline_unreachable
        that carries one. Malformed frames are left to the reply decoding to report."""
        try:
            code, message, _status, retry_after_ms = protocol.parse_error_info(error_info)
        except ProtocolError:
            return
        if code != DeadlineUnreachable.code or not retry_after_ms:
            return
        if len(self._until) >= CACHE_SIZE:
            self._until.clear()
        self._until[route] = (now_ns + retry_after_ms * 1_000_000, message)


class HeaderCache:
    """Encoded (route, meta) frames per (model, version, timeout_ms, content_type).

    Requests that carry headers or a request id encode their meta each time; the route is
    still cached. Arguments are checked only on a miss, so a hit costs one dict lookup.
    """

    __slots__ = ("_pairs", "_routes", "_limit")

    def __init__(self, limit: int = CACHE_SIZE) -> None:
        self._pairs: dict[tuple, tuple[bytes, bytes]] = {}
        self._routes: dict[tuple, bytes] = {}
        self._limit = limit

    def pair(self, model: str, version: str | None, timeout_ms: int,
             content_type: str) -> tuple[bytes, bytes]:
        key = (model, version, timeout_ms, content_type)
        pair = self._pairs.get(key)
        if pair is None:
            if not isinstance(content_type, str):
                raise TypeError("content_type must be a string")
            pair = (self.route(model, version, timeout_ms),
                    protocol.encode_meta(content_type, None, None))
            if len(self._pairs) >= self._limit:
                self._pairs.clear()
            self._pairs[key] = pair
        return pair

    def route(self, model: str, version: str | None, timeout_ms: int) -> bytes:
        key = (model, version, timeout_ms)
        route = self._routes.get(key)
        if route is None:
            _check_route(model, version, timeout_ms)
            route = protocol.encode_route(model, version, timeout_ms)
            if len(self._routes) >= self._limit:
                self._routes.clear()
            self._routes[key] = route
        return route

    def frames(self, model: str, version: str | None, timeout_ms: int, content_type: str,
               headers: dict[str, str] | None, request_id: str | None) -> tuple[bytes, bytes]:
        """(route, meta) for one request."""
        if headers is None and request_id is None:
            return self.pair(model, version, timeout_ms, content_type)
        return (self.route(model, version, timeout_ms),
                protocol.encode_meta(content_type, headers, request_id))


def _check_route(model: Any, version: Any, timeout_ms: Any) -> None:
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a non-empty string, got {model!r}")
    if version is not None and not isinstance(version, str):
        raise TypeError(f"version must be a string or None, got {version!r}")
    if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < 0:
        raise ValueError(f"timeout_ms must be a non-negative integer, got {timeout_ms!r}")


def wait_ms(timeout_ms: int) -> int:
    """How long a client waits for a reply to a request that carries timeout_ms."""
    return timeout_ms + GRACE_MS if timeout_ms else DEFAULT_WAIT_MS


_reply_metas: dict[bytes, tuple[int, str | None, None]] = {}


def parse_reply_meta(meta: bytes) -> tuple[int, str | None, dict[str, str] | None]:
    """protocol.parse_reply_meta, remembering the metas without headers: a model answers
    nearly every request with the same few (status, content type) pairs, so their bytes repeat
    and a dict lookup replaces a msgpack decode per reply. A meta with headers is decoded
    each time (its dict is the caller's to keep)."""
    if type(meta) is not bytes:  # a frame or buffer: not a dict key
        return protocol.parse_reply_meta(meta)
    parsed = _reply_metas.get(meta)
    if parsed is None:
        parsed = protocol.parse_reply_meta(meta)
        if parsed[2] is None:
            if len(_reply_metas) >= CACHE_SIZE:
                _reply_metas.clear()
            _reply_metas[meta] = parsed
    return parsed


def decode_reply(command: bytes, meta: Any, body: Any, chunks: list | None = None) -> Reply:
    """Turn a REPLY into a Reply, or raise the typed error an ERROR carries.

    chunks: bodies of PARTIAL messages that came before the final REPLY, joined in front.
    """
    if command == _REPLY:
        status, content_type, headers = parse_reply_meta(meta)
        if chunks:
            body = b"".join([*chunks, body])
        return Reply(status, content_type, headers, body)
    if command == _ERROR:
        raise error_from_wire(*protocol.parse_error_info(meta))
    raise ProtocolError(f"unexpected reply command {command!r}")


def decode_control(command: bytes, meta: Any, body: Any) -> dict[str, Any]:
    """The msgpack map a control call answers with (an ERROR raises its typed error)."""
    reply = decode_reply(command, meta, body)
    if not reply.body:
        return {}
    try:
        result = msgpack.unpackb(reply.body, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable control reply: {exc}") from None
    if not isinstance(result, dict):
        raise ProtocolError("a control reply must be a msgpack map")
    return result

