"""Bounded load over both clients at once, for tests that break a server while it serves.

`Load` drives a model of a running server (anything with `http_port` and `client_address`,
such as tests.support.servers.Server) from several lanes at once: HTTP lanes (a fresh
connection per request, tests.support.http_request) and ZeroMQ lanes (one sync `Client` per
lane, a per-request `timeout_ms`). Each lane is a daemon thread that sends its next request
when the last one is answered, and records every call as an `Outcome`: which client, when it
started and ended (monotonic seconds), and the typed error it got, if any. Nothing in here
waits without a bound:

- every call is bounded by its client: `timeout_ms` plus the ZeroMQ client's grace, or the
  HTTP socket timeout (`timeout_ms`, the front end's own grace, and HTTP_EXTRA_S so that the
  front end's 504 for a request it gave up on is seen, not a socket timeout);
  `call_bound_s` adds slack to the longer of the two;
- a lane stops sending after `max_requests` calls or `max_duration_s`, or when `stop()` is
  called; `stop()` waits for each lane's future at most `call_bound_s`, and raises `LoadHung`
  naming the calls still in flight when one does not finish;
- `wait_until(predicate, timeout_s)` polls the outcomes so far, never sleeping a fixed time
  for a condition.

Error names are the typed error's class name (`WorkerLost`, `DeadlineExceeded`; over HTTP the
`type` of the JSON error body), or the Python exception a call raised when no answer came
(`ConnectionResetError`, `RemoteDisconnected`, `TimeoutError`...). `CONNECTION_ERRORS` and
`TIMEOUT_ERRORS` group the latter. An HTTP outcome also names the front-end process that
answered (`served_by`: the per-process prefix of its `x-request-id`), so a test can tell a
restarted front end from the ones it replaced.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from tests.support.http_request import http_request

HTTP = "http"
ZMQ = "zmq"

#: what the ZeroMQ client waits beyond a request's timeout before failing it itself
#: (zerobatch.api.client_helpers.GRACE_MS); the HTTP lanes' socket timeout adds the same
CLIENT_GRACE_S = 1.0
#: how much longer an HTTP lane's socket waits than the front end waits for the broker
HTTP_EXTRA_S = 1.0
#: slack on top of a call's own bound before it counts as hung (a loaded 2-core machine)
HANG_SLACK_S = 3.0
#: a lane's pause after an error, so that a refused or unreachable server is not spun on
ERROR_PAUSE_S = 0.05
#: how often wait_until looks at the outcomes again
POLL_S = 0.02

#: errors that mean the connection itself failed: no answer came (a front end died)
CONNECTION_ERRORS = frozenset({
    "ConnectionResetError", "RemoteDisconnected", "BrokenPipeError", "ConnectionRefusedError",
    "ConnectionAbortedError", "IncompleteRead", "BadStatusLine",
})
#: errors that mean no answer came in time: the HTTP socket timed out
TIMEOUT_ERRORS = frozenset({"TimeoutError", "timeout"})

_REQUEST_ID_HEADER = "x-request-id"
_FRONT_END_PREFIX_CHARS = 16  # api/http_app.py: a random per-process prefix, then a counter


class LoadHung(AssertionError):
    """A lane did not finish within its bound: some call never returned."""


@dataclass(frozen=True)
class Outcome:
    """One call: which client made it, when (monotonic s), and what came back."""

    via: str            # HTTP or ZMQ
    lane: int
    started_s: float
    ended_s: float
    #: None when answered with a success; else the typed error's name or the exception's
    error: str | None
    #: the HTTP status; over ZeroMQ 200 or the typed error's http_status; 0 if no answer came
    status: int
    #: HTTP only: the per-process prefix of the x-request-id of the front end that answered
    served_by: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_s(self) -> float:
        return self.ended_s - self.started_s


@dataclass
class _InFlight:
    via: str
    lane: int
    started_s: float


class Load:
    """Closed-loop lanes over HTTP and ZeroMQ against one model; see the module docstring.

    body: what each request carries (a dict or list goes as JSON, bytes as they are), or a
    callable (via, lane, sequence number) -> body.
    """

    def __init__(self, server: Any, model: str, body: Any, *, http_lanes: int = 2,
                 zmq_lanes: int = 2, timeout_ms: int = 5000, max_requests: int = 2000,
                 max_duration_s: float = 60.0,
                 headers: dict[str, str] | None = None) -> None:
        if timeout_ms <= 0:
            raise ValueError("a bounded load needs a positive timeout_ms")
        self.http_port = server.http_port
        self.client_address = server.client_address
        self.model = model
        self._body = body
        self.http_lanes = http_lanes
        self.zmq_lanes = zmq_lanes
        self.timeout_ms = timeout_ms
        self.max_requests = max_requests
        self.max_duration_s = max_duration_s
        self._headers = dict(headers or {})
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._in_flight: dict[int, _InFlight] = {}
        self._sent = 0
        self._stop = threading.Event()
        self._futures: list[Future] = []
        self.started_s: float | None = None

    # ------------------------------------------------------------------ bounds

    @property
    def call_bound_s(self) -> float:
        """The longest one call may take before it counts as hung."""
        return self.http_timeout_s + HANG_SLACK_S

    @property
    def http_timeout_s(self) -> float:
        """The HTTP lanes' socket timeout: the front end's wait and HTTP_EXTRA_S."""
        return self.timeout_ms / 1000 + CLIENT_GRACE_S + HTTP_EXTRA_S

    # ------------------------------------------------------------------ running

    def start(self) -> Load:
        if self._futures:
            raise RuntimeError("this load was already started")
        self.started_s = time.monotonic()
        lanes = [(HTTP, lane) for lane in range(self.http_lanes)]
        lanes += [(ZMQ, self.http_lanes + lane) for lane in range(self.zmq_lanes)]
        for via, lane in lanes:
            future: Future = Future()
            self._futures.append(future)
            threading.Thread(target=self._run_lane, args=(via, lane, future),
                             name=f"load-{via}-{lane}", daemon=True).start()
        return self

    def stop(self) -> list[Outcome]:
        """Stop sending, wait (bounded) for every lane's last call, return all outcomes.

        Raises LoadHung if a lane is still in a call after call_bound_s, and re-raises a
        lane's own failure (a bug in the lane, not an error of a call)."""
        self._stop.set()
        _done, not_done = wait(self._futures, timeout=self.call_bound_s)
        if not_done:
            now_s = time.monotonic()
            stuck = ", ".join(f"{call.via} lane {call.lane} for {now_s - call.started_s:.1f} s"
                              for call in self.in_flight())
            raise LoadHung(f"{len(not_done)} lane(s) did not finish within "
                           f"{self.call_bound_s:.1f} s; in flight: {stuck or 'none'}")
        for future in self._futures:
            future.result(timeout=0)
        return self.outcomes

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, exc_type: object, *_exc_info: object) -> None:
        if self._stop.is_set():
            return
        if exc_type is None:
            self.stop()
            return
        try:  # the test already failed: stop the lanes, keep its error in front
            self.stop()
        except LoadHung:
            pass

    # ------------------------------------------------------------------ what happened

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def in_flight(self) -> list[_InFlight]:
        """The calls started and not yet returned, oldest first."""
        with self._lock:
            return sorted(self._in_flight.values(), key=lambda call: call.started_s)

    def wait_until(self, predicate: Callable[[list[Outcome]], Any], timeout_s: float,
                   what: str) -> Any:
        """Poll predicate(outcomes so far) until it is truthy; its value, or AssertionError
        after timeout_s (with a summary of the outcomes)."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            value = predicate(self.outcomes)
            if value:
                return value
            now_s = time.monotonic()
            if now_s >= deadline_s:
                held = ", ".join(f"{call.via} lane {call.lane} for {now_s - call.started_s:.1f} s"
                                 for call in self.in_flight())
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; "
                                     f"outcomes so far: {summary(self.outcomes)}; "
                                     f"in flight: {held or 'none'}")
            time.sleep(POLL_S)

    def wait_for_successes(self, count: int, *, after_s: float = 0.0, via: str | None = None,
                           timeout_s: float = 20.0) -> list[Outcome]:
        """Wait until `count` calls started at or after `after_s` (over `via`, or per client
        when None: `count` over each client that has lanes) succeeded."""
        kinds = [via] if via else [kind for kind, lanes in
                                   ((HTTP, self.http_lanes), (ZMQ, self.zmq_lanes)) if lanes]

        def enough(outcomes: list[Outcome]) -> list[Outcome] | None:
            found = [o for o in outcomes if o.ok and o.started_s >= after_s]
            if all(sum(1 for o in found if o.via == kind) >= count for kind in kinds):
                return found
            return None

        return self.wait_until(enough, timeout_s,
                               f"{count} successes over {'+'.join(kinds)}")

    # ------------------------------------------------------------------ lanes

    def _run_lane(self, via: str, lane: int, future: Future) -> None:
        try:
            if via == HTTP:
                self._loop(via, lane, self._http_call)
            else:
                from zerobatch.api.client import Client

                with Client(self.client_address) as client:
                    self._loop(via, lane, lambda body: self._zmq_call(client, body))
            future.set_result(None)
        except BaseException as exc:  # the lane itself broke: stop() re-raises it
            future.set_exception(exc)

    def _loop(self, via: str, lane: int, call: Callable[[Any], tuple]) -> None:
        end_s = time.monotonic() + self.max_duration_s
        sequence = 0
        while not self._stop.is_set() and time.monotonic() < end_s:
            with self._lock:
                if self._sent >= self.max_requests:
                    return
                self._sent += 1
            body = self._body(via, lane, sequence) if callable(self._body) else self._body
            sequence += 1
            started_s = time.monotonic()
            with self._lock:
                self._in_flight[lane] = _InFlight(via, lane, started_s)
            error, status, front_end, detail = call(body)
            outcome = Outcome(via, lane, started_s, time.monotonic(), error, status,
                              front_end, detail)
            with self._lock:
                del self._in_flight[lane]
                self._outcomes.append(outcome)
            if error is not None:
                self._stop.wait(ERROR_PAUSE_S)

    def _http_call(self, body: Any) -> tuple[str | None, int, str, str]:
        raw, content_type = _encode(body)
        headers = {"Content-Type": content_type, "x-zerobatch-timeout-ms": str(self.timeout_ms),
                   **self._headers}
        try:
            status, response_headers, answer = http_request(
                self.http_port, "POST", f"/predictions/{self.model}", raw, headers,
                timeout_s=self.http_timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__, 0, "", str(exc)
        front_end = served_by(response_headers)
        if 200 <= status < 300:
            return None, status, front_end, ""
        return _http_error_type(status, answer), status, front_end, answer[:200].decode(
            errors="replace")

    def _zmq_call(self, client: Any, body: Any) -> tuple[str | None, int, str, str]:
        from zerobatch.errors import ServingError

        try:
            client.predict(self.model, body, timeout_ms=self.timeout_ms)
        except ServingError as exc:
            return type(exc).__name__, exc.http_status, "", exc.message[:200]
        return None, 200, "", ""


# ---------------------------------------------------------------------- helpers

def summary(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """How many calls ended how, per client: {"http ok": 40, "zmq WorkerLost": 2, ...}."""
    counts = Counter(f"{o.via} {o.error or 'ok'}" for o in outcomes)
    return dict(sorted(counts.items()))


def errors(outcomes: Iterable[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


def over_bound(outcomes: Iterable[Outcome], bound_s: float) -> list[Outcome]:
    """The calls that took longer than bound_s."""
    return [o for o in outcomes if o.latency_s > bound_s]


def served_by(headers: dict[str, str]) -> str:
    """The front-end process that answered, from an HTTP response's headers: the random
    per-process prefix of its x-request-id (api/http_app.py), or "" without one."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return lowered.get(_REQUEST_ID_HEADER, "")[:_FRONT_END_PREFIX_CHARS]


def _encode(body: Any) -> tuple[bytes, str]:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body).encode(), "application/json"


def _http_error_type(status: int, answer: bytes) -> str:
    """The `type` of a front end's JSON error body, or HTTP<status> when there is none."""
    try:
        decoded = json.loads(answer)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("type"), str):
        return decoded["type"]
    return f"HTTP{status}"
