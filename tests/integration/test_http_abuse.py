"""Abusive HTTP clients against a real server (CLI, broker, one front end, the echo and slow
models) with small limits: a 1 s read timeout, a body min rate of 100 bytes/s, 4096 bytes of
request head, 8 connections. Each abuse gets its answer in the front end's JSON shape (408,
431, 400, 503) and a closed connection, within a bound, and a normal request is served right
after it. Raw sockets throughout (tests/support/raw_http.py): http.client will not send any of
this. One server for the module: each test cleans up its own connections."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.support.raw_http import (
    Trickle,
    connect,
    parse_responses,
    read_response,
    read_until_closed,
    send_in_background,
)
from tests.support.servers import Server, finish, start_server

READ_TIMEOUT_S = 1.0
MIN_RATE_BYTES_S = 100
MAX_HEADER_BYTES = 4096
MAX_CONNECTIONS = 8
#: how long an abuse may take to be answered: the read timeout, the time a trickle earned,
#: the sweep's second, and slack for a loaded machine ("does not hang", not a timing test)
ANSWER_LIMIT_S = 5.0

CAP_PHRASE = f"over the cap of {MAX_CONNECTIONS} open connections"


@pytest.fixture(scope="module")
def server():
    started = start_server(
        {"echo": "echo", "slow": "slow"}, "--frontends", "1",
        "--request-read-timeout", f"{READ_TIMEOUT_S:g}",
        "--request-min-rate", str(MIN_RATE_BYTES_S),
        "--max-header-size", str(MAX_HEADER_BYTES),
        "--max-connections", str(MAX_CONNECTIONS))
    yield started
    finish(started)


def post(path: str, body: bytes, *extra_headers: bytes, length: int | None = None) -> bytes:
    """A POST of body (its Content-Length `length`, by default the body's own)."""
    head = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1",
            b"Content-Length: %d" % (len(body) if length is None else length), *extra_headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def echo_with_head_of(size: int) -> bytes:
    """A POST of b"hi" to echo whose request line and headers, blank line included, are
    exactly size bytes."""
    bare = post("/predictions/echo", b"hi", b"Content-Type: text/plain", b"X-Pad: ")
    head_bytes = len(bare) - len(b"hi")
    return bare.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (size - head_bytes))


PING = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def assert_refused(raw: bytes, status: int, type_name: str) -> dict:
    """raw is exactly one response: `status` in the front end's JSON shape, closing."""
    (response,) = parse_responses(raw)
    assert response.status == status, raw[:300]
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert (payload["code"], payload["type"]) == (status, type_name)
    return payload


def assert_serving(server: Server) -> None:
    """A normal request right after an abuse is answered (nothing else broke)."""
    status, _headers, body = server.predict("echo", b"still here", "application/octet-stream",
                                            timeout_ms=5000)
    assert (status, body) == (200, b"still here")


def frontend_log(server: Server) -> str:
    with open(os.path.join(server.run_dir, "zerobatch.log"), errors="replace") as handle:
        return handle.read()


# ---------------------------------------------------------------- slow clients (finding 5)

def test_a_body_trickled_below_the_min_rate_is_answered_408_and_closed(server):
    """Ten bytes a second, each piece within the read timeout of the one before: the body
    has 1 s plus 1/100 s per byte in all, so it is cut off after about 1.1 s."""
    with connect(server.http_port) as sock:
        sock.sendall(post("/predictions/echo", b"", length=1000))
        began = time.monotonic()
        with Trickle(sock, b"x" * 1000, piece_bytes=1, interval_s=0.1):
            raw = read_until_closed(sock, ANSWER_LIMIT_S)
        took_s = time.monotonic() - began
    payload = assert_refused(raw, 408, "RequestTimeout")
    assert payload["message"] == f"waited {READ_TIMEOUT_S:g} s for the rest of the request"
    assert READ_TIMEOUT_S <= took_s < ANSWER_LIMIT_S
    assert_serving(server)


def test_a_chunked_body_trickled_below_the_min_rate_is_answered_408(server):
    head = (b"POST /predictions/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    with connect(server.http_port) as sock:
        sock.sendall(head)
        with Trickle(sock, b"1\r\nx\r\n" * 100, piece_bytes=6, interval_s=0.1):
            raw = read_until_closed(sock, ANSWER_LIMIT_S)
    assert_refused(raw, 408, "RequestTimeout")
    assert_serving(server)


def test_an_upload_at_a_decent_rate_passes_however_long_it_takes(server):
    """500 bytes a second for 2 s (twice the read timeout): over the min rate, so it goes
    through; and a 2 MB body sent at once goes through too."""
    body = bytes(range(256)) * 4  # 1024 bytes
    with connect(server.http_port) as sock:
        sock.sendall(post("/predictions/echo", b"", b"Content-Type: application/octet-stream",
                          length=len(body)))
        began = time.monotonic()
        with Trickle(sock, body, piece_bytes=25, interval_s=0.05):
            response = read_response(sock, ANSWER_LIMIT_S)
        assert time.monotonic() - began > READ_TIMEOUT_S
    assert (response.status, response.body) == (200, body)

    big = os.urandom(2_000_000)
    status, _headers, echoed = server.predict("echo", big, "application/octet-stream")
    assert status == 200 and echoed == big


def test_trickled_headers_are_answered_408(server):
    head = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    with connect(server.http_port) as sock:
        with Trickle(sock, head, piece_bytes=2, interval_s=0.1):
            raw = read_until_closed(sock, ANSWER_LIMIT_S)
    assert_refused(raw, 408, "RequestTimeout")
    assert_serving(server)


def test_a_request_waiting_behind_a_slow_one_is_not_timed_out(server):
    """Pipelined behind a request its model answers in 2 s (twice the read timeout), a second
    request's body is not read until the first is answered: the server is not reading, so
    its clock does not run against the client."""
    slow = post("/predictions/slow", b'{"sleep_ms": 2000}', b"Content-Type: application/json")
    second_head = post("/predictions/echo", b"", b"Content-Type: application/octet-stream",
                       length=5)
    with connect(server.http_port) as sock:
        sock.sendall(slow + second_head)
        first = read_response(sock, ANSWER_LIMIT_S)
        assert first.status == 200 and json.loads(first.body)["batch_size"] == 1
        sock.sendall(b"later")
        second = read_response(sock, ANSWER_LIMIT_S)
    assert (second.status, second.body) == (200, b"later")


# ---------------------------------------------------------------- large heads (finding 6)

def test_a_head_over_max_header_size_is_answered_431_and_closed(server):
    """One byte over the limit is refused; exactly the limit, with its body in the same
    send, is served."""
    with connect(server.http_port) as sock:
        sock.sendall(echo_with_head_of(MAX_HEADER_BYTES + 1))
        raw = read_until_closed(sock)
    payload = assert_refused(raw, 431, "HeaderTooLarge")
    assert payload["message"] == (f"request line and headers over the limit of "
                                  f"{MAX_HEADER_BYTES} bytes")
    with connect(server.http_port) as sock:
        sock.sendall(echo_with_head_of(MAX_HEADER_BYTES))
        response = read_response(sock)
    assert (response.status, response.body) == (200, b"hi")
    assert_serving(server)


def test_a_head_of_megabytes_is_refused_after_its_first_4096_bytes(server):
    """Sent as fast as the socket takes it: the server reads no more than the limit of it,
    answers 431 and closes (the rest of the upload is reset)."""
    huge = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: " + b"h" * 32_000_000
    with connect(server.http_port) as sock:
        began = time.monotonic()
        sender = send_in_background(sock, huge)
        raw = read_until_closed(sock)
        took_s = time.monotonic() - began
        sender.join(ANSWER_LIMIT_S)
    assert_refused(raw, 431, "HeaderTooLarge")
    assert took_s < ANSWER_LIMIT_S
    assert_serving(server)


def test_trailer_fields_over_max_header_size_are_answered_431(server):
    chunked = (b"POST /predictions/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
               b"X-Trailer: " + b"t" * MAX_HEADER_BYTES + b"\r\n\r\n")
    with connect(server.http_port) as sock:
        sock.sendall(chunked)
        raw = read_until_closed(sock)
    assert_refused(raw, 431, "HeaderTooLarge")
    assert_serving(server)


# ---------------------------------------------------------------- connection cap

def test_a_connection_over_the_cap_is_answered_503_and_logged_once(server):
    """With 8 connections open, a ninth is answered 503 at once and closed; a burst of them
    logs one WARNING line (the others are counted into a later line, at most one per 10 s);
    once the 8 close, the server serves again."""
    holders = [connect(server.http_port) for _ in range(MAX_CONNECTIONS)]
    try:
        for holder in holders:  # each has begun a request, so each is surely accepted
            holder.sendall(b"GET /ping HTTP/1.1\r\n")
        with connect(server.http_port) as ninth:
            raw = read_until_closed(ninth, ANSWER_LIMIT_S)
        assert_refused(raw, 503, "TooManyConnections")
        for _ in range(5):
            with connect(server.http_port) as extra:
                sock_raw = read_until_closed(extra, ANSWER_LIMIT_S)
            assert_refused(sock_raw, 503, "TooManyConnections")
    finally:
        for holder in holders:
            holder.close()
    lines = server.wait_for(lambda: [line for line in frontend_log(server).splitlines()
                                     if CAP_PHRASE in line], what="the log line")
    assert len(lines) == 1, lines
    assert " WARNING " in lines[0] and "refused 1 connection " in lines[0], lines[0]
    server.wait_for(lambda: server.http("GET", "/ping", timeout=5)[0] == 200,
                    what="serving again")
    assert_serving(server)


# ---------------------------------------------------------------- malformed requests

MALFORMED = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "bad method": b"G(ET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET / HTTP/7.1\r\nHost: x\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: x\n\n",
    "space in the path": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "control byte in a header": b"GET /ping HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "space before the colon": b"GET /ping HTTP/1.1\r\nHost : x\r\n\r\n",
    "Content-Length not a number": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: abc\r\n\r\n",
    "negative Content-Length": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: -1\r\n\r\n",
    "two different Content-Lengths": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "Content-Length overflow": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: 99999999999999999999999\r\n\r\n",
    "Content-Length and chunked": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"3\r\nabc\r\n0\r\n\r\n",
    "chunk size not hex": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    "chunk size overflow": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n",
    "chunk without its CRLF": b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_answered_400_in_json_and_closed(server, request_bytes):
    with connect(server.http_port) as sock:
        sock.sendall(request_bytes)
        raw = read_until_closed(sock)
    payload = assert_refused(raw, 400, "BadRequest")
    assert payload["message"].startswith("invalid HTTP request")
    assert_serving(server)


# ---------------------------------------------------------------- pipelining

def test_pipelined_good_requests_are_answered_before_a_bad_one_is_refused(server):
    good = PING + post("/predictions/echo", b"hello", b"Content-Type: text/plain")
    with connect(server.http_port) as sock:
        sock.sendall(good + b"GARBAGE\r\n\r\n" + PING)
        raw = read_until_closed(sock)
    ping, echoed, refused = parse_responses(raw)
    assert (ping.status, json.loads(ping.body)) == (200, {"status": "Healthy"})
    assert (echoed.status, echoed.body) == (200, b"hello")
    assert refused.status == 400 and refused.json()["type"] == "BadRequest"
    assert refused.headers["connection"] == "close"
    assert_serving(server)


def test_a_pipelined_head_over_the_limit_is_refused_after_the_answers_before_it(server):
    """The oversized head comes in the same read as the requests before it, in one piece or
    split over two sends (its first part then escapes the per-read count): refused all the
    same, after the answers to the good ones."""
    good = PING + post("/predictions/echo", b"hello", b"Content-Type: text/plain")
    oversized = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000
    for parts in ([good + oversized + b"a" * 3000 + b"\r\n\r\n"],
                  [good + oversized, b"a" * 3000 + b"\r\n\r\n"]):
        with connect(server.http_port) as sock:
            for part in parts:
                sock.sendall(part)
                time.sleep(0.2)  # so that the parts arrive as two reads, most likely
            raw = read_until_closed(sock)
        ping, echoed, refused = parse_responses(raw)
        assert (ping.status, echoed.status, echoed.body) == (200, 200, b"hello")
        assert refused.status == 431 and refused.json()["type"] == "HeaderTooLarge"
    assert_serving(server)


def test_pipelined_requests_each_within_the_limit_all_pass(server):
    """Fifty pipelined requests of 1000 bytes of head each, 50 kB in one send: together far
    over the head limit, each within it."""
    one = post("/predictions/echo", b"ok", b"Content-Type: text/plain",
               b"X-Pad: " + b"p" * 900)
    with connect(server.http_port) as sock:
        sock.sendall(one * 49 + one.replace(b"Host:", b"Connection: close\r\nHost:"))
        raw = read_until_closed(sock, ANSWER_LIMIT_S)
    responses = parse_responses(raw)
    assert [(r.status, r.body) for r in responses] == [(200, b"ok")] * 50
